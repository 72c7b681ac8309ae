"""`kubectl-egressgw`, the kubectl plugin: `kubectl egressgw status|explain|drain|validate ...`.

kubectl runs any executable named `kubectl-<name>` found on PATH for `kubectl <name> ...`, with the remaining
arguments and its environment (so `KUBECONFIG` reaches us unchanged). The program is installed beside `egressgw`
(pyproject.toml `[project.scripts]`); `kubectl plugin list` shows it once that directory is on PATH.

kubectl's conventions: `--kubeconfig`, `--context` and `-n/--namespace` are accepted before or after the
subcommand. `status` and `explain` are the `egressgw` subcommands of the same name (same options and output);
`explain` also takes the pod kubectl-style (`kubectl egressgw explain web-0 -n shop`, or `pod/web-0`) and defaults
the namespace to the kubeconfig context's, like kubectl. `validate` is offline (files only).

`drain` is honest about where it happens: a drain is an operation *on the member* (`egressgw gateway drain`
signals the local service through its state directory; there is no drain request in the API that a member would
act on). So `kubectl egressgw drain MEMBER` changes nothing: it looks the member up (cluster node or appliance,
its gateway pod) and prints what to run where, then exits 2 - a script that expected a drain must not carry on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kubernetes import config as kube_config

from appliance.cli.main import main as egressgw_main
from k8s_sync.kubeapi import ApiError, KubeApi, make_api_client
from k8s_sync.leases import DEFAULT_NAMESPACE, LEASES, MEMBER_PREFIX

PROG = "kubectl egressgw"
#: exit code of `drain`: nothing was drained here (the text says where to run it)
EXIT_NOT_HERE = 2
#: the gateway DaemonSet's pods (deploy/gateway/daemonset.yaml)
GATEWAY_POD_SELECTOR = "app.kubernetes.io/name=egressgw-gateway"
GATEWAY_CONFIG = "/etc/egressgw/gateway.yaml"

COMMANDS: dict[str, str] = {
    "status": "gateways, members, EIPs and policies (-o table|wide|json|yaml, -w to watch)",
    "explain": "which policy, gateway and EIP apply to a pod: explain POD [-n NS] [--dest IP]",
    "drain": "how to drain a gateway member (a drain runs on the member; this prints what to run where)",
    "validate": "check egressgw.io manifests offline: validate FILE...",
}


def build_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="egressgw, the egress gateway appliance for Kubernetes, from kubectl.",
        epilog=f"commands:\n{lines}\n\n`{PROG} COMMAND --help` shows a command's options. The kubeconfig is "
               "--kubeconfig, else $KUBECONFIG, else ~/.kube/config.")
    add_globals(parser)
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def add_globals(parser: argparse.ArgumentParser, *, namespace_help: str = "namespace (kubectl's -n)") -> None:
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: its current one)")
    parser.add_argument("-n", "--namespace", default=None, help=namespace_help)


def _kube_args(ns: argparse.Namespace) -> list[str]:
    out = []
    if ns.kubeconfig:
        out += ["--kubeconfig", ns.kubeconfig]
    if ns.context:
        out += ["--context", ns.context]
    return out


def _has_flag(args: Sequence[str], *flags: str) -> bool:
    return any(a in flags or any(a.startswith(f + "=") for f in flags if f.startswith("--")) for a in args)


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig context in use (kubectl's default for `-n`); `default` when it sets none."""
    try:
        contexts, current = kube_config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception:
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args_list:
        parser.print_help()
        return 0
    top = parser.parse_args(args_list)
    rest = list(top.args)
    kube = _kube_args(top)
    if top.command == "status":
        return egressgw_main(["status", *kube, *(["-n", top.namespace] if top.namespace else []), *rest])
    if top.command == "explain":
        return explain(top, kube, rest)
    if top.command == "validate":
        if kube or top.namespace or _has_flag(rest, "--kubeconfig", "--context", "-n", "--namespace"):
            print(f"{PROG} validate: reads files only; --kubeconfig, --context and -n do not apply", file=sys.stderr)
            return 2
        return egressgw_main(["validate", *rest])
    return drain(top, rest)


