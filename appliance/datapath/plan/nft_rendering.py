"""Pure rendering of worker and gateway plans into our nftables table `inet egressgw`.

A table is split into its *structure* (chains, rules, set declarations: changes only with a software upgrade or a
mark-range setting) and its *contents* (set/map elements and named counters: change with pods and policies). The
structure is fingerprinted (sha256, kept in the table's comment) so the applier can tell "same structure, update
elements in place" (counters keep counting, one small transaction) from "replace the whole table atomically".

Elements are kept in one canonical text form (`100.64.1.10 . 0.0.0.0/0` -> `0x0e6e0001`) that the applier also
produces from `nft -j` output, so observed and desired contents compare as plain sets of strings.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.core.model import IPAddress, IPNetwork
from appliance.datapath.plan.gateway import GatewayPlan
from appliance.datapath.plan.tunnel import addr_token
from appliance.datapath.plan.worker import WorkerPlan

FAMILY = "inet"
TABLE = "egressgw"

#: drop counters by reason (metric label `reason` = the name without `drop_`)
WORKER_DROPS = ("drop_no_gateway", "drop_pod_tunnel", "drop_unsteered_flow")
GATEWAY_DROPS = (
    "drop_unknown_vtep",
    "drop_tunnel_to_local",
    "drop_eip_unsolicited",
    "drop_spoofed",
    "drop_cluster_destination",
    "drop_unselected",
    "drop_no_snat",
)

Element = tuple[str, str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class NftSet:
    name: str
    key_type: str
    data_type: str | None = None
    interval: bool = False
    elements: frozenset[Element] = frozenset()

    @property
    def kind(self) -> str:
        return "map" if self.data_type else "set"

    def declaration(self) -> str:
        typ = f"{self.key_type} : {self.data_type}" if self.data_type else self.key_type
        flags = " flags interval;" if self.interval else ""
        return f"{self.kind} {self.name} {{ type {typ};{flags} }}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NftTable:
    role: str
    chains: str
    sets: tuple[NftSet, ...]
    counters: frozenset[str]

    @property
    def structure(self) -> str:
        return "\n".join([s.declaration() for s in self.sets] + [self.chains])

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.role}\n{self.structure}".encode()).hexdigest()[:16]

    @property
    def comment(self) -> str:
        return f"egressgw {self.role} structure={self.fingerprint}"

    def set(self, name: str) -> NftSet:
        return next(s for s in self.sets if s.name == name)


# ----- canonical element text -----


@functools.lru_cache(maxsize=65536)
def addr(ip: IPAddress) -> str:
    return str(ip)


@functools.lru_cache(maxsize=65536)
def net(n: IPNetwork) -> str:
    """Canonical interval text: a host prefix is written as the address (that is how nft lists it)."""
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def mark(value: int) -> str:
    return f"{value:#010x}"


def _quote_value(data_type: str | None, value: str) -> str:
    return f'"{value}"' if data_type == "counter" else value


def key_text(s: NftSet, key: str) -> str:
    return f'"{key}"' if s.key_type == "ifname" else key


def element_text(s: NftSet, e: Element) -> str:
    key, value = e
    key = key_text(s, key)
    return key if value is None or s.data_type is None else f"{key} : {_quote_value(s.data_type, value)}"


def _elements_block(s: NftSet, elements: Iterable[Element]) -> str:
    return ", ".join(element_text(s, e) for e in sorted(elements))


# ----- whole table and deltas -----


def render_full(table: NftTable) -> str:
    """One `nft -f` transaction replacing our table (create-if-missing, delete, create): atomic."""
    out = [f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{"]
    out.append(f'\tcomment "{table.comment}"')
    out += [f"\tcounter {c} {{ }}" for c in sorted(table.counters)]
    for s in table.sets:
        decl = s.declaration()[:-1]
        body = f" elements = {{ {_elements_block(s, s.elements)} }}" if s.elements else ""
        out.append(f"\t{decl}{body} }}")
    out.append(table.chains)
    out.append("}")
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Contents:
    """What the applier observed (or wants) inside an existing table with the right structure."""

    elements: dict[str, frozenset[Element]]
    counters: frozenset[str]


def render_delta(observed: Contents, table: NftTable) -> tuple[str, int]:
    """The `nft -f` transaction turning observed contents into the table's (elements + counters); (text, #changes)."""
    lines: list[str] = []
    changes = 0
    new_counters = table.counters - observed.counters
    lines += [f"add counter {FAMILY} {TABLE} {c}" for c in sorted(new_counters)]
    changes += len(new_counters)
    for s in table.sets:
        have = observed.elements.get(s.name, frozenset())
        have_keys = {k: v for k, v in have}
        want_keys = {k: v for k, v in s.elements}
        remove = [(k, v) for k, v in have if want_keys.get(k, "\0") != v]
        add = [(k, v) for k, v in s.elements if have_keys.get(k, "\0") != v]
        if remove:
            keys = ", ".join(sorted(key_text(s, k) for k, _ in remove))
            lines.append(f"delete element {FAMILY} {TABLE} {s.name} {{ {keys} }}")
        if add:
            lines.append(f"add element {FAMILY} {TABLE} {s.name} {{ {_elements_block(s, add)} }}")
        changes += len(remove) + len(add)
    old_counters = observed.counters - table.counters
    lines += [f"delete counter {FAMILY} {TABLE} {c}" for c in sorted(old_counters)]
    changes += len(old_counters)
    return ("\n".join(lines) + "\n" if lines else "", changes)


