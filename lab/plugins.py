"""Built-in daemon providers: a node daemon declared as `@<provider> [args]` is started by Python code, not argv.

The one provider today is `@kube-apiserver`: etcd (on the node's loopback) and kube-apiserver (port 6443) inside the
node's namespace. `--address` may be given several times, IPv4 and/or IPv6: with one address the server listens on
it alone; with several it listens on every address of the namespace (`::`, which takes IPv4 too) and advertises the
first, which is also the address its kubeconfig names (via `lab.kube_apiserver`, the foundation's library). Both
processes are recorded as lab daemons (`etcd`, `kube-apiserver`), so `lab status` shows them and `lab down` stops
them. The kubeconfig (server `https://<first address>:6443`, reachable only from inside the lab, or through
`lab.netns_forward`) is written to `<state>/nodes/<node>/kube/kubeconfig`; `Lab.kubeconfig()` returns its path.
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from lab import kube_apiserver as ka
from lab import netns, state


class ProviderHost(Protocol):
    """What a provider needs of the running lab (`lab.runner.Lab` is one; the runner imports this module, never
    the other way round)."""

    @property
    def name(self) -> str: ...

    def netns(self, node: str) -> str: ...

    def node_dir(self, node: str) -> Path: ...


Provider = Callable[[ProviderHost, str, str, Sequence[str]], None]

KUBE_SUBDIR = "kube"


def kubeconfig_path(lab: ProviderHost, node: str) -> Path:
    return lab.node_dir(node) / KUBE_SUBDIR / "kubeconfig"


def api_addresses(given: Sequence[str]) -> tuple[str, ...]:
    """The `--address` values, validated (ValueError naming the bad one); at least one is required."""
    if not given:
        raise ValueError("@kube-apiserver: --address is required (one or more, IPv4 and/or IPv6)")
    out = []
    for text in given:
        try:
            out.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise ValueError(f"@kube-apiserver: --address {text!r} is not an IP address") from None
    return tuple(out)


def bind_address(addresses: Sequence[str]) -> str:
    """One address: listen on it alone; several: every address of the namespace ("::" serves IPv4 too; "0.0.0.0"
    when all are IPv4)."""
    if len(addresses) == 1:
        return addresses[0]
    return "::" if any(":" in a for a in addresses) else "0.0.0.0"


def kube_apiserver(lab: ProviderHost, node: str, name: str, args: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="@kube-apiserver", exit_on_error=False)
    parser.add_argument("--address", action="append", default=[],
                        help="an address of the node to serve on (repeatable; the first is advertised)")
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--service-cidr", default="100.100.0.0/16")
    parser.add_argument("--crds", action="store_true", help="apply the project's CRDs once ready")
    opts = parser.parse_args(list(args))
    addresses = api_addresses(opts.address)
    workdir = lab.node_dir(node) / KUBE_SUBDIR
    cfg = ka.ApiServerConfig(workdir=workdir, address=addresses[0], bind_address=bind_address(addresses),
                             port=opts.port, netns=lab.netns(node), service_cluster_ip_range=opts.service_cidr)
    server = ka.start_apiserver(cfg)  # waits for /readyz
    now = time.time()
    for dname, pid, log in (("etcd", server.etcd_pid, "etcd.log"),
                            (name, server.apiserver_pid, "kube-apiserver.log")):
        if pid is None:
            continue
        state.write_daemon(lab.name, state.DaemonRecord(
            node=node, name=dname, argv=("@kube-apiserver", *args), pid=pid, start_time=netns.proc_start_time(pid),
            log=str(workdir / log), started=now,
        ))
    if opts.crds:
        ka.apply_crds(server)


PROVIDERS: dict[str, Provider] = {"kube-apiserver": kube_apiserver}