def explain(top: argparse.Namespace, kube: list[str], rest: list[str]) -> int:
    if rest and not rest[0].startswith("-"):
        pod = rest.pop(0)
        rest = ["--pod", pod.removeprefix("pod/").removeprefix("pods/"), *rest]
    if top.namespace:
        rest = ["--namespace", top.namespace, *rest]
    elif not _has_flag(rest, "-n", "--namespace") and not _has_flag(rest, "-h", "--help"):
        kubeconfig = top.kubeconfig or _flag_value(rest, "--kubeconfig")
        context = top.context or _flag_value(rest, "--context")
        rest = ["--namespace", context_namespace(kubeconfig, context), *rest]
    return egressgw_main(["explain", *kube, *rest])


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# ----- drain -----

def drain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} drain", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A drain withdraws a member's EIP announcements (the routers move them to the next member), "
                    "waits for the withdrawal to be acknowledged, keeps forwarding for the settle time, then stops "
                    "the member's service. It runs ON THE MEMBER (`egressgw gateway drain`), which signals the local "
                    "service; nothing in the API asks a member to drain. This command changes nothing: it finds the "
                    f"member and prints what to run where, and exits {EXIT_NOT_HERE}.")
    parser.add_argument("member", help="the member: a gateway node's name or an appliance's name")
    add_globals(parser, namespace_help=f"namespace of egressgw's pods and member Leases (default {DEFAULT_NAMESPACE})")
    return parser


def drain(top: argparse.Namespace, rest: list[str]) -> int:
    args = drain_parser().parse_args(rest)
    kubeconfig, context = args.kubeconfig or top.kubeconfig, args.context or top.context
    namespace = args.namespace or top.namespace or DEFAULT_NAMESPACE
    lines = [f"{PROG} drain: nothing was drained; a drain runs on the member itself."]
    try:
        lines += describe_member(KubeApi(make_api_client(kubeconfig, context=context)), args.member, namespace)
    except Exception as e:
        lines += [f"(cannot read the cluster to find member {args.member!r}: {e})", *_generic(args.member)]
    print("\n".join(lines))
    return EXIT_NOT_HERE


def _get(api: KubeApi, path: str) -> dict[str, object] | None:
    try:
        return api.get(path)
    except ApiError as e:
        if e.status == 404:
            return None
        raise


def describe_member(api: KubeApi, member: str, namespace: str) -> list[str]:
    """Where member `member`'s service runs and what to run there (a cluster node's gateway pod, or an appliance)."""
    lease = _get(api, LEASES.path(namespace, MEMBER_PREFIX + member))
    node = _get(api, f"/api/v1/nodes/{member}")
    if node is None and lease is None:
        return [f"No node and no member Lease {MEMBER_PREFIX}{member} in namespace {namespace}: {member!r} is not a "
                f"gateway member (`{PROG} status -o wide` lists them)."]
    if node is None:
        return [f"{member} is an appliance outside the cluster (member Lease {namespace}/{MEMBER_PREFIX}{member}). "
                "On it, run:", *_appliance_commands()]
    pods = api.get(f"/api/v1/namespaces/{namespace}/pods",
                   {"labelSelector": GATEWAY_POD_SELECTOR, "fieldSelector": f"spec.nodeName={member}"})
    names = [str((p.get("metadata") or {}).get("name")) for p in pods.get("items") or ()]
    if not names:
        return [f"{member} is a cluster node, but no gateway pod ({GATEWAY_POD_SELECTOR}) runs on it in namespace "
                f"{namespace}; if its service runs outside Kubernetes, run on the node:", *_appliance_commands()]
    pod = names[0]
    return [
        f"{member} is a cluster node; its service runs in pod {namespace}/{pod}.",
        "Drain it and let it come back (the service exits after the drain, the kubelet restarts it, and it announces "
        "again after its hold-down):",
        f"  kubectl -n {namespace} exec {pod} -- egressgw gateway drain --config {GATEWAY_CONFIG}",
        "Keep it out (maintenance: it withdraws while the file exists; the default health.disable_file):",
        f"  kubectl -n {namespace} exec {pod} -- touch /var/lib/egressgw/maintenance",
        f"  kubectl -n {namespace} exec {pod} -- rm /var/lib/egressgw/maintenance     # to return",
        "Deleting the pod drains it too (SIGTERM), and the DaemonSet starts a new one at once.",
    ]


def _appliance_commands() -> list[str]:
    return [f"  egressgw gateway drain --config {GATEWAY_CONFIG}      # or: systemctl stop egressgw-gateway",
            "  touch /var/lib/egressgw/maintenance                         # maintenance: withdraw, keep running"]


def _generic(member: str) -> list[str]:
    return [f"On {member} (an appliance, or inside its gateway pod), run:", *_appliance_commands()]


if __name__ == "__main__":
    sys.exit(main())
