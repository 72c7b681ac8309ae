"""Pure rendering of a worker plan into our nftables tables: steering and source checks (prerouting), tunnel guards
(forward), the identity SNAT that keeps the CNI's masquerade off steered packets (postrouting), all in
`inet egressgw`; and the bridge-port bindings of steered pods in `bridge egressgw` (`worker_bridge_table`). See
docs/datapath.md."""

from __future__ import annotations

from collections.abc import Iterable

from appliance.datapath.plan.nat_order import WORKER_SNAT_PRIORITY
from appliance.datapath.plan.nft_rendering import TABLE, Element, NftSet, NftTable, addr, mark, net, split_families
from appliance.datapath.plan.nft_variant import RulesetVariant, jump_elements, source_groups, split_concat
from appliance.datapath.plan.policy_drops import index as policy_drop_index
from appliance.datapath.plan.worker import SourceBinding, SourceValidation, WorkerPlan

#: drop counters by reason (metric label `reason` = the name without `drop_`), in `inet egressgw`
WORKER_DROPS = (
    "drop_no_gateway", "drop_pod_tunnel", "drop_unsteered_flow", "drop_source_rpf", "drop_source_unbound",
    "drop_tunnel_unsolicited",
)  # fmt: skip
#: drop counters of the worker's bridge table (`bridge egressgw`)
BRIDGE_DROPS = ("drop_source_spoofed",)
BRIDGE_FAMILY = "bridge"


def worker_table(plan: WorkerPlan, variant: RulesetVariant = RulesetVariant.MODERN) -> NftTable:
    """The worker's `inet egressgw` table (COMPAT: plus its `ip`/`ip6` NAT tables as companions; nft_variant)."""
    m = plan.marks
    base, mask, owned = mark(m.mark_base), mark(m.mark_mask), mark(m.owned_mask)
    c4, c6 = split_families(plan.cluster_cidrs)
    gateways = sorted({*plan.tunnel_guard, *(e.address for e in plan.endpoints)}, key=lambda a: (a.version, int(a)))
    steer4 = frozenset((f"{addr(e.pod_ip)} . {net(e.destination)}", mark(e.mark)) for e in plan.steer
                       if e.pod_ip.version == 4)
    steer6 = frozenset((f"{addr(e.pod_ip)} . {net(e.destination)}", mark(e.mark)) for e in plan.steer
                       if e.pod_ip.version == 6)
    sets: tuple[NftSet, ...] = (
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
        NftSet(name="tunnel_devices", key_type="ifname", elements=frozenset((d, None) for d in plan.tunnel_devices)),
        NftSet(name="unbound4", key_type="ipv4_addr",
               elements=frozenset((addr(a), None) for a in plan.unbound if a.version == 4)),
        NftSet(name="unbound6", key_type="ipv6_addr",
               elements=frozenset((addr(a), None) for a in plan.unbound if a.version == 6)),
    )
    # per-policy drop counters (`policy_drops`): consulted only by packets already being dropped
    drops = policy_drop_index(plan)
    sets += tuple(
        s
        for v, key in ((4, "ipv4_addr"), (6, "ipv6_addr"))
        for s in (
            NftSet(name=f"pdpod{v}", key_type=key, data_type="counter", elements=drops.maps[v].pods),
            NftSet(name=f"pddst{v}", key_type=f"{key} . {key}", data_type="counter", interval=True,
                   elements=drops.maps[v].destinations),
        )
    )
    ours = f"meta mark & {mask} == {base}"
    checks = ""
    if plan.source_validation is SourceValidation.STRICT:
        checks += f"""
\t\t{ours} ip saddr @unbound4 jump source_unbound
\t\t{ours} ip6 saddr @unbound6 jump source_unbound"""
    if plan.source_validation is not SourceValidation.OFF:
        # strict reverse path: the pod's own interface must be the route back to its address (routed CNIs: the
        # pod's /32 (/128) route; bridged pods pass here and are bound to their port by the bridge table)
        checks += f"""
\t\t{ours} fib saddr . iif oif missing counter name drop_source_rpf drop"""
    unbound_chain = ""
    if plan.source_validation is SourceValidation.STRICT:
        unbound_chain = """
\tchain source_unbound {
\t\tjump policy_drops
\t\tcounter name drop_source_unbound drop
\t}"""
    chains = f"""\tchain prerouting {{
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tct direction reply return
\t\tip daddr @cluster4 return
\t\tip6 daddr @cluster6 return
\t\tmeta mark set ip saddr . ip daddr map @steer4
\t\tmeta mark set ip6 saddr . ip6 daddr map @steer6
\t\tmeta mark {mark(m.drop_mark)} jump no_gateway{checks}
\t}}
\tchain no_gateway {{
\t\tjump policy_drops
\t\tcounter name drop_no_gateway drop
\t}}{unbound_chain}
\tchain policy_drops {{
\t\tmeta nfproto ipv4 counter name ip saddr map @pdpod4 return
\t\tmeta nfproto ipv6 counter name ip6 saddr map @pdpod6 return
\t\tmeta nfproto ipv4 counter name ip saddr . ip daddr map @pddst4
\t\tmeta nfproto ipv6 counter name ip6 saddr . ip6 daddr map @pddst6
\t}}
\tchain from_tunnel {{
\t\tct direction reply ct mark & {mask} == {base} return
\t\tcounter name drop_tunnel_unsolicited drop
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname @tunnel_devices jump from_tunnel
\t\tip daddr @gateways4 udp dport @tunnel_ports counter name drop_pod_tunnel drop
\t\tip6 daddr @gateways6 udp dport @tunnel_ports counter name drop_pod_tunnel drop
\t\tct direction original ct mark & {mask} == {base} meta mark & {mask} != {base} counter name drop_unsteered_flow drop
\t\tmeta mark & {mask} != {base} return
\t\tct mark set meta mark & {owned}
\t\ttcp flags syn tcp option maxseg size set rt mtu
\t\tcounter name meta mark & {owned} map @endpoint_counters
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority {WORKER_SNAT_PRIORITY}; policy accept;
\t\tmeta mark & {mask} != {base} return
\t\tmeta nfproto ipv4 snat ip to ip saddr
\t\tmeta nfproto ipv6 snat ip6 to ip6 saddr
\t}}"""
    counters = frozenset(WORKER_DROPS) | {e.counter for e in plan.endpoints} | set(drops.labels)
    table = NftTable(role="worker", chains=chains, sets=sets, counters=frozenset(counters))
    return _compat(table, base=base, mask=mask) if variant is RulesetVariant.COMPAT else table