# ----- worker -----


def _split(items: Iterable[IPNetwork]) -> tuple[list[IPNetwork], list[IPNetwork]]:
    items = list(items)
    return [n for n in items if n.version == 4], [n for n in items if n.version == 6]


def worker_table(plan: WorkerPlan) -> NftTable:
    m = plan.marks
    base, mask = mark(m.mark_base), mark(m.mark_mask)
    c4, c6 = _split(plan.cluster_cidrs)
    gateways = sorted({e.address for e in plan.endpoints}, key=lambda a: (a.version, int(a)))
    steer4 = frozenset((f"{addr(e.pod_ip)} . {net(e.destination)}", mark(e.mark)) for e in plan.steer
                       if e.pod_ip.version == 4)
    steer6 = frozenset((f"{addr(e.pod_ip)} . {net(e.destination)}", mark(e.mark)) for e in plan.steer
                       if e.pod_ip.version == 6)
    sets = (
        NftSet(name="cluster4", key_type="ipv4_addr", interval=True, elements=frozenset((net(n), None) for n in c4)),
        NftSet(name="cluster6", key_type="ipv6_addr", interval=True, elements=frozenset((net(n), None) for n in c6)),
        NftSet(name="steer4", key_type="ipv4_addr . ipv4_addr", data_type="mark", interval=True, elements=steer4),
        NftSet(name="steer6", key_type="ipv6_addr . ipv6_addr", data_type="mark", interval=True, elements=steer6),
        NftSet(name="gateways4", key_type="ipv4_addr",
               elements=frozenset((addr(a), None) for a in gateways if a.version == 4)),
        NftSet(name="gateways6", key_type="ipv6_addr",
               elements=frozenset((addr(a), None) for a in gateways if a.version == 6)),
        NftSet(name="tunnel_ports", key_type="inet_service",
               elements=frozenset((str(p), None) for p in plan.tunnel_ports)),
        NftSet(name="endpoint_counters", key_type="mark", data_type="counter",
               elements=frozenset((mark(e.mark), e.counter) for e in plan.endpoints)),
    )
    chains = f"""\tchain prerouting {{
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tct direction reply return
\t\tip daddr @cluster4 return
\t\tip6 daddr @cluster6 return
\t\tmeta mark set ip saddr . ip daddr map @steer4
\t\tmeta mark set ip6 saddr . ip6 daddr map @steer6
\t\tmeta mark {mark(m.drop_mark)} counter name drop_no_gateway drop
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tip daddr @gateways4 udp dport @tunnel_ports counter name drop_pod_tunnel drop
\t\tip6 daddr @gateways6 udp dport @tunnel_ports counter name drop_pod_tunnel drop
\t\tct direction original ct mark & {mask} == {base} meta mark & {mask} != {base} counter name drop_unsteered_flow drop
\t\tmeta mark & {mask} != {base} return
\t\tct mark set meta mark
\t\ttcp flags syn tcp option maxseg size set rt mtu
\t\tcounter name meta mark map @endpoint_counters
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat - 10; policy accept;
\t\tmeta mark & {mask} != {base} return
\t\tmeta nfproto ipv4 snat ip to ip saddr
\t\tmeta nfproto ipv6 snat ip6 to ip6 saddr
\t}}"""
    counters = frozenset(WORKER_DROPS) | {e.counter for e in plan.endpoints}
    return NftTable(role="worker", chains=chains, sets=sets, counters=frozenset(counters))


