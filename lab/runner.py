"""Realise a validated topology with network namespaces, and drive the running lab (exec, daemons, link faults).

`Lab.up(path)` creates, in this order: the state record, one namespace per linux node (`<prefix><node>`) plus one
switch namespace for all bridge nodes, per-namespace sysctls, the bridges, one veth pair per link (created directly
in the two namespaces: nothing ever appears in the host namespace), the nodes' `exec` lines, strict uRPF on the
routers (`lab.urpf`; `set_router_urpf(lab, False)` turns it off), then the daemons, and waits for their readiness
checks. Any failure, or Ctrl-C, tears everything down again.

Placeholders in daemon commands, readiness checks and exec lines (only these names are replaced, so nft's `{ }`
sets pass through untouched): `{python}`, `{topodir}`, `{state}`, `{nodedir}`, `{netns}`, `{node}`, `{lab}`,
`{prefix}`, `{bind:/container/path}` (the host path of that bind, relative to the topology file).
A daemon command starting with `@` names a built-in daemon provider from `lab.plugins` (e.g. `@kube-apiserver`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from appliance.core.waiting import poll_until
from lab import cleanup, netns, plugins, state, urpf
from lab.netns import LabCommandError
from lab.topology import SWITCH_NODE, Kind, Node, Topology, check_prefix, default_prefix, load

DEFAULT_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.default.forwarding", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.default.accept_redirects", "0"),
)
SWITCH_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),  # the switch only bridges frames; keep its own stack silent
    ("net.ipv6.conf.default.disable_ipv6", "1"),
)
_PLACEHOLDER = re.compile(r"\{(python|topodir|state|nodedir|netns|node|lab|prefix|bind:[^{}\s]+)\}")


class LabError(RuntimeError):
    """The lab could not be brought up or driven; the message says which node/daemon and why."""


class LabUsageError(LabError):
    """Bad arguments for a valid topology (name prefix, --without): nothing was created."""


def expand(text: str, values: Mapping[str, str], binds: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.startswith("bind:"):
            target = key[len("bind:") :]
            if target not in binds:
                raise LabError(f"placeholder {m.group(0)}: no bind with container path {target}")
            return binds[target]
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


class Lab:
    """A running lab (created by `Lab.up`, or found again with `Lab.attach`). Context manager: exits with down()."""

    def __init__(self, meta: state.Meta, topology: Topology) -> None:
        self.meta = meta
        self.topology = topology
        self._children: dict[tuple[str, str], subprocess.Popen[bytes]] = {}

    # ---- identity -------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def prefix(self) -> str:
        return self.meta.prefix

    @property
    def state_dir(self) -> Path:
        return state.lab_dir(self.name)

    def netns(self, node: str) -> str:
        """Namespace of a node (a bridge node's namespace is the shared switch namespace)."""
        if node == SWITCH_NODE and self.meta.switch:
            return self.meta.switch
        n = self.topology.node(node)
        return self.prefix + (SWITCH_NODE if n.kind is Kind.BRIDGE else n.name)

    def kubeconfig(self) -> Path:
        """Kubeconfig of the lab's API node (written by the `@kube-apiserver` provider; server reachable only from
        inside the lab, or through `lab.netns_forward`)."""
        for n in self.topology.linux_nodes:
            if any(d.command.startswith("@kube-apiserver") for d in n.daemons):
                return self.state_dir / "nodes" / n.name / "kube" / "kubeconfig"
        raise LabError("this lab has no node with an @kube-apiserver daemon")

    def node_dir(self, node: str) -> Path:
        d = self.state_dir / "nodes" / node
        d.mkdir(parents=True, exist_ok=True)
        return d

    def values(self, node: str) -> dict[str, str]:
        return {
            "python": sys.executable, "topodir": str(self.topology.path.parent), "state": str(self.state_dir),
            "nodedir": str(self.node_dir(node)), "netns": self.netns(node), "node": node, "lab": self.name,
            "prefix": self.prefix,
        }

    def expand(self, node: str, text: str) -> str:
        n = self.topology.node(node)
        binds = {target: str((self.topology.path.parent / host).resolve()) for host, target in n.binds}
        return expand(text, self.values(node), binds)

    def _env(self, node: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update({k: self.expand(node, v) for k, v in self.topology.node(node).env})
        env.update(extra or {})
        return env

    # ---- bring-up -------------------------------------------------------------------------------------------
    @classmethod
    def up(cls, path: str | Path, *, prefix: str | None = None, name: str | None = None,
           without: Sequence[str] = (), ready_timeout: float = 90.0) -> Lab:
        """Validate `path`, then realise it. `without`: nodes whose daemons are not started (namespace and links
        are still created). `name` defaults to the topology's name, or to the prefix without its '-' when a prefix
        is given."""
        topo = load(path)
        pfx = prefix or default_prefix(topo.name)
        lab_name = name or (topo.name if prefix is None else pfx.rstrip("-"))
        problems = check_prefix(pfx, topo)
        unknown = [w for w in without if w not in {n.name for n in topo.nodes}]
        if unknown:
            problems.append(f"--without: unknown node(s) {', '.join(unknown)}")
        if problems:
            raise LabUsageError("; ".join(problems))
        if state.read_meta(lab_name) is not None:
            raise LabError(f"lab {lab_name!r} is already up (state in {state.lab_dir(lab_name)}); "
                           f"run `egressgw lab down {lab_name}` first")
        namespaces = [pfx + n.name for n in topo.linux_nodes] + ([pfx + SWITCH_NODE] if topo.bridge_nodes else [])
        taken = [ns for ns in namespaces if netns.exists(ns)]
        if taken:
            raise LabError(f"namespace(s) already exist: {', '.join(taken)} (run `egressgw lab down`)")
        meta = state.Meta(
            name=lab_name, topology=str(topo.path), topology_name=topo.name, prefix=pfx,
            namespaces=tuple(namespaces), nodes=tuple(n.name for n in topo.linux_nodes),
            switch=pfx + SWITCH_NODE if topo.bridge_nodes else None, without=tuple(without),
            created=time.time(), runner_pid=os.getpid(),
        )
        state.write_meta(meta)
        lab = cls(meta, topo)
        try:
            lab._build(ready_timeout=ready_timeout)
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def attach(cls, name: str) -> Lab:
        meta = state.read_meta(name)
        if meta is None:
            raise LabError(f"no lab named {name!r} (nothing in {state.lab_dir(name)})")
        return cls(meta, load(meta.topology))

    def _build(self, *, ready_timeout: float) -> None:
        topo = self.topology
        for ns in self.meta.namespaces:
            netns.add(ns)
            sysctls = dict(DEFAULT_SYSCTLS)
            if ns == self.meta.switch:
                sysctls.update(SWITCH_SYSCTLS)
            else:
                sysctls.update(topo.node(ns[len(self.prefix) :]).sysctls)
            netns.run(netns.in_ns(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())]))
        if self.meta.switch:
            for br in topo.bridge_nodes:
                netns.ip(self.meta.switch, "link", "add", br.name, "type", "bridge", "stp_state", "0",
                         "mcast_snooping", "0")
                netns.ip(self.meta.switch, "link", "set", br.name, "up")
        for link in topo.links:
            a_ns, b_ns = self.netns(link.a.node), self.netns(link.b.node)
            mtu = ["mtu", str(link.mtu)] if link.mtu else []
            netns.ip(a_ns, "link", "add", "name", link.a.interface, *mtu, "type", "veth",
                     "peer", "name", link.b.interface, *mtu, "netns", b_ns)
            for ep, ns in ((link.a, a_ns), (link.b, b_ns)):
                if topo.node(ep.node).kind is Kind.BRIDGE:
                    netns.ip(ns, "link", "set", ep.interface, "master", ep.node, "up")
                else:
                    netns.ip(ns, "link", "set", ep.interface, "up")
        # exec lines: in order within a node, nodes in parallel (every link exists already)
        with ThreadPoolExecutor(max_workers=8) as pool:
            for future in [pool.submit(self._run_exec_lines, node) for node in topo.linux_nodes]:
                future.result()
        urpf.set_router_urpf(self, True)  # strict uRPF on the routers, as docs/routers.md asks of a real network
        waits: list[tuple[Node, str, str]] = []
        for node in topo.linux_nodes:
            if node.name in self.meta.without:
                continue
            for daemon in node.daemons:
                self._start_declared(node, daemon.name, daemon.command)
                if daemon.ready:
                    waits.append((node, daemon.name, daemon.ready))
        self._wait_ready(waits, timeout=ready_timeout)

    def _run_exec_lines(self, node: Node) -> None:
        for line in node.exec:
            argv = [self.expand(node.name, tok) for tok in shlex.split(line)]
            proc = self.exec(node.name, argv, check=False, env=self._env(node.name))
            if proc.returncode != 0:
                raise LabError(f"node {node.name!r}: exec {line!r} failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}")

    def _start_declared(self, node: Node, name: str, command: str) -> None:
        argv = [self.expand(node.name, tok) for tok in shlex.split(command)]
        if argv and argv[0].startswith("@"):
            provider = plugins.PROVIDERS.get(argv[0][1:])
            if provider is None:
                raise LabError(f"node {node.name!r}: unknown daemon provider {argv[0]!r} "
                               f"(known: {', '.join('@' + p for p in sorted(plugins.PROVIDERS))})")
            provider(self, node.name, name, argv[1:])
        else:
            self.start_daemon(node.name, name, argv)

    def _wait_ready(self, waits: list[tuple[Node, str, str]], *, timeout: float) -> None:
        pending = list(waits)

        def all_ready() -> bool:
            """Run the pending readiness checks once; drop those that pass. A daemon that died ends the wait."""
            still: list[tuple[Node, str, str]] = []
            for node, dname, check in pending:
                rec = self.daemon(node.name, dname)
                if rec is not None and not self.daemon_alive(rec):
                    raise LabError(f"node {node.name!r}: daemon {dname!r} exited during start-up; "
                                   f"log {rec.log}:\n{_tail(rec.log)}")
                argv = [self.expand(node.name, tok) for tok in shlex.split(check)]
                if self.exec(node.name, argv, check=False, timeout=10).returncode != 0:
                    still.append((node, dname, check))
            pending[:] = still
            return not pending

        if not poll_until(all_ready, timeout=timeout, interval=0.1):
            names = ", ".join(f"{n.name}/{d}" for n, d, _ in pending)
            raise LabError(f"not ready after {timeout:.0f}s: {names}")

    # ---- commands and daemons ---------------------------------------------------------------------------------
    def exec(self, node: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
             input: str | None = None, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv inside the node's namespace and wait; raises LabCommandError on failure when `check`."""
        return netns.run(netns.in_ns(self.netns(node), argv), check=check, timeout=timeout, input=input, env=env)

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside the node's namespace without waiting (kwargs go to subprocess.Popen)."""
        return subprocess.Popen(netns.in_ns(self.netns(node), argv), **kwargs)

    def start_daemon(self, node: str, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
                     *, cwd: str | Path | None = None) -> state.DaemonRecord:
        """Start a long-running process in the node's namespace, detached (own session), logging to the state
        dir; recorded so `lab status` shows it and `lab down` stops it."""
        old = self.daemon(node, name)
        if old is not None and self.daemon_alive(old):
            raise LabError(f"daemon {node}/{name} is already running (pid {old.pid})")
        log = self.state_dir / "logs" / f"{node}.{name}.log"
        with open(log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {shlex.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                netns.in_ns(self.netns(node), argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=self._env(node, env), cwd=str(cwd or self.node_dir(node)),
            )
        self._children[(node, name)] = proc
        rec = state.DaemonRecord(node=node, name=name, argv=tuple(argv), pid=proc.pid,
                                 start_time=_start_time_soon(proc.pid), log=str(log), started=time.time())
        state.write_daemon(self.name, rec)
        return rec

    def daemons(self) -> list[state.DaemonRecord]:
        return state.read_daemons(self.name)

    def daemon(self, node: str, name: str) -> state.DaemonRecord | None:
        return next((d for d in self.daemons() if (d.node, d.name) == (node, name)), None)

    def daemon_alive(self, rec: state.DaemonRecord) -> bool:
        child = self._children.get((rec.node, rec.name))
        if child is not None and child.pid == rec.pid and child.poll() is not None:
            return False
        return netns.alive(rec.pid, rec.start_time)

    def stop_daemon(self, node: str, name: str, *, sig: int = signal.SIGTERM, grace: float = 3.0) -> None:
        """Stop a daemon (SIGTERM, then SIGKILL after `grace`); sig=SIGKILL simulates a crash."""
        rec = self.daemon(node, name)
        if rec is None:
            raise LabError(f"no daemon {node}/{name}")
        if self.daemon_alive(rec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, sig)
            poll_until(lambda: not self.daemon_alive(rec), timeout=grace, interval=0.01)
            if self.daemon_alive(rec):
                netns.kill_all([rec.pid], grace=0)
        child = self._children.pop((node, name), None)
        if child is not None:
            child.poll()
        state.remove_daemon(self.name, node, name)

    def kill_node(self, node: str, *, sig: int = signal.SIGKILL) -> list[int]:
        """Kill every process in the node's namespace (a node crash); returns the PIDs signalled."""
        found = netns.pids(self.netns(node))
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for child in self._children.values():
            child.poll()
        return found

    # ---- link faults ----------------------------------------------------------------------------------------
    def set_link(self, node: str, interface: str, *, up: bool) -> None:
        netns.ip(self.netns(node), "link", "set", interface, "up" if up else "down")

    def switch_side(self, node: str, interface: str) -> tuple[str, str]:
        """The (node, interface) to act on to cut `node:interface`: the bridge port if the peer is a bridge."""
        peer = self.topology.peer(node, interface)
        if peer is None:
            raise LabError(f"no link at {node}:{interface}")
        if self.topology.node(peer.node).kind is Kind.BRIDGE:
            return peer.node, peer.interface
        return node, interface

    def cut_link(self, node: str, interface: str) -> None:
        """Take the link at node:interface down on the switch side (the far end keeps its carrier state)."""
        self.set_link(*self.switch_side(node, interface), up=False)

    def restore_link(self, node: str, interface: str) -> None:
        self.set_link(*self.switch_side(node, interface), up=True)

    # ---- teardown -------------------------------------------------------------------------------------------
    def down(self) -> None:
        cleanup.down_lab(self.name)
        for child in self._children.values():
            child.poll()
        self._children.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.down()


def _start_time_soon(pid: int) -> int | None:
    return netns.proc_start_time(pid)


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def lab_up(path: str | Path, **kwargs: Any) -> Iterator[Lab]:
    lab = Lab.up(path, **kwargs)
    try:
        yield lab
    finally:
        lab.down()


__all__ = ["Lab", "LabCommandError", "LabError", "LabUsageError", "lab_up"]