# ----- the compat variant (nft_variant): no concatenated interval sets, no NAT in the inet table -----

#: the modern rules replaced in the compat variant: pod . destination lookups become a verdict map pod -> group
_COMPAT_RULES = {
    "\t\tmeta mark set ip saddr . ip daddr map @steer4\n": "\t\tip saddr vmap @steer4\n",
    "\t\tmeta mark set ip6 saddr . ip6 daddr map @steer6\n": "\t\tip6 saddr vmap @steer6\n",
    "\t\tmeta nfproto ipv4 counter name ip saddr . ip daddr map @pddst4\n":
        "\t\tmeta nfproto ipv4 ip saddr vmap @pddst4\n",
    "\t\tmeta nfproto ipv6 counter name ip6 saddr . ip6 daddr map @pddst6\n":
        "\t\tmeta nfproto ipv6 ip6 saddr vmap @pddst6\n",
}
#: per concatenated map: (single-key data type, the group chain's rule with `{set}` for the group's map)
_GROUPED = {
    "steer4": ("mark", "meta mark set ip daddr map @{set}"),
    "steer6": ("mark", "meta mark set ip6 daddr map @{set}"),
    "pddst4": ("counter", "counter name ip daddr map @{set}"),
    "pddst6": ("counter", "counter name ip6 daddr map @{set}"),
}


def _compat(table: NftTable, *, base: str, mask: str) -> NftTable:
    chains, _, _nat = table.chains.partition("\n\tchain postrouting {")
    chains += "\n"
    for old, new in _COMPAT_RULES.items():
        if old not in chains:
            raise AssertionError(f"compat rendering: rule not found: {old.strip()}")
        chains = chains.replace(old, new)
    sets: list[NftSet] = []
    groups: list[str] = []
    for s in table.sets:
        if s.name not in _GROUPED:
            sets.append(s)
            continue
        data_type, rule = _GROUPED[s.name]
        key_type = s.key_type.split(" . ")[0]
        names, members = source_groups(s.name, ((src, (dst, v)) for k, v in s.elements
                                                for src, dst in (split_concat(k),)))
        sets.append(NftSet(name=s.name, key_type=key_type, data_type="verdict", elements=jump_elements(names)))
        for name in sorted(members):
            sets.append(NftSet(name=name, key_type=key_type, data_type=data_type, interval=True,
                               elements=frozenset(members[name])))
            groups.append(f"\tchain {name} {{\n\t\t{rule.format(set=name)}\n\t}}")
    chains = "\n".join([chains.rstrip("\n"), *groups])
    nat = tuple(
        NftTable(role=f"worker-nat{v}", family=fam, marker=True, sets=(), counters=frozenset(),
                 chains=f"""\tchain postrouting {{
\t\ttype nat hook postrouting priority {WORKER_SNAT_PRIORITY}; policy accept;
\t\tmeta mark & {mask} != {base} return
\t\tsnat to {fam} saddr
\t}}""")
        for v, fam in ((4, "ip"), (6, "ip6"))
    )
    return NftTable(role="worker", chains=chains, sets=tuple(sets), counters=table.counters, marker=True,
                    companions=nat)


