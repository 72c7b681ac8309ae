"""Pure rendering of a gateway plan into our nftables table: tunnel admission (input), per-worker anti-spoofing and
selection checks (forward), SNAT to the EIPs (postrouting), per-EIP accounting. See docs/datapath.md."""

from __future__ import annotations

from appliance.datapath.plan.gateway import GatewayPlan, TunnelSourceCheck
from appliance.datapath.plan.nft_rendering import NftSet, NftTable, addr, mark, net, split_families
from appliance.datapath.plan.nft_variant import RulesetVariant, jump_elements, source_groups, split_concat
from appliance.datapath.plan.policy_counters import counter_labels, map_elements
from appliance.datapath.plan.tunnel import addr_token

#: drop counters by reason (metric label `reason` = the name without `drop_`)
GATEWAY_DROPS = (
    "drop_unknown_vtep",
    "drop_tunnel_to_local",
    "drop_eip_unsolicited",
    "drop_spoofed",
    "drop_cluster_destination",
    "drop_unselected",
    "drop_no_snat",
    "drop_tunnel_source",
    "drop_unsteered_reply",
    "drop_tunnel_vni",
    "drop_tunnel_destination",
)

#: the VXLAN VNI as nft reads it: 24 bits at byte 4 of the VXLAN header, after the 8-byte UDP header (RFC 7348)
VNI_FIELD = "@th,96,24"

#: per-worker spoofed-drop counters: `spoofed_<node>` (metric egressgw_datapath_spoofed_packets_total{worker})
SPOOFED_PREFIX = "spoofed_"
#: nft object names are at most 255 bytes; node names are DNS subdomains of at most 253
_MAX_NAME = 250


#: echo requests to an EIP from a known worker (VTEP) are answered so a worker can learn, without the API server,
#: whether some member carries the EIP; the rate is per source address (a dynamic set keyed by the worker's
#: address; only known VTEPs get an entry, so it holds at most one entry per worker); beyond the rate they are
#: dropped as unsolicited like every other new packet to an EIP
PROBE_RATE = "10/second burst 20 packets"
PROBE_METER_TIMEOUT = 10


def spoofed_counter(node: str) -> str:
    """The name of a worker's spoofed-drop counter (Kubernetes node names are valid nft identifiers after a
    letter prefix; an absurdly long one is cut, which only shortens its metric label)."""
    return (SPOOFED_PREFIX + node)[:_MAX_NAME]


def _source_check(plan: GatewayPlan) -> str:
    if plan.source_check is TunnelSourceCheck.STRICT:
        return "\t\tudp dport @tunnel_ports fib saddr . iif oif missing counter name drop_tunnel_source drop\n"
    if plan.source_check is TunnelSourceCheck.LOOSE:
        return "\t\tudp dport @tunnel_ports fib saddr oif missing counter name drop_tunnel_source drop\n"
    return ""


#: the conntrack events a synced flow reports (`plan.state_sync`: with state sync on, only flows with these report)
#: the conntrack events our SNAT'ed flows report to the sync daemons. `destroy` is needed: conntrackd's internal
#: cache forgets a flow only on its destroy event (without it the cache grows without bound and every resync
#: re-sends long-dead flows). The cost: an old primary whose own copy of a moved flow expires deletes the copy of the
#: member now carrying it (docs/operations.md, State sync)
SYNC_EVENTS = "new,related,destroy,reply,assured,protoinfo,label"


