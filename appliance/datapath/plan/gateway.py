"""The gateway planner (pure): Intent + this member -> the complete desired data path of one gateway member.

What a member does for every instance it belongs to: holds the instance's EIPs on `lo` (they are the tunnel
endpoints the workers send to, and the SNAT sources), decapsulates VXLAN from known workers only, forwards only
traffic of (worker, pod IP) pairs the cluster says exist and are selected for that destination, SNATs it by
(pod IP . destination) -> EIP (useNodeIP: masquerade to the uplink address), and routes the replies back through
the tunnel to the worker hosting the pod.

How a packet is bound to the worker it came from: the outer VXLAN packet is marked in the input hook with the
worker's slot (map: outer source address . VNI -> mark, the VNI being the pair's keyed VNI, `tunnel.keyed_vni`: a
known worker address with any other VNI is dropped); the mark survives decapsulation (same netns), and the forward
chain checks (mark . inner source) against the set of (worker slot . pod IP). A worker can therefore only speak for
its own pods. The conntrack mark keeps the slot; replies restore it as the packet mark, and one `ip rule fwmark`
sends them to our reply table, which holds one route per pod IP, encapsulated toward the pod's worker.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from appliance.core.intent import GatewayInstance, Intent, Steering
from appliance.core.model import IPAddress, IPNetwork, PolicyRef, TunnelType
from appliance.core.snapshot import Snapshot
from appliance.datapath.plan.kernel_model import Encap, KernelState, LocalAddress, Neighbour, Route, Rule, Sysctl
from appliance.datapath.plan.state_sync import StateSyncSettings, SyncGuard, sync_guard
from appliance.datapath.plan.tunnel import (
    GATEWAY_MAC,
    GATEWAY_MARKS,
    GATEWAY_NH4,
    WORKER_MAC,
    WORKER_NH4,
    WORKER_NH6,
    MarkSettings,
    add_disjoint,
    addr_token,
    assign_slots,
    host_network,
    inner_mtu,
    link_name,
    net_key,
    pick_family,
    sorted_nets,
    steering_key,
    tunnel_link,
    tunnel_sysctls,
    worker_vni,
)

#: worker slots live in the low 16 bits of the mark; 0xffff is the drop slot
MAX_WORKERS = 0xFFFE

#: sysctls every member needs: forwarding; mid-stream pickup and liberal TCP window tracking so connections survive
#: a failover between members (notes/lab-feasibility.md: without be_liberal a drain stalled ~470 ms)
GATEWAY_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.netfilter.nf_conntrack_tcp_loose", "1"),
    ("net.netfilter.nf_conntrack_tcp_be_liberal", "1"),
)


class TunnelSourceCheck(enum.StrEnum):
    """How the gateway checks where a VXLAN packet claiming a worker's underlay address came from (docs/security.md).

    STRICT: the route back to the outer source must leave through the interface the packet came in on (strict
    reverse path, `fib saddr . iif oif missing`): a packet from another interface (an external uplink, a second
    LAN) is dropped even when the upstream router lacks uRPF. Breaks only asymmetric topologies where a worker's
    tunnel traffic arrives on another interface than the one the gateway routes back to it (ECMP over several
    uplinks, policy routing on the underlay): use LOOSE there.
    LOOSE: the outer source must be routable at all (`fib saddr oif missing`): only bogus sources are dropped.
    OFF: no check (the outer source is still matched against the known workers).
    """

    STRICT = "strict"
    LOOSE = "loose"
    OFF = "off"


class GatewaySkipReason(enum.StrEnum):
    NOT_VXLAN = "NotVxlan"
    UNKNOWN_WORKER = "UnknownWorker"
    POD_ON_TWO_WORKERS = "PodIPOnTwoWorkers"
    OVERLAPPING_DESTINATION = "OverlappingDestination"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    #: MTU of the uplink interface (the tunnel MTU is derived from it)
    uplink_mtu: int = 1500
    #: the member's override of the inner MTU (wins over TunnelSpec.mtu)
    tunnel_mtu: int | None = None
    #: 16 slot bits (a slot per worker node); the worker's compact default would allow only 254 workers
    marks: MarkSettings = GATEWAY_MARKS
    #: the reverse-path check of a tunnel packet's outer source (config `tunnel.source_check`); strict by default:
    #: a gateway must not relay for a spoofed worker address from another interface (docs/security.md)
    source_check: TunnelSourceCheck = TunnelSourceCheck.STRICT
    #: conntrack state sync (`datapath.plan.state_sync`); None = off: no sync guard, no event selection
    state_sync: StateSyncSettings | None = None


#: with state sync on, only flows our nft rules select (`ct event set`) report conntrack events, so conntrackd
#: syncs exactly the flows this member SNATs and never forwards what it injected for a peer (`plan.state_sync`)
STATE_SYNC_SYSCTLS = (("net.netfilter.nf_conntrack_events", "0"),)


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Vtep:
    """A known worker: its underlay address and its slot mark."""

    address: IPAddress
    mark: int
    node: str


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class VtepVni:
    """What admits a tunnel packet: (a known worker's underlay address . the keyed VNI of that worker and one of
    this member's VXLAN instances) -> the worker's slot mark. One per (worker address, instance)."""

    address: IPAddress
    vni: int
    mark: int
    node: str
    instance: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SnatEntry:
    """(pod_ip . destination) -> eip; eip None = masquerade to the uplink address (useNodeIP)."""

    pod_ip: IPAddress
    destination: IPNetwork
    eip: IPAddress | None
    counter: str
    #: the policy whose steering this entry carries (per-policy counters: `datapath.plan.policy_counters`)
    policy: PolicyRef | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySkip:
    pod_ip: IPAddress
    node: str
    reason: GatewaySkipReason
    #: the policy whose steering was skipped (the status planner reports skips per policy)
    policy: PolicyRef | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayPlan:
    member: str
    kernel: KernelState
    eips: tuple[IPAddress, ...]
    vteps: tuple[Vtep, ...]
    #: (worker mark, pod IP) pairs allowed to send through the tunnel
    pods: tuple[tuple[int, IPAddress], ...]
    snat: tuple[SnatEntry, ...]
    cluster_cidrs: tuple[IPNetwork, ...]
    tunnel_links: tuple[str, ...]
    tunnel_ports: tuple[int, ...]
    #: per-EIP counter tokens (`203_0_113_130`, `nodeip` for useNodeIP): counters eip_<token> and conn_<token>
    counters: tuple[str, ...]
    marks: MarkSettings
    reply_table: int
    skipped: tuple[GatewaySkip, ...] = ()
    #: the member's own (uplink) address: useNodeIP traffic is masqueraded to it (counted as eip="nodeip")
    uplink: IPAddress | None = None
    #: this member's WireGuard interfaces and listen ports (WireGuard instances only)
    wireguard_links: tuple[str, ...] = ()
    wireguard_ports: tuple[int, ...] = ()
    source_check: TunnelSourceCheck = TunnelSourceCheck.STRICT
    #: tunnel admission: (worker address . keyed VNI) -> worker mark (sorted)
    vtep_vnis: tuple[VtepVni, ...] = ()
    #: state sync on: the sync ports and the peers allowed to send to them (`plan.state_sync.SyncGuard`)
    sync_guard: SyncGuard | None = None


def ip_key(ip: IPAddress) -> tuple[int, int]:
    return (ip.version, int(ip))


def reply_destination(pod_ip: IPAddress, pod_cidrs: Sequence[IPNetwork]) -> IPNetwork:
    """The destination of the reply route for `pod_ip`: its worker's pod CIDR when it is inside one, else the IP."""
    for c in pod_cidrs:
        if c.version == pod_ip.version and int(c.network_address) <= int(pod_ip) <= int(c.broadcast_address):
            return c
    return host_network(pod_ip)


def _add_snat(
    s: Steering,
    pod: tuple[int, int],
    snat: list[SnatEntry],
    accepted: dict[tuple[int, int], list[IPNetwork]],
    skipped: list[GatewaySkip],
) -> None:
    """SNAT entries of one steering (disjoint per pod IP, so the list never holds the same key twice)."""
    for dest in s.destinations:
        if dest.version != pod[0]:
            continue
        if not add_disjoint(accepted, pod, dest):
            skipped.append(GatewaySkip(pod_ip=s.pod_ip, node=s.node, reason=GatewaySkipReason.OVERLAPPING_DESTINATION,
                                       policy=s.policy))
            continue
        name = "nodeip" if s.eip is None else addr_token(s.eip)
        snat.append(SnatEntry(pod_ip=s.pod_ip, destination=dest, eip=s.eip, counter=name, policy=s.policy))


def tunnel_version_of(instance: GatewayInstance, *, member: str, fallback: int) -> int:
    """The underlay IP version of `instance`'s tunnels on `member`: `spec.tunnel.family`, else the family of the
    member's own address in the instance (placement already picked it by the family), else `fallback`."""
    own = next((m.address.version for m in instance.members if m.name == member), fallback)
    return instance.tunnel.version(own)


def reply_address(instance: GatewayInstance, worker: Sequence[IPAddress], version: int) -> IPAddress | None:
    """Where replies to a worker's pods are encapsulated to: its address of the tunnel family (the one it tunnels
    from). Without `spec.tunnel.family` a worker lacking that family gets its first address (as it always did);
    with it, None: the worker is not on that underlay."""
    found = pick_family(worker, version)
    if found is None and instance.tunnel.family is None and worker:
        return worker[0]
    return found


def workers_of(snapshot: Snapshot) -> dict[str, Sequence[IPAddress]]:
    """Node name -> underlay (InternalIP) addresses: the workers whose tunnels a gateway member accepts (`workers`
    of `plan_gateway`; the gateway service and the policies' status planning both take it from here)."""
    return {n.name: n.addresses for n in snapshot.nodes if n.addresses}


def plan_gateway(
    intent: Intent,
    *,
    member: str,
    workers: Mapping[str, Sequence[IPAddress]],
    settings: GatewaySettings,
    wireguard_devices: Sequence[str] = (),
    worker_pod_cidrs: Mapping[str, Sequence[IPNetwork]] | None = None,
) -> GatewayPlan:
    """The whole desired data path of gateway member `member`.

    `workers`: node name -> underlay (InternalIP) addresses, for every node (from the snapshot); only the nodes that
    host steered pods of this member's instances become known VTEPs.
    `wireguard_devices`: this member's WireGuard interfaces (from the WireGuard plan). Steerings of WireGuard
    instances get SNAT, counters and the unselected/cluster checks; WireGuard's allowed IPs bind pod IPs to worker
    keys (no VTEP mark check) and the WireGuard applier installs their return routes.
    `worker_pod_cidrs`: node name -> pod CIDRs (Node.spec.podCIDRs). A steered pod IP inside its worker's pod CIDR
    is routed back by one route for the whole CIDR (our reply table only serves marked replies of our own SNAT
    connections, so covering unsteered pods is harmless): 10k pods on 100 workers = 100 routes instead of 10k.
    Pod IPs outside (other IPAM) get a /32 (/128) route.
    """
    marks = settings.marks
    instances = [i for i in intent.instances if any(m.name == member for m in i.members)]
    own = next((m.address for i in instances for m in i.members if m.name == member), None)
    version = own.version if own is not None else 4
    vxlan = {i.name: i for i in instances if i.tunnel.type is TunnelType.VXLAN}
    # the underlay family of each instance's tunnels: `spec.tunnel.family`, else this member's own address family
    # (its address in that instance is already of the instance's family: `policy.placement.members_of`)
    tunnel_version = {i.name: tunnel_version_of(i, member=member, fallback=version) for i in vxlan.values()}

    def worker_addresses(gateway: str, node: str) -> set[IPAddress]:
        """The worker's underlay addresses this instance takes tunnel packets from: every InternalIP, or only those
        of the instance's family when it names one (a worker must not be admitted over an underlay it is not on)."""
        fam = vxlan[gateway].tunnel.family
        return {a for a in workers[node] if fam is None or a.version == fam.version}
    wg = {i.name: i for i in instances if i.tunnel.type is TunnelType.WIREGUARD} if wireguard_devices else {}
    skipped: list[GatewaySkip] = []
    steerings = [s for s in sorted(intent.steerings, key=steering_key) if s.gateway in vxlan or s.gateway in wg]
    nodes = sorted({s.node for s in steerings if s.gateway in vxlan and workers.get(s.node)})
    slots = assign_slots(nodes, capacity=min(MAX_WORKERS, marks.capacity))

    pairs = sorted({(s.gateway, s.node) for s in steerings if s.gateway in vxlan and s.node in slots})
    vteps = sorted(
        {Vtep(address=a, mark=marks.mark(slots[n]), node=n) for g, n in pairs for a in worker_addresses(g, n)},
        key=lambda v: ip_key(v.address),
    )
    vtep_vnis = sorted(
        (VtepVni(address=a, vni=worker_vni(vxlan[g], n), mark=marks.mark(slots[n]), node=n, instance=g)
         for g, n in pairs for a in worker_addresses(g, n)),
        key=lambda v: (ip_key(v.address), v.vni, v.instance),
    )
    # per-pod work is keyed by (version, int(ip)): hashing ipaddress objects dominated planning 10k pods
    pods: dict[tuple[int, int], tuple[int, IPAddress]] = {}
    pod_worker: dict[tuple[int, int], str] = {}
    snat: list[SnatEntry] = []
    routes: dict[tuple[int, int, int], Route] = {}
    cidrs = {n: tuple(c) for n, c in (worker_pod_cidrs or {}).items()}
    accepted: dict[tuple[int, int], list[IPNetwork]] = {}
    devs = {name: link_name(i.tunnel.udp_port) for name, i in vxlan.items()}
    encaps: dict[tuple[str, str], Encap] = {}
    node_mark = {n: marks.mark(slot) for n, slot in slots.items()}
    for s in steerings:
        pod = (s.pod_ip.version, int(s.pod_ip))
        if s.gateway in wg:
            _add_snat(s, pod, snat, accepted, skipped)
            continue
        if s.node not in slots:
            skipped.append(GatewaySkip(pod_ip=s.pod_ip, node=s.node, reason=GatewaySkipReason.UNKNOWN_WORKER,
                                       policy=s.policy))
            continue
        seen = pod_worker.setdefault(pod, s.node)
        if seen != s.node:
            skipped.append(GatewaySkip(pod_ip=s.pod_ip, node=s.node, reason=GatewaySkipReason.POD_ON_TWO_WORKERS,
                                       policy=s.policy))
            continue
        if pod not in pods:
            encap = encaps.get((s.gateway, s.node))
            if encap is None:
                # replies go to the worker's address of the instance's tunnel family: the one it tunnels from
                worker_addr = reply_address(vxlan[s.gateway], workers[s.node], tunnel_version[s.gateway])
                if worker_addr is None:  # the worker has no address of the instance's family: no tunnel to it
                    skipped.append(GatewaySkip(pod_ip=s.pod_ip, node=s.node, reason=GatewaySkipReason.UNKNOWN_WORKER,
                                               policy=s.policy))
                    continue
                encap = encaps[(s.gateway, s.node)] = Encap(vni=worker_vni(vxlan[s.gateway], s.node),
                                                            dst=worker_addr)
            pods[pod] = (node_mark[s.node], s.pod_ip)
            dst = reply_destination(s.pod_ip, cidrs.get(s.node, ()))
            rkey = (dst.version, int(dst.network_address), dst.prefixlen)
            if rkey not in routes:
                routes[rkey] = Route(
                    table=marks.table_base, dst=dst, dev=devs[s.gateway],
                    via=WORKER_NH4 if pod[0] == 4 else WORKER_NH6, encap=encap,
                )
        _add_snat(s, pod, snat, accepted, skipped)

    eips = sorted({e for i in instances for e in i.eips}, key=ip_key)
    ports = sorted({i.tunnel.udp_port for i in vxlan.values()})
    # one device per port serves every instance: size it for the largest overhead (IPv6) when any instance uses it
    mtu_version = max(tunnel_version.values(), default=version)
    mtu = inner_mtu(underlay_mtu=settings.uplink_mtu, underlay_version=mtu_version, node_override=settings.tunnel_mtu,
                    specified=(i.tunnel.mtu for i in vxlan.values()))
    links = frozenset(tunnel_link(port=p, mac=GATEWAY_MAC, mtu=mtu, address=GATEWAY_NH4) for p in ports)
    neighbours = frozenset(
        Neighbour(dev=link.name, ip=nh, mac=WORKER_MAC) for link in links for nh in (WORKER_NH4, WORKER_NH6)
    )
    rules = frozenset(
        Rule(family=f, priority=marks.rule_priority_base, fwmark=marks.mark_base, mask=marks.mark_mask,
             table=marks.table_base)
        for f in (4, 6)
        if links
    )
    sysctls = {Sysctl(key=k, value=v) for k, v in GATEWAY_SYSCTLS} if links or wg else set()
    sysctls |= {Sysctl(key=k, value=v) for link in links for k, v in tunnel_sysctls(link.name)}
    guard = sync_guard(intent, member=member, settings=settings.state_sync)
    if guard is not None and (links or wg):
        sysctls |= {Sysctl(key=k, value=v) for k, v in STATE_SYNC_SYSCTLS}
    kernel = KernelState(
        links=links, addresses=frozenset(LocalAddress(ip=e) for e in eips), neighbours=neighbours,
        routes=frozenset(routes.values()), rules=rules, sysctls=frozenset(sysctls),
    )
    entries = tuple(sorted(snat, key=lambda e: (e.pod_ip.version, int(e.pod_ip), net_key(e.destination))))
    counters = sorted({e.counter for e in entries} | {addr_token(e) for e in eips})
    return GatewayPlan(
        member=member, kernel=kernel, eips=tuple(eips), vteps=tuple(vteps),
        pods=tuple(pods[k] for k in sorted(pods, key=lambda k: (k[0], pods[k][0], k[1]))), snat=entries,
        cluster_cidrs=sorted_nets(intent.cluster_cidrs), tunnel_links=tuple(link_name(p) for p in ports),
        tunnel_ports=tuple(ports), counters=tuple(counters), marks=marks, reply_table=marks.table_base,
        uplink=own,
        wireguard_links=tuple(sorted(wireguard_devices)) if wg else (),
        wireguard_ports=tuple(sorted({p for i in wg.values() for p in (i.tunnel.udp_port, i.tunnel.udp_port + 1)})),
        skipped=tuple(skipped), source_check=settings.source_check, vtep_vnis=tuple(vtep_vnis),
        sync_guard=guard,
    )


#: what one pod IP's traffic is bound to on a gateway member: the pod IP, the worker node(s) ("" for WireGuard),
#: then the (instance, EIP as (version, int) or None for useNodeIP, destination as (int, prefix length)) triples
PodBinding = tuple[IPAddress, str, tuple[tuple[str, tuple[int, int] | None, tuple[int, int]], ...]]
#: pod IP as (version, int): hashing ipaddress objects dominated this at 10k pods
PodKey = tuple[int, int]


def pod_bindings(intent: Intent, *, member: str) -> dict[PodKey, PodBinding]:
    """For each pod IP steered to one of `member`'s instances: where its traffic comes from and leaves as.

    Two passes comparing their bindings find the pod IPs whose steering on this member ended, started, or moved
    (another EIP, destination, worker or instance): their conntrack entries must go (docs/datapath.md, "Steering
    changes and existing flows"). Linear in the steerings, with integer keys.
    """
    mine = {i.name: i.tunnel.type for i in intent.instances if any(m.name == member for m in i.members)}
    nodes: dict[PodKey, set[str]] = {}
    ips: dict[PodKey, IPAddress] = {}
    out: dict[PodKey, list[tuple[str, tuple[int, int] | None, tuple[int, int]]]] = {}
    for s in intent.steerings:
        kind = mine.get(s.gateway)
        if kind is None:
            continue
        key = (s.pod_ip.version, int(s.pod_ip))
        ips[key] = s.pod_ip
        nodes.setdefault(key, set()).add(s.node if kind is TunnelType.VXLAN else "")
        eip = None if s.eip is None else (s.eip.version, int(s.eip))
        out.setdefault(key, []).extend(
            (s.gateway, eip, (int(d.network_address), d.prefixlen)) for d in s.destinations
        )
    return {
        k: (ips[k], ",".join(sorted(nodes[k])), tuple(sorted(v, key=lambda t: (t[0], t[1] or (0, 0), t[2]))))
        for k, v in out.items()
    }


def changed_bindings(old: Mapping[PodKey, PodBinding], new: Mapping[PodKey, PodBinding]) -> frozenset[IPAddress]:
    """Pod IPs whose binding differs between two passes (steering started, ended or moved)."""
    return frozenset(
        (old.get(k) or new[k])[0] for k in old.keys() | new.keys() if old.get(k) != new.get(k)
    )
