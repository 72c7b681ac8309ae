"""Pure rendering of a worker plan into our nftables table: steering (prerouting), tunnel guards (forward), the
identity SNAT that keeps the CNI's masquerade off steered packets (postrouting). See docs/datapath.md."""

from __future__ import annotations

from appliance.datapath.plan.nft_rendering import NftSet, NftTable, addr, mark, net, split_families
from appliance.datapath.plan.worker import WorkerPlan

#: drop counters by reason (metric label `reason` = the name without `drop_`)
WORKER_DROPS = ("drop_no_gateway", "drop_pod_tunnel", "drop_unsteered_flow")


def worker_table(plan: WorkerPlan) -> NftTable:
    m = plan.marks
    base, mask = mark(m.mark_base), mark(m.mark_mask)
    c4, c6 = split_families(plan.cluster_cidrs)
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