def _sync_rules(plan: GatewayPlan) -> tuple[list[NftSet], str, str]:
    """State sync (when on): the peer sets, the input rules of the sync ports (peers only, anything else is
    counted `drop_sync_foreign` and dropped), and the rule that makes a flow we mark for SNAT report its events."""
    g = plan.sync_guard
    if g is None:
        return [], "", ""
    sets = [NftSet(name=f"syncpeers{v}", key_type="ipv4_addr" if v == 4 else "ipv6_addr",
                   elements=frozenset((addr(a), None) for a in g.peers if a.version == v)) for v in (4, 6)]
    sets.append(NftSet(name="syncports", key_type="inet_service", elements=frozenset((str(p), None) for p in g.ports)))
    # new traffic only (a reply to one of the member's own flows is never sync), and not to an EIP (outside traffic
    # to an EIP is `drop_eip_unsolicited`'s)
    ports = "@syncports"
    rules = (f"\t\tmeta nfproto ipv4 udp dport {ports} ip daddr != @eips4 ip saddr != @syncpeers4 ct state new,invalid "
             "counter name drop_sync_foreign drop\n"
             f"\t\tmeta nfproto ipv6 udp dport {ports} ip6 daddr != @eips6 ip6 saddr != @syncpeers6 "
             "ct state new,invalid counter name drop_sync_foreign drop\n")
    return sets, rules, f"\t\tct state new ct event set {SYNC_EVENTS}\n"