# ----- gateway -----


def gateway_table(plan: GatewayPlan) -> NftTable:
    m = plan.marks
    base, mask = mark(m.mark_base), mark(m.mark_mask)
    c4, c6 = _split(plan.cluster_cidrs)

    def fam(v: int) -> str:
        return "ipv4_addr" if v == 4 else "ipv6_addr"

    sets: list[NftSet] = [
        NftSet(name="tunnel_ports", key_type="inet_service",
               elements=frozenset((str(p), None) for p in plan.tunnel_ports)),
        NftSet(name="tunnel_links", key_type="ifname",
               elements=frozenset((n, None) for n in plan.tunnel_links)),
        NftSet(name="wg_ports", key_type="inet_service",
               elements=frozenset((str(p), None) for p in plan.wireguard_ports)),
        NftSet(name="wg_links", key_type="ifname",
               elements=frozenset((n, None) for n in plan.wireguard_links)),
    ]
    for v, c in ((4, c4), (6, c6)):
        sets += [
            NftSet(name=f"vteps{v}", key_type=fam(v), data_type="mark",
                   elements=frozenset((addr(t.address), mark(t.mark)) for t in plan.vteps if t.address.version == v)),
            NftSet(name=f"pods{v}", key_type=f"mark . {fam(v)}",
                   elements=frozenset((f"{mark(mk)} . {addr(ip)}", None) for mk, ip in plan.pods if ip.version == v)),
            NftSet(name=f"eips{v}", key_type=fam(v),
                   elements=frozenset((addr(e), None) for e in plan.eips if e.version == v)),
            NftSet(name=f"cluster{v}", key_type=fam(v), interval=True, elements=frozenset((net(n), None) for n in c)),
        ]
        entries = [e for e in plan.snat if e.pod_ip.version == v]
        sets += [
            NftSet(name=f"snat{v}", key_type=f"{fam(v)} . {fam(v)}", data_type=fam(v), interval=True,
                   elements=frozenset((f"{addr(e.pod_ip)} . {net(e.destination)}", addr(e.eip))
                                      for e in entries if e.eip is not None)),
            NftSet(name=f"masq{v}", key_type=f"{fam(v)} . {fam(v)}", interval=True,
                   elements=frozenset((f"{addr(e.pod_ip)} . {net(e.destination)}", None)
                                      for e in entries if e.eip is None)),
        ]
        counted = [(e, f"{addr_token(e)}") for e in plan.eips if e.version == v]
        if plan.uplink is not None and plan.uplink.version == v and "nodeip" in plan.counters:
            counted.append((plan.uplink, "nodeip"))
        sets += [
            NftSet(name=f"eipcount{v}", key_type=fam(v), data_type="counter",
                   elements=frozenset((addr(a), f"eip_{t}") for a, t in counted)),
            NftSet(name=f"eipconn{v}", key_type=fam(v), data_type="counter",
                   elements=frozenset((addr(a), f"conn_{t}") for a, t in counted)),
        ]
    chains = f"""\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tudp dport @tunnel_ports meta mark set ip saddr map @vteps4 accept
\t\tudp dport @tunnel_ports meta mark set ip6 saddr map @vteps6 accept
\t\tudp dport @tunnel_ports counter name drop_unknown_vtep drop
\t\tudp dport @wg_ports accept
\t\tiifname @tunnel_links counter name drop_tunnel_to_local drop
\t\tiifname @wg_links ip6 daddr fe80::1 icmpv6 type echo-request accept
\t\tiifname @wg_links counter name drop_tunnel_to_local drop
\t\tip daddr @eips4 ct state new,invalid counter name drop_eip_unsolicited drop
\t\tip6 daddr @eips6 ct state new,invalid counter name drop_eip_unsolicited drop
\t}}
\tchain prerouting {{
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tct direction reply ct mark & {mask} == {base} meta mark set ct mark
\t\tct direction reply ct mark & {mask} == {base} counter name ip daddr map @eipcount4
\t\tct direction reply ct mark & {mask} == {base} counter name ip6 daddr map @eipcount6
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname @tunnel_links jump from_tunnel
\t\tiifname @wg_links jump from_wireguard
\t\toifname @tunnel_links tcp flags syn tcp option maxseg size set rt mtu
\t\toifname @wg_links tcp flags syn tcp option maxseg size set rt mtu
\t}}
\tchain from_wireguard {{
\t\tip daddr @cluster4 counter name drop_cluster_destination drop
\t\tip6 daddr @cluster6 counter name drop_cluster_destination drop
\t\tmeta nfproto ipv4 ip saddr . ip daddr != @snat4 ip saddr . ip daddr != @masq4 counter name drop_unselected drop
\t\tmeta nfproto ipv6 ip6 saddr . ip6 daddr != @snat6 ip6 saddr . ip6 daddr != @masq6 counter name drop_unselected drop
\t\tct state new ct mark set {base}
\t}}
\tchain from_tunnel {{
\t\tmeta nfproto ipv4 meta mark . ip saddr != @pods4 counter name drop_spoofed drop
\t\tmeta nfproto ipv6 meta mark . ip6 saddr != @pods6 counter name drop_spoofed drop
\t\tip daddr @cluster4 counter name drop_cluster_destination drop
\t\tip6 daddr @cluster6 counter name drop_cluster_destination drop
\t\tmeta nfproto ipv4 ip saddr . ip daddr != @snat4 ip saddr . ip daddr != @masq4 counter name drop_unselected drop
\t\tmeta nfproto ipv6 ip6 saddr . ip6 daddr != @snat6 ip6 saddr . ip6 daddr != @masq6 counter name drop_unselected drop
\t\tct state new ct mark set meta mark
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat - 10; policy accept;
\t\tct mark & {mask} != {base} return
\t\tip saddr . ip daddr @masq4 masquerade
\t\tip6 saddr . ip6 daddr @masq6 masquerade
\t\tsnat ip to ip saddr . ip daddr map @snat4
\t\tsnat ip6 to ip6 saddr . ip6 daddr map @snat6
\t\tcounter name drop_no_snat drop
\t}}
\tchain accounting {{
\t\ttype filter hook postrouting priority srcnat + 10; policy accept;
\t\tct direction original ct mark & {mask} == {base} counter name ip saddr map @eipcount4
\t\tct direction original ct mark & {mask} == {base} counter name ip6 saddr map @eipcount6
\t\tct state new ct direction original ct mark & {mask} == {base} counter name ip saddr map @eipconn4
\t\tct state new ct direction original ct mark & {mask} == {base} counter name ip6 saddr map @eipconn6
\t}}"""
    counters = set(GATEWAY_DROPS) | {f"eip_{c}" for c in plan.counters} | {f"conn_{c}" for c in plan.counters}
    return NftTable(role="gateway", chains=chains, sets=tuple(sets), counters=frozenset(counters))
