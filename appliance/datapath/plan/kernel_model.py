"""Desired and observed kernel state of the data path, and the pure diff between them.

Why a model of our own: the planners describe the *whole* desired state as plain values (links, addresses,
neighbours, routes, rules, sysctls); the applier observes the same kinds from the kernel, `diff` compares the two and
yields the ordered changes (make before break: add and replace first, remove last, rules before routes on removal).
Everything here is data - no I/O - so diffs are unit-testable and `diff(x, x)` being empty is what "apply twice = no
change" means.

Ownership markers (so cleanup and adoption never touch anyone else's state):
- links: name prefix `egw-`
- addresses: on `egw-` links, or on `lo` with metric `OWN_METRIC` (iproute2 6.1 here cannot set address `proto`)
- routes and rules: `proto OWN_PROTO` (230 = 0xe6); rules also stay inside our priority range
- neighbours: permanent entries on `egw-` links
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface

from appliance.core.model import IPAddress, IPNetwork

#: route / rule protocol number marking our routes and rules (declared in docs/datapath.md)
OWN_PROTO = 230
#: metric of the EIP addresses we put on `lo` (the marker that tells them apart from anyone else's)
OWN_METRIC = 230
#: every link we create starts with this
LINK_PREFIX = "egw-"
#: the routing table `main`
MAIN_TABLE = 254


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class TunnelLink:
    """A VXLAN device in external (collect-metadata) mode: one per UDP port, it serves every VNI and peer."""

    name: str
    port: int
    mac: str
    mtu: int
    #: link-local /32 on the device: without an address, loose rp_filter rejects every decapsulated packet
    address: IPv4Interface


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class LocalAddress:
    """An address we hold on `lo` (the EIPs of a gateway member), marked with OWN_METRIC."""

    ip: IPAddress
    dev: str = "lo"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Neighbour:
    """A permanent neighbour entry on a tunnel device: the inner next hop -> the peer's tunnel MAC."""

    dev: str
    ip: IPAddress
    mac: str


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Encap:
    """Lightweight-tunnel metadata of a route: VNI and outer destination (outer family = dst's family)."""

    vni: int
    dst: IPAddress


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Route:
    table: int
    dst: IPNetwork
    dev: str
    #: inner next hop (VXLAN); None for a device route (WireGuard)
    via: IPAddress | None = None
    #: lightweight-tunnel metadata (VXLAN); None for a device route
    encap: Encap | None = None

    @property
    def key(self) -> tuple[int, int, IPNetwork]:
        return (self.dst.version, self.table, self.dst)


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Rule:
    """`ip rule` at a priority inside our range: [not] fwmark/mask [iif] -> lookup table | goto priority | nop."""

    family: int
    priority: int
    fwmark: int = 0
    mask: int = 0
    table: int = 0
    iif: str = ""
    #: `not`: the selector is inverted
    invert: bool = False
    #: jump to the rule at this priority instead of a lookup (0 = no goto)
    goto: int = 0
    #: a rule that does nothing (the target of a goto)
    nop: bool = False


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Sysctl:
    """A sysctl below /proc/sys (dotted key, e.g. `net.ipv4.conf.egw-vx4789.rp_filter`)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelState:
    """Everything of ours in one network namespace's routing/link state (nftables is separate)."""

    links: frozenset[TunnelLink] = frozenset()
    addresses: frozenset[LocalAddress] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()
    routes: frozenset[Route] = frozenset()
    rules: frozenset[Rule] = frozenset()
    sysctls: frozenset[Sysctl] = frozenset()


class Op(enum.StrEnum):
    ADD = "add"
    REPLACE = "replace"
    DELETE = "delete"


Item = TunnelLink | LocalAddress | Neighbour | Route | Rule | Sysctl


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    op: Op
    item: Item

    def __str__(self) -> str:
        return f"{type(self.item).__name__.lower()} {self.op} {describe(self.item)}"


def describe(item: Item) -> str:
    if isinstance(item, TunnelLink):
        return f"{item.name} port={item.port} mtu={item.mtu}"
    if isinstance(item, LocalAddress):
        return f"{item.ip} dev {item.dev}"
    if isinstance(item, Neighbour):
        return f"{item.ip} dev {item.dev} lladdr {item.mac}"
    if isinstance(item, Route):
        if item.encap is None:
            return f"{item.dst} table {item.table} dev {item.dev}"
        return f"{item.dst} table {item.table} vni {item.encap.vni} endpoint {item.encap.dst}"
    if isinstance(item, Rule):
        if item.nop:
            return f"v{item.family} prio {item.priority} nop"
        action = f"goto {item.goto}" if item.goto else f"table {item.table}"
        sel = f"{'not ' if item.invert else ''}fwmark {item.fwmark:#x}/{item.mask:#x}"
        return f"v{item.family} prio {item.priority} {sel} {action}"
    return f"{item.key}={item.value}"