def gateway_table(plan: GatewayPlan, variant: RulesetVariant = RulesetVariant.MODERN) -> NftTable:
    """The gateway's `inet egressgw` table (COMPAT: plus its `ip`/`ip6` NAT tables as companions; nft_variant)."""
    m = plan.marks
    base, mask = mark(m.mark_base), mark(m.mark_mask)
    c4, c6 = split_families(plan.cluster_cidrs)
    workers = {v.mark: v.node for v in plan.vteps}

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
        NftSet(name="spoofcount", key_type="mark", data_type="counter",
               elements=frozenset((mark(mk), spoofed_counter(node)) for mk, node in workers.items())),
    ]
    for v, c in ((4, c4), (6, c6)):
        sets.append(NftSet(name=f"probe{v}", key_type=fam(v), dynamic_timeout=PROBE_METER_TIMEOUT))
        sets += [
            NftSet(name=f"vteps{v}", key_type=fam(v), data_type="mark",
                   elements=frozenset((addr(t.address), mark(t.mark)) for t in plan.vteps if t.address.version == v)),
            NftSet(name=f"vtepvni{v}", key_type=f"{'ip' if v == 4 else 'ip6'} saddr . {VNI_FIELD}",
                   data_type="meta mark", typeof=True,
                   elements=frozenset((f"{addr(t.address)} . {t.vni}", mark(t.mark))
                                      for t in plan.vtep_vnis if t.address.version == v)),
            NftSet(name=f"pods{v}", key_type=f"mark . {fam(v)}",
                   elements=frozenset((f"{mark(mk)} . {addr(ip)}", None) for mk, ip in plan.pods if ip.version == v)),
            NftSet(name=f"eips{v}", key_type=fam(v),
                   elements=frozenset((addr(e), None) for e in plan.eips if e.version == v)),
            NftSet(name=f"cluster{v}", key_type=fam(v), interval=True, elements=frozenset((net(n), None) for n in c)),
            # where workers send tunnel packets: the EIPs, and the member's own address (useNodeIP endpoints)
            NftSet(name=f"tunneldst{v}", key_type=fam(v),
                   elements=frozenset((addr(a), None) for a in (*plan.eips, *((plan.uplink,) if plan.uplink else ()))
                                      if a.version == v)),
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
        # per-policy counters: pod (or pod . destination) -> the counter of its (policy, EIP, family); see
        # policy_counters
        pol = map_elements(plan.snat, v)
        sets += [
            NftSet(name=f"polpod{v}", key_type=fam(v), data_type="counter", elements=pol.pod_packets),
            NftSet(name=f"polpodc{v}", key_type=fam(v), data_type="counter", elements=pol.pod_connections),
            NftSet(name=f"polpkt{v}", key_type=f"{fam(v)} . {fam(v)}", data_type="counter", interval=True,
                   elements=pol.packets),
            NftSet(name=f"polconn{v}", key_type=f"{fam(v)} . {fam(v)}", data_type="counter", interval=True,
                   elements=pol.connections),
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
    pol4, pol6 = "ct original ip saddr . ct original ip daddr", "ct original ip6 saddr . ct original ip6 daddr"
    sync_sets, sync_input, sync_events = _sync_rules(plan)
    sets += sync_sets
    probe4 = f"update @probe4 {{ ip saddr limit rate {PROBE_RATE} }}"
    probe6 = f"update @probe6 {{ ip6 saddr limit rate {PROBE_RATE} }}"
    chains = f"""\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tmeta nfproto ipv4 udp dport @tunnel_ports ip daddr != @tunneldst4 counter name drop_tunnel_destination drop
\t\tmeta nfproto ipv6 udp dport @tunnel_ports ip6 daddr != @tunneldst6 counter name drop_tunnel_destination drop
{_source_check(plan)}\t\tudp dport @tunnel_ports meta mark set ip saddr . {VNI_FIELD} map @vtepvni4 accept
\t\tudp dport @tunnel_ports meta mark set ip6 saddr . {VNI_FIELD} map @vtepvni6 accept
\t\tudp dport @tunnel_ports ip saddr @vteps4 counter name drop_tunnel_vni drop
\t\tudp dport @tunnel_ports ip6 saddr @vteps6 counter name drop_tunnel_vni drop
\t\tudp dport @tunnel_ports counter name drop_unknown_vtep drop
\t\tudp dport @wg_ports accept
{sync_input}\t\tiifname @tunnel_links counter name drop_tunnel_to_local drop
\t\tiifname @wg_links ip6 daddr fe80::1 icmpv6 type echo-request accept
\t\tiifname @wg_links counter name drop_tunnel_to_local drop
\t\tip daddr @eips4 icmp type echo-request ip saddr @vteps4 {probe4} accept
\t\tip6 daddr @eips6 icmpv6 type echo-request ip6 saddr @vteps6 {probe6} accept
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
\t\tct direction reply ct mark & {mask} == {base} ct mark != {base} jump to_tunnel_reply
\t\tiifname @tunnel_links jump from_tunnel
\t\tiifname @wg_links jump from_wireguard
\t\toifname @tunnel_links tcp flags syn tcp option maxseg size set rt mtu
\t\toifname @wg_links tcp flags syn tcp option maxseg size set rt mtu
\t\tct mark & {mask} == {base} jump policy_accounting
\t}}
\tchain policy_accounting {{
\t\tct state new ct direction original meta nfproto ipv4 counter name ct original ip saddr map @polpodc4
\t\tct state new ct direction original meta nfproto ipv6 counter name ct original ip6 saddr map @polpodc6
\t\tct state new ct direction original meta nfproto ipv4 counter name {pol4} map @polconn4
\t\tct state new ct direction original meta nfproto ipv6 counter name {pol6} map @polconn6
\t\tmeta nfproto ipv4 counter name ct original ip saddr map @polpod4 return
\t\tmeta nfproto ipv6 counter name ct original ip6 saddr map @polpod6 return
\t\tmeta nfproto ipv4 counter name {pol4} map @polpkt4
\t\tmeta nfproto ipv6 counter name {pol6} map @polpkt6
\t}}
\tchain from_wireguard {{
\t\tip daddr @cluster4 counter name drop_cluster_destination drop
\t\tip6 daddr @cluster6 counter name drop_cluster_destination drop
\t\tmeta nfproto ipv4 ip saddr . ip daddr != @snat4 ip saddr . ip daddr != @masq4 counter name drop_unselected drop
\t\tmeta nfproto ipv6 ip6 saddr . ip6 daddr != @snat6 ip6 saddr . ip6 daddr != @masq6 counter name drop_unselected drop
\t\tct state new ct mark set {base}
{sync_events}\t}}
\tchain to_tunnel_reply {{
\t\tmeta nfproto ipv4 meta mark . ip daddr != @pods4 counter name drop_unsteered_reply drop
\t\tmeta nfproto ipv6 meta mark . ip6 daddr != @pods6 counter name drop_unsteered_reply drop
\t}}
\tchain from_tunnel {{
\t\tmeta nfproto ipv4 meta mark . ip saddr != @pods4 jump spoofed
\t\tmeta nfproto ipv6 meta mark . ip6 saddr != @pods6 jump spoofed
\t\tip daddr @cluster4 counter name drop_cluster_destination drop
\t\tip6 daddr @cluster6 counter name drop_cluster_destination drop
\t\tmeta nfproto ipv4 ip saddr . ip daddr != @snat4 ip saddr . ip daddr != @masq4 counter name drop_unselected drop
\t\tmeta nfproto ipv6 ip6 saddr . ip6 daddr != @snat6 ip6 saddr . ip6 daddr != @masq6 counter name drop_unselected drop
\t\tct state new ct mark set meta mark
{sync_events}\t}}
\tchain spoofed {{
\t\tcounter name meta mark map @spoofcount
\t\tcounter name drop_spoofed drop
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
    counters |= {spoofed_counter(node) for node in workers.values()}
    if plan.sync_guard is not None:
        counters.add("drop_sync_foreign")
    counters |= set(counter_labels(plan.snat))
    table = NftTable(role="gateway", chains=chains, sets=tuple(sets), counters=frozenset(counters))
    return _compat(table, base=base, mask=mask) if variant is RulesetVariant.COMPAT else table


# ----- the compat variant (nft_variant): no concatenated interval sets, no typeof, no NAT in the inet table -----


def _fam(v: int) -> tuple[str, str]:
    """(nft address type, payload protocol) of an IP version."""
    return ("ipv4_addr", "ip") if v == 4 else ("ipv6_addr", "ip6")


def _compat_rules(v: int) -> dict[str, str]:
    """The modern rules of one family and their compat replacements (pod lookups via verdict maps)."""
    _, ip = _fam(v)
    nf = f"meta nfproto ipv{v}"
    pol = f"ct original {ip} saddr . ct original {ip} daddr"
    return {
        f"\t\tudp dport @tunnel_ports meta mark set {ip} saddr . {VNI_FIELD} map @vtepvni{v} accept\n":
            f"\t\tudp dport @tunnel_ports {ip} saddr vmap @vtepvni{v}\n",
        f"\t\tct state new ct direction original {nf} counter name {pol} map @polconn{v}\n":
            f"\t\tct state new ct direction original {nf} ct original {ip} saddr vmap @polconn{v}\n",
        f"\t\t{nf} counter name {pol} map @polpkt{v}\n": f"\t\t{nf} ct original {ip} saddr vmap @polpkt{v}\n",
        f"\t\t{nf} {ip} saddr . {ip} daddr != @snat{v} {ip} saddr . {ip} daddr != @masq{v} counter name "
        "drop_unselected drop\n":
            f"\t\t{nf} {ip} saddr != @selpods{v} counter name drop_unselected drop\n\t\t{nf} {ip} saddr vmap @sel{v}\n",
    }


def _without_chain(chains: str, name: str) -> str:
    start = chains.index(f"\tchain {name} {{\n")
    end = chains.index("\n\t}", start) + len("\n\t}")
    return chains[:start].rstrip("\n") + chains[end:]


def _compat(table: NftTable, *, base: str, mask: str) -> NftTable:
    chains = _without_chain(table.chains, "postrouting") + "\n"
    for v in (4, 6):
        for old, new in _compat_rules(v).items():
            if old not in chains:
                raise AssertionError(f"compat rendering: rule not found: {old.strip()}")
            chains = chains.replace(old, new)
    keep = [s for s in table.sets if not s.name.startswith(("vtepvni", "polpkt", "polconn", "snat", "masq"))]
    sets: list[NftSet] = list(keep)
    groups: list[str] = []
    companions: list[NftTable] = []
    for v in (4, 6):
        key_type, ip = _fam(v)
        # VXLAN admission: VTEP address -> its chain of (VNI -> worker mark) checks
        names, vnis = source_groups(f"vtepvni{v}", ((src, (int(vni), m)) for k, m in table.set(f"vtepvni{v}").elements
                                                     for src, vni in (split_concat(k),)))
        sets.append(NftSet(name=f"vtepvni{v}", key_type=key_type, data_type="verdict", elements=jump_elements(names)))
        for name in sorted(vnis):
            lines = [f"\t\t{VNI_FIELD} {vni} meta mark set {m} accept" for vni, m in sorted(vnis[name], key=str)]
            groups.append(f"\tchain {name} {{\n" + "\n".join(lines) + "\n\t}")
        # per-policy counters: pod -> its group's destination -> counter map
        for prefix in ("polconn", "polpkt"):
            counted = table.set(f"{prefix}{v}").elements
            names, members = source_groups(f"{prefix}{v}", ((src, (dst, c)) for k, c in counted
                                                            for src, dst in (split_concat(k),)))
            sets.append(NftSet(name=f"{prefix}{v}", key_type=key_type, data_type="verdict",
                               elements=jump_elements(names)))
            for name in sorted(members):
                sets.append(NftSet(name=name, key_type=key_type, data_type="counter", interval=True,
                                   elements=frozenset(members[name])))
                groups.append(f"\tchain {name} {{\n\t\tcounter name ct original {ip} daddr map @{name}\n\t}}")
        # selection: pod -> its group's destinations (SNAT'ed or masqueraded); anything else is unselected
        snat, masq = table.set(f"snat{v}").elements, table.set(f"masq{v}").elements
        pairs = [(*split_concat(k), e) for k, e in snat] + [(*split_concat(k), None) for k, _ in masq]
        names, dsts = source_groups(f"sel{v}", ((src, dst) for src, dst, _ in pairs))
        sets.append(NftSet(name=f"selpods{v}", key_type=key_type, elements=frozenset((p, None) for p in names)))
        sets.append(NftSet(name=f"sel{v}", key_type=key_type, data_type="verdict", elements=jump_elements(names)))
        for name in sorted(dsts):
            sets.append(NftSet(name=name, key_type=key_type, interval=True,
                               elements=frozenset((d, None) for d in dsts[name])))
            groups.append(f"\tchain {name} {{\n\t\t{ip} daddr != @{name} counter name drop_unselected drop\n\t}}")
        companions.append(_nat_table(v, pairs, base=base, mask=mask))
    chains = "\n".join([chains.rstrip("\n"), *groups])
    return NftTable(role="gateway", chains=chains, sets=tuple(sets), counters=table.counters, marker=True,
                    companions=tuple(companions))


def _nat_table(v: int, pairs: list[tuple[str, str, str | None]], *, base: str, mask: str) -> NftTable:
    """`ip`/`ip6 egressgw`: the SNAT of one family (pod -> its group's chain: masquerade, or SNAT to the EIP of the
    destination); a marked flow with no entry is dropped and counted (`drop_no_snat`, summed over the tables)."""
    key_type, ip = _fam(v)
    names, members = source_groups(f"nat{v}", ((src, (dst, eip or "")) for src, dst, eip in pairs))
    sets = [NftSet(name=f"snat{v}", key_type=key_type, data_type="verdict", elements=jump_elements(names))]
    groups: list[str] = []
    for name in sorted(members):
        masq = frozenset((d, None) for d, e in members[name] if not e)
        snat = frozenset((d, e) for d, e in members[name] if e)
        rules = []
        if masq:
            sets.append(NftSet(name=f"{name}_m", key_type=key_type, interval=True, elements=masq))
            rules.append(f"\t\t{ip} daddr @{name}_m masquerade")
        if snat:
            sets.append(NftSet(name=name, key_type=key_type, data_type=key_type, interval=True, elements=snat))
            rules.append(f"\t\tsnat to {ip} daddr map @{name}")
        groups.append(f"\tchain {name} {{\n" + "\n".join(rules) + "\n\t}")
    chains = "\n".join([f"""\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat - 10; policy accept;
\t\tct mark & {mask} != {base} return
\t\t{ip} saddr vmap @snat{v}
\t\tcounter name drop_no_snat drop
\t}}""", *groups])
    return NftTable(role=f"gateway-nat{v}", family=ip, marker=True, chains=chains, sets=tuple(sets),
                    counters=frozenset({"drop_no_snat"}))
