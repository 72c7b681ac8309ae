"""Built-in daemon providers: a node daemon declared as `@<provider> [args]` is started by Python code, not argv.

The one provider today is `@kube-apiserver`: etcd (on the node's loopback) and kube-apiserver (on `--address`,
port 6443) inside the node's namespace, via `lab.kube_apiserver` (the foundation's library). Both processes are
recorded as lab daemons (`etcd`, `kube-apiserver`), so `lab status` shows them and `lab down` stops them. The
kubeconfig (server `https://<address>:6443`, reachable only from inside the lab, or through
`lab.netns_forward`) is written to `<state>/nodes/<node>/kube/kubeconfig`; `Lab.kubeconfig()` returns its path.
"""

from __future__ import annotations

import argparse
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


def kube_apiserver(lab: ProviderHost, node: str, name: str, args: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="@kube-apiserver", exit_on_error=False)
    parser.add_argument("--address", default="100.127.0.10")
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--service-cidr", default="100.100.0.0/16")
    parser.add_argument("--crds", action="store_true", help="apply the project's CRDs once ready")
    opts = parser.parse_args(list(args))
    workdir = lab.node_dir(node) / KUBE_SUBDIR
    cfg = ka.ApiServerConfig(workdir=workdir, address=opts.address, port=opts.port, netns=lab.netns(node),
                             service_cluster_ip_range=opts.service_cidr)
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