def _addr_key(a: LocalAddress) -> tuple[str, int, int]:
    return (a.dev, a.ip.version, int(a.ip))


def _neigh_key(n: Neighbour) -> tuple[str, int, int]:
    return (n.dev, n.ip.version, int(n.ip))


def _route_key(r: Route) -> tuple[int, int, int, int]:
    return (r.dst.version, r.table, int(r.dst.network_address), r.dst.prefixlen)


def _link_needs_recreate(old: TunnelLink, new: TunnelLink) -> bool:
    # a MAC change flushes every neighbour of the device (permanent ones too): recreate and re-add instead
    return old.port != new.port or old.mac != new.mac


def diff(observed: KernelState, desired: KernelState) -> tuple[Change, ...]:
    """Ordered changes turning `observed` into `desired` (pure). Empty when they are equal."""
    adds, removes = diff_phases(observed, desired)
    return adds + removes


def diff_phases(observed: KernelState, desired: KernelState) -> tuple[tuple[Change, ...], tuple[Change, ...]]:
    """(make, break): the additions/replacements, and the removals to run after the nft table changed."""
    adds: list[Change] = []
    removes: list[Change] = []
    old_links = {link.name: link for link in observed.links}
    recreated: set[str] = set()
    for link in sorted(desired.links):
        old = old_links.get(link.name)
        if old is None:
            adds.append(Change(op=Op.ADD, item=link))
        elif old != link:
            if _link_needs_recreate(old, link):
                adds.append(Change(op=Op.DELETE, item=old))
                adds.append(Change(op=Op.ADD, item=link))
                recreated.add(link.name)
            else:
                adds.append(Change(op=Op.REPLACE, item=link))
    if recreated:  # whatever hung off a recreated device is gone with it
        observed = replace(
            observed,
            neighbours=frozenset(n for n in observed.neighbours if n.dev not in recreated),
            routes=frozenset(r for r in observed.routes if r.dev not in recreated),
        )
    have_sysctl = {s.key: s.value for s in observed.sysctls}
    adds += [Change(op=Op.REPLACE, item=s) for s in sorted(desired.sysctls) if have_sysctl.get(s.key) != s.value]
    adds += [Change(op=Op.ADD, item=a) for a in sorted(desired.addresses - observed.addresses, key=_addr_key)]
    have_neigh = {(n.dev, n.ip): n for n in observed.neighbours}
    adds += [
        Change(op=Op.REPLACE, item=n)
        for n in sorted(desired.neighbours, key=_neigh_key)
        if have_neigh.get((n.dev, n.ip)) != n
    ]
    have_routes = {r.key: r for r in observed.routes}
    want_routes = {r.key: r for r in desired.routes}
    adds += [
        Change(op=Op.REPLACE, item=r)
        for r in sorted(desired.routes, key=_route_key)
        if have_routes.get(r.key) != r
    ]
    adds += [Change(op=Op.ADD, item=r) for r in sorted(desired.rules - observed.rules)]
    # removals, most dependent first: rules, routes, neighbours, addresses, links
    removes += [Change(op=Op.DELETE, item=r) for r in sorted(observed.rules - desired.rules)]
    removes += [
        Change(op=Op.DELETE, item=r)
        for r in sorted(observed.routes, key=_route_key)
        if r.key not in want_routes
    ]
    want_neigh = {(n.dev, n.ip) for n in desired.neighbours}
    removes += [
        Change(op=Op.DELETE, item=n)
        for n in sorted(observed.neighbours, key=_neigh_key)
        if (n.dev, n.ip) not in want_neigh
    ]
    removes += [Change(op=Op.DELETE, item=a) for a in sorted(observed.addresses - desired.addresses, key=_addr_key)]
    want_links = {link.name for link in desired.links}
    removes += [Change(op=Op.DELETE, item=link) for link in sorted(observed.links) if link.name not in want_links]
    return tuple(adds), tuple(removes)
