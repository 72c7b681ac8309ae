"""`kubectl-egressgw`, the kubectl plugin: `kubectl egressgw status|explain|drain|validate ...`.

kubectl runs any executable named `kubectl-<name>` found on PATH for `kubectl <name> ...`, with the remaining
arguments and its environment (so `KUBECONFIG` reaches us unchanged). The program is installed beside `egressgw`
(pyproject.toml `[project.scripts]`); `kubectl plugin list` shows it once that directory is on PATH.

kubectl's conventions: `--kubeconfig`, `--context` and `-n/--namespace` are accepted before or after the
subcommand. `status` and `explain` are the `egressgw` subcommands of the same name (same options and output);
`explain` also takes the pod kubectl-style (`kubectl egressgw explain web-0 -n shop`, or `pod/web-0`) and defaults
the namespace to the kubeconfig context's, like kubectl. `validate` is offline (files only).

`drain MEMBER [--reason R]` is a maintenance drain through the API: it sets the `egressgw.io/drain` annotation
(value: the reason) on the member's Node, or on an appliance's member Lease (`egressgw-member-<name>`). The member's
service reads it from its cluster view (`appliance.core.maintenance`): it withdraws its EIPs at once (the routers
move them to the next member), keeps its data path, reports `Maintenance`, and stays so across restarts until
`undrain MEMBER` removes the annotation; then it returns through its normal rise and failback hold-down. The one-off
drain-and-exit of a service stays on the member (`egressgw gateway drain`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kubernetes import config as kube_config

from appliance.cli.main import main as egressgw_main
from appliance.core.model import DRAIN_ANNOTATION
from k8s_sync.kubeapi import ApiError, KubeApi, make_api_client
from k8s_sync.leases import DEFAULT_NAMESPACE, LEASES, MEMBER_PREFIX

PROG = "kubectl egressgw"
#: the annotation's value when `drain` is given no --reason
DEFAULT_REASON = "maintenance"

COMMANDS: dict[str, str] = {
    "status": "gateways, members, EIPs and policies (-o table|wide|json|yaml, -w to watch)",
    "explain": "which policy, gateway and EIP apply to a pod: explain POD [-n NS] [--dest IP]",
    "drain": "keep a gateway member out (maintenance, also across restarts): drain MEMBER [--reason R]",
    "undrain": "let a drained member return (after its failback hold-down): undrain MEMBER",
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
    return drain(top, rest, undrain=top.command == "undrain")


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


# ----- drain / undrain -----

def drain_parser(*, undrain: bool) -> argparse.ArgumentParser:
    if undrain:
        text = (f"Remove the {DRAIN_ANNOTATION} annotation from a member's Node (or an appliance's member Lease): "
                "the member returns through its normal rise and failback hold-down, then announces again.")
    else:
        text = (f"Set the {DRAIN_ANNOTATION} annotation (value: the reason) on a member's Node, or on an appliance's "
                f"member Lease ({MEMBER_PREFIX}<name>). The member withdraws its EIPs at once (the routers move them "
                "to the next member), keeps its data path, reports Maintenance, and stays out - also across service "
                f"restarts - until `{PROG} undrain MEMBER`.")
    parser = argparse.ArgumentParser(prog=f"{PROG} {'undrain' if undrain else 'drain'}", description=text)
    parser.add_argument("member", help="the member: a gateway node's name or an appliance's name")
    if not undrain:
        parser.add_argument("--reason", default=DEFAULT_REASON,
                            help=f"why (the annotation's value, shown by `{PROG} status`; default {DEFAULT_REASON!r})")
    add_globals(parser, namespace_help=f"namespace of the member Leases (default {DEFAULT_NAMESPACE})")
    return parser


def drain_patch(reason: str | None) -> dict[str, object]:
    """The JSON merge patch that sets the drain annotation to `reason`, or removes it (None)."""
    return {"metadata": {"annotations": {DRAIN_ANNOTATION: reason}}}


def drain_target(node: dict[str, object] | None, lease: dict[str, object] | None, member: str,
                 namespace: str) -> tuple[str, str] | None:
    """(what, API path) of the object carrying member `member`'s drain annotation: its Node when there is one (a
    cluster-node member), else its member Lease (an appliance); None when neither exists."""
    if node is not None:
        return f"node/{member}", f"/api/v1/nodes/{member}"
    if lease is not None:
        return f"lease {namespace}/{MEMBER_PREFIX}{member}", LEASES.path(namespace, MEMBER_PREFIX + member)
    return None


def _annotation(obj: dict[str, object] | None) -> str | None:
    meta = (obj or {}).get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    value = annotations.get(DRAIN_ANNOTATION) if isinstance(annotations, dict) else None
    return None if value is None else str(value)


def drain(top: argparse.Namespace, rest: list[str], *, undrain: bool = False) -> int:
    args = drain_parser(undrain=undrain).parse_args(rest)
    kubeconfig, context = args.kubeconfig or top.kubeconfig, args.context or top.context
    namespace = args.namespace or top.namespace or DEFAULT_NAMESPACE
    command = f"{PROG} {'undrain' if undrain else 'drain'}"
    try:
        api = KubeApi(make_api_client(kubeconfig, context=context))
        lease = _get(api, LEASES.path(namespace, MEMBER_PREFIX + args.member))
        node = _get(api, f"/api/v1/nodes/{args.member}")
        target = drain_target(node, lease, args.member, namespace)
        if target is None:
            print(f"{command}: no node and no member Lease {MEMBER_PREFIX}{args.member} in namespace {namespace}: "
                  f"{args.member!r} is not a gateway member (`{PROG} status -o wide` lists them)", file=sys.stderr)
            return 1
        what, path = target
        current = _annotation(node if node is not None else lease)
        if undrain and current is None:
            print(f"{what} carries no {DRAIN_ANNOTATION} annotation: {args.member} is not drained; nothing to do.")
            return 0
        api.merge_patch(path, drain_patch(None if undrain else args.reason))
    except Exception as e:
        print(f"{command}: cannot change member {args.member!r}: {e}", file=sys.stderr)
        return 1
    if undrain:
        print(f"{what}: removed {DRAIN_ANNOTATION} (was {current!r}). {args.member} returns: it announces again "
              "once healthy, after its failback hold-down.")
    else:
        print(f"{what}: set {DRAIN_ANNOTATION}={args.reason!r}"
              + (f" (was {current!r})" if current is not None else "")
              + f". {args.member} withdraws its EIPs now (they move to the next member), keeps its data path and "
                f"stays in maintenance, also across restarts, until `{PROG} undrain {args.member}`.")
        if node is not None and lease is None:
            print(f"note: no member Lease {namespace}/{MEMBER_PREFIX}{args.member}: no gateway service has "
                  "registered on this node yet (or -n names the wrong namespace).")
    return 0


def _get(api: KubeApi, path: str) -> dict[str, object] | None:
    try:
        return api.get(path)
    except ApiError as e:
        if e.status == 404:
            return None
        raise


if __name__ == "__main__":
    sys.exit(main())