# ----- the bridge table: (pod IP, bridge port) bindings -----


def _binding_key(b: SourceBinding) -> str:
    return f"{addr(b.pod_ip)} . {b.interface}"


def worker_bridge_table(bridged: Iterable[SourceBinding], variant: RulesetVariant = RulesetVariant.MODERN) -> NftTable:
    """`bridge egressgw`: a frame whose source is a bound (steered, bridged) pod IP, arriving on any bridge port but
    that pod's, is dropped and counted (`drop_source_spoofed`), whatever its destination.

    Runs at the bridge's prerouting hook, where `iifname` is the port the frame came in by (the inet table only sees
    the bridge device). Only steered pod IPs are bound: the check protects the EIP, and a stale binding (a pod IP
    reused by a new pod before the next pass) can only hold up that IP's traffic until the pass that rebinds it.
    """
    items = sorted(set(bridged), key=SourceBinding.order)
    sets = tuple(
        s
        for v, key in ((4, "ipv4_addr"), (6, "ipv6_addr"))
        for s in (
            NftSet(name=f"bound{v}", key_type=key,
                   elements=frozenset((addr(b.pod_ip), None) for b in items if b.pod_ip.version == v)),
            NftSet(name=f"bindings{v}", key_type=f"{key} . ifname",
                   elements=frozenset((_binding_key(b), None) for b in items if b.pod_ip.version == v)),
        )
    )
    chains = """\tchain prerouting {
\t\ttype filter hook prerouting priority filter; policy accept;
\t\tip saddr @bound4 ip saddr . iifname != @bindings4 counter name drop_source_spoofed drop
\t\tip6 saddr @bound6 ip6 saddr . iifname != @bindings6 counter name drop_source_spoofed drop
\t}"""
    return NftTable(role="worker-bridge", chains=chains, sets=sets, counters=frozenset(BRIDGE_DROPS),
                    marker=variant is RulesetVariant.COMPAT)


def bridge_element_text(s: NftSet, e: Element) -> str:
    """An element as nft input: the interface name of a (pod IP . ifname) key is quoted."""
    key, _ = e
    if s.key_type.endswith(". ifname"):
        ip, _, ifname = key.partition(" . ")
        return f'{ip} . "{ifname}"'
    return key


def render_bridge_full(table: NftTable) -> str:
    """One `nft -f` transaction replacing `bridge egressgw` (create-if-missing, delete, create): atomic."""
    head = f"{BRIDGE_FAMILY} {TABLE}"
    out = [f"table {head}", f"delete table {head}", f"table {head} {{"]
    out.append(f"\tchain {table.marker_name} {{\n\t}}" if table.marker else f'\tcomment "{table.comment}"')
    out += [f"\tcounter {c} {{ }}" for c in sorted(table.counters)]
    for s in table.sets:
        body = ", ".join(bridge_element_text(s, e) for e in sorted(s.elements))
        out.append(f"\t{s.declaration()[:-1]}" + (f" elements = {{ {body} }}" if body else "") + " }")
    out += [table.chains, "}"]
    return "\n".join(out) + "\n"


def render_bridge_elements(table: NftTable, observed: dict[str, frozenset[Element]]) -> tuple[str, int]:
    """The transaction refreshing the sets whose elements differ (flush + add: atomic, the counter keeps counting);
    (text, number of sets rewritten)."""
    lines: list[str] = []
    changed = 0
    for s in table.sets:
        if observed.get(s.name, frozenset()) == s.elements:
            continue
        changed += 1
        lines.append(f"flush set {BRIDGE_FAMILY} {TABLE} {s.name}")
        if s.elements:
            body = ", ".join(bridge_element_text(s, e) for e in sorted(s.elements))
            lines.append(f"add element {BRIDGE_FAMILY} {TABLE} {s.name} {{ {body} }}")
    return ("\n".join(lines) + "\n" if lines else "", changed)
