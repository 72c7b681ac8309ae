"""Kernel applier for links, addresses, neighbours, routes, rules and sysctls: observe -> diff -> converge.

Why iproute2 and not pyroute2 here: our routes carry lightweight-tunnel metadata (`encap ip id VNI dst EIP`), and
pyroute2 0.9.7 cannot encode LWTUNNEL_ENCAP_IP/IP6 (it only knows MPLS, SEG6, BPF). `ip -json` gives a complete,
stable view of what we own, and `ip -batch` applies hundreds of changes per process start (10k pod routes take
~0.1 s instead of 10k netlink round trips from Python). Only the applier runs commands; planners stay pure.

What we own (everything else is never read for diffs and never touched): links named `egw-*`, addresses with
metric OWN_METRIC on `lo`, permanent neighbours on `egw-*`, routes and rules with `proto OWN_PROTO`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.datapath.plan.kernel_model import (
    LINK_PREFIX,
    OWN_METRIC,
    OWN_PROTO,
    Change,
    KernelState,
    LocalAddress,
    Neighbour,
    Op,
    Route,
    Rule,
    Sysctl,
    TunnelLink,
    diff,
)
from appliance.datapath.plan.kernel_parsing import (
    addr_infos,
    load_ip_json,
    parse_local_addresses,
    parse_neighbours,
    parse_routes,
    parse_rules,
    parse_sysctls,
    parse_tunnel_link,
)


class CommandError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Shell:
    """Runs commands in one network namespace (`netns`), or in the current one when netns is None."""

    netns: str | None = None

    def argv(self, argv: Sequence[str]) -> list[str]:
        if self.netns is None:
            return list(argv)
        if argv and argv[0] == "ip":
            return ["ip", "-n", self.netns, *argv[1:]]
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: Sequence[str], *, input: str | None = None, check: bool = True) -> tuple[int, str, str]:
        proc = subprocess.run(self.argv(argv), input=input, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise CommandError(f"{' '.join(argv[:4])}...: exit {proc.returncode}: {proc.stderr.strip()[:2000]}")
        return proc.returncode, proc.stdout, proc.stderr

    def json(self, argv: Sequence[str]) -> list[dict[str, Any]]:
        """`ip -json` output, decoded by `kernel_parsing.load_ip_json` (which keeps a route's encap `dst`)."""
        return load_ip_json(self.run(argv)[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    changes: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()

    def __add__(self, other: ApplyResult) -> ApplyResult:
        return ApplyResult(changes=self.changes + other.changes, failures=self.failures + other.failures)


class NetlinkApplier:
    """Observe / diff / apply our links, addresses, neighbours, routes, rules and sysctls in one namespace."""

    def __init__(self, shell: Shell | None = None) -> None:
        self.shell = shell or Shell()

    # ----- observe -----

    def observe(self, sysctl_keys: Iterable[str] = (), *, routes: bool = True) -> KernelState:
        """What we own in the namespace right now (the parsing is `appliance.datapath.plan.kernel_parsing`).

        routes=False leaves the routes out (empty): the caller knows them from a matching kernel fingerprint."""
        sh = self.shell
        links = [
            parse_tunnel_link(d, self._addresses(str(d["ifname"])))
            for d in sh.json(["ip", "-d", "-j", "link", "show"])
            if str(d.get("ifname", "")).startswith(LINK_PREFIX)
        ]
        owned: set[Route] = set()
        rules: set[Rule] = set()
        for version in (4, 6):
            if routes:
                owned |= parse_routes(sh.json(
                    ["ip", "-j", f"-{version}", "route", "show", "table", "all", "proto", str(OWN_PROTO)]), version)
            rules |= parse_rules(sh.json(["ip", "-j", f"-{version}", "rule", "show"]), version)
        return KernelState(
            links=frozenset(links), addresses=parse_local_addresses(self._addresses("lo")),
            neighbours=parse_neighbours(sh.json(["ip", "-j", "neigh", "show", "nud", "permanent"])),
            routes=frozenset(owned), rules=frozenset(rules), sysctls=self._sysctls(sysctl_keys),
        )

    def _addresses(self, dev: str) -> list[dict[str, Any]]:
        return addr_infos(self.shell.json(["ip", "-j", "addr", "show", "dev", dev]))

    def _sysctls(self, keys: Iterable[str]) -> frozenset[Sysctl]:
        keys = sorted(set(keys))
        if not keys:
            return frozenset()
        return parse_sysctls(self.shell.run(["sysctl", "-e", *keys], check=False)[1])

    # ----- apply -----

    def diff(self, desired: KernelState) -> tuple[Change, ...]:
        return diff(self.observe(s.key for s in desired.sysctls), desired)

    def apply(self, desired: KernelState) -> ApplyResult:
        """Converge to `desired`: only the differences are applied. Returns what changed and what failed."""
        return self.execute(self.diff(desired))

    def remove_all(self) -> ApplyResult:
        """Remove everything we own (links, EIPs on lo, our routes and rules); sysctls are left as they are."""
        return self.execute(diff(self.observe(), KernelState()))

    def execute(self, changes: Sequence[Change]) -> ApplyResult:
        segments: list[tuple[str, list[str]]] = []
        failures: list[str] = []

        def flush() -> None:
            for family, lines in segments:
                argv = ["ip", *([family] if family else []), "-force", "-batch", "-"]
                rc, _, err = self.shell.run(argv, input="\n".join(lines) + "\n", check=False)
                if rc != 0:
                    failures.extend(x for x in err.splitlines() if x.strip() and not x.startswith("Command fail"))
            segments.clear()

        for ch in changes:
            if isinstance(ch.item, Sysctl):
                flush()  # a per-device sysctl needs the device created by the commands before it
                rc, _, err = self.shell.run(["sysctl", "-q", "-w", f"{ch.item.key}={ch.item.value}"], check=False)
                if rc != 0:
                    failures.append(f"sysctl {ch.item.key}: {err.strip()}")
                continue
            family, lines = _commands(ch)
            if segments and segments[-1][0] == family:
                segments[-1][1].extend(lines)
            else:
                segments.append((family, list(lines)))
        flush()
        return ApplyResult(changes=tuple(str(c) for c in changes), failures=tuple(failures))


def _commands(ch: Change) -> tuple[str, list[str]]:
    """(family flag for `ip`, batch lines) of one change."""
    item = ch.item
    if isinstance(item, TunnelLink):
        setup = [f"link set {item.name} mtu {item.mtu} up", f"addr replace {item.address} dev {item.name} scope link"]
        if ch.op is Op.DELETE:
            return "", [f"link del {item.name}"]
        if ch.op is Op.ADD:
            # the MAC is set only here: setting it (even unchanged) flushes the device's neighbours
            return "", [
                f"link add {item.name} address {item.mac} type vxlan external dstport {item.port}",
                f"link set {item.name} addrgenmode none",
                *setup,
            ]
        return "", setup
    if isinstance(item, LocalAddress):
        plen = 32 if item.ip.version == 4 else 128
        if ch.op is Op.DELETE:
            return "", [f"addr del {item.ip}/{plen} dev {item.dev}"]
        return "", [f"addr replace {item.ip}/{plen} dev {item.dev} metric {OWN_METRIC}"]
    if isinstance(item, Neighbour):
        if ch.op is Op.DELETE:
            return "", [f"neigh del {item.ip} dev {item.dev}"]
        return "", [f"neigh replace {item.ip} lladdr {item.mac} dev {item.dev} nud permanent"]
    if isinstance(item, Route):
        if ch.op is Op.DELETE:
            return "", [f"route del {item.dst} table {item.table} proto {OWN_PROTO}"]
        if item.encap is None:  # a device route (WireGuard)
            via = f" via {item.via}" if item.via is not None else ""
            return "", [f"route replace {item.dst}{via} dev {item.dev} table {item.table} proto {OWN_PROTO}"]
        encap = "ip" if item.encap.dst.version == 4 else "ip6"
        csum = " csum" if encap == "ip6" else ""  # IPv6 UDP must carry a checksum (zero-checksum RX is off)
        onlink = " onlink" if item.via is not None and item.via.version == 4 else ""
        return "", [
            f"route replace {item.dst} encap {encap} id {item.encap.vni} dst {item.encap.dst}{csum} "
            f"via {item.via} dev {item.dev}{onlink} table {item.table} proto {OWN_PROTO}"
        ]
    if isinstance(item, Rule):
        verb = "del" if ch.op is Op.DELETE else "add"
        tail = f" proto {OWN_PROTO}" if verb == "add" else ""
        if item.nop:
            return f"-{item.family}", [f"rule {verb} priority {item.priority} nop{tail}"]
        sel = (f"priority {item.priority}{' not' if item.invert else ''}{' iif ' + item.iif if item.iif else ''}"
               f" fwmark {item.fwmark:#x}/{item.mask:#x}")
        action = f"goto {item.goto}" if item.goto else f"lookup {item.table}"
        return f"-{item.family}", [f"rule {verb} {sel} {action}{tail}"]
    raise TypeError(f"no command for {item!r}")
