"""The worker planner (pure): Intent + this node -> the complete desired data path of one worker.

What a worker does: traffic from a selected local pod IP toward one of its (disjoint) destinations gets a mark in
nftables (one interval map lookup keyed by pod IP . destination - the per-packet cost does not grow with the number
of policies); `ip rule fwmark` sends it to the route table of its tunnel endpoint, whose default route encapsulates
it in VXLAN toward the endpoint = the EIP, so the upstream routers' choice of gateway carries it. Cluster-internal
destinations are never steered (checked before the map). Steered packets bypass the CNI's masquerade by an
identity SNAT binding in a nat chain that runs before the CNI's.

Endpoint slot i has mark base|i, table table_base+i, rule priority rule_priority_base+1+i. The first rule of the
range is a gate (`not fwmark base/mask goto rule_priority_base+999`, a `nop`): the node's unmarked traffic skips
our per-endpoint rules. The rule at rule_priority_base+1 (`iif lo fwmark base/mask lookup main`) routes the VXLAN
packet itself, which keeps the inner packet's mark, by the main table (else it would loop back into the tunnel).

When a gateway instance has no alive member: FailClosed (default) marks the traffic with the drop mark (counted
and dropped), FailOpen leaves it unsteered (it leaves with the node IP).

Source validation (`SourceValidation`, docs/datapath.md "Source binding"): steering matches on the source address,
so a steered packet must also come from the interface that owns that address, else any pod of the node could send
with a selected pod's IP (raw socket) and leave with the EIP. Routed pod interfaces (a /32 or /128 route per pod)
are checked by a strict reverse-path lookup; pods on a Linux bridge by their (pod IP, bridge port) binding, which the
applier discovers in the pods' network namespaces (`appliance.datapath.apply.pod_interfaces`) and `check_sources`
turns into the bridge table's elements. Discovery is imperative; everything here is pure.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network

from appliance.core.intent import GatewayInstance, Intent, Steering
from appliance.core.model import IPAddress, IPNetwork, NoGatewayAction, PolicyRef, TunnelType
from appliance.datapath.plan.kernel_model import MAIN_TABLE, Encap, KernelState, Neighbour, Route, Rule, Sysctl
from appliance.datapath.plan.tunnel import (
    GATEWAY_MAC,
    GATEWAY_NH4,
    GATEWAY_NH6,
    WORKER_MAC,
    WORKER_NH4,
    MarkSettings,
    add_disjoint,
    addr_token,
    assign_slots,
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

#: at most this many tunnel endpoints per worker: one rule each inside the 1000-wide priority range, which also
#: holds the gate (base), the loop guard (base + 1) and the gate's target (base + 999)
MAX_ENDPOINTS = 997


class SkipReason(enum.StrEnum):
    #: a WireGuard instance whose device the WireGuard planner did not (yet) provide
    NO_TUNNEL_DEVICE = "NoTunnelDevice"
    NO_ENDPOINT_FOR_UNDERLAY = "NoEndpointForUnderlayFamily"
    NO_GATEWAY_FAIL_OPEN = "NoGatewayFailOpen"
    OVERLAPPING_DESTINATION = "OverlappingDestination"
    #: a steered pod IP found on no pod interface of this node (strict: its steered traffic is dropped; rpf: steered
    #: with the reverse-path check only)
    SOURCE_BINDING_UNKNOWN = "SourceBindingUnknown"
    #: a steered pod IP configured on two pod interfaces (a pod claims another pod's address): treated as unknown
    SOURCE_BINDING_CONFLICT = "SourceBindingConflict"
    #: a steered pod IP whose host-side interface is enslaved to something that is not a Linux bridge (OVS...): its
    #: port cannot be checked by the bridge table; treated as unknown
    SOURCE_BINDING_UNENFORCEABLE = "SourceBindingUnenforceable"
    #: more tunnel endpoints than the mark layout has slots (`marks.slot_mask`): the endpoints beyond it (in
    #: address order) are not steered to; widen the slot mask where the node's CNI leaves the bits free
    ENDPOINT_SLOTS_EXHAUSTED = "EndpointSlotsExhausted"


#: the skips `check_sources` decides (the agent refreshes them on every pass, also when the plan is not redone)
SOURCE_SKIPS = frozenset({SkipReason.SOURCE_BINDING_UNKNOWN, SkipReason.SOURCE_BINDING_CONFLICT,
                          SkipReason.SOURCE_BINDING_UNENFORCEABLE})


class SourceValidation(enum.StrEnum):
    """How a worker checks that a steered packet comes from the pod that owns its source address."""

    #: reverse-path check + bridge-port binding; a steered pod IP without a discovered binding is not allowed to
    #: leave with the EIP (its steered traffic is dropped and counted, `drop_source_unbound`)
    STRICT = "strict"
    #: reverse-path check + the bindings that were discovered; a pod IP without one is still steered (on a bridge,
    #: the CNI's own anti-spoofing is then what protects the EIP)
    RPF = "rpf"
    #: no check (benchmarks of the checks' cost; a CNI that enforces source addresses itself)
    OFF = "off"


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceBinding:
    """A pod address and the host-side interface it lives behind (discovered in the pod's network namespace).

    `bridge` is the Linux bridge the interface is a port of; "" for a routed interface (own /32 or /128 route);
    None when the interface is enslaved to something else (an OVS datapath...), where no port check is possible.
    """

    pod_ip: IPAddress
    interface: str
    bridge: str | None = ""

    def order(self) -> tuple[int, int, str, str]:
        """Sort key (addresses of both families in one list)."""
        return self.pod_ip.version, int(self.pod_ip), self.interface, self.bridge or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceCheck:
    """What `check_sources` decided for this node's steered pod IPs."""

    #: bindings on a bridge port: the bridge table drops a packet with this source from any other port
    bridged: tuple[SourceBinding, ...] = ()
    #: strict mode: steered pod IPs without a usable binding (their steered traffic is dropped)
    unbound: tuple[IPAddress, ...] = ()
    skipped: tuple[Skip, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    #: MTU of the underlay interface (the tunnel MTU is derived from it)
    underlay_mtu: int = 1500
    #: the node's override of the inner MTU (wins over TunnelSpec.mtu)
    tunnel_mtu: int | None = None
    marks: MarkSettings = field(default_factory=MarkSettings)
    #: what a steered packet's source is checked against (see `SourceValidation`)
    source_validation: SourceValidation = SourceValidation.STRICT


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Endpoint:
    """One tunnel endpoint this worker sends to (an EIP, or a member address for useNodeIP) and its slot.

    VXLAN: (address, vni, port), routed by `encap`; WireGuard: `device` set (vni = port = 0), routed `dev device`.
    """

    slot: int
    address: IPAddress
    vni: int
    port: int
    device: str = ""
    mark: int
    table: int
    priority: int
    counter: str


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class SteerEntry:
    """nft map element: (pod_ip . destination) -> mark (an endpoint's mark, or the drop mark)."""

    pod_ip: IPAddress
    destination: IPNetwork
    mark: int
    #: the steering's policy and EIP (None: useNodeIP), for the per-policy drop counters (`plan.policy_drops`)
    policy: PolicyRef | None = None
    eip: IPAddress | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Skip:
    pod_ip: IPAddress
    policy: str
    reason: SkipReason


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPlan:
    node: str
    underlay: IPAddress
    kernel: KernelState
    endpoints: tuple[Endpoint, ...]
    #: sorted by (family, pod IP, destination)
    steer: tuple[SteerEntry, ...]
    cluster_cidrs: tuple[IPNetwork, ...]
    tunnel_links: tuple[str, ...]
    tunnel_ports: tuple[int, ...]
    marks: MarkSettings
    skipped: tuple[Skip, ...] = ()
    source_validation: SourceValidation = SourceValidation.STRICT
    #: bridge-port bindings of steered pod IPs (rendered into the bridge table, `worker_nft.worker_bridge_table`)
    bridged: tuple[SourceBinding, ...] = ()
    #: strict mode: steered pod IPs without a usable binding
    unbound: tuple[IPAddress, ...] = ()
    #: every address a gateway takes tunnel packets on (every instance's EIPs and members, both families, whatever
    #: the underlay family): a pod's UDP to a tunnel port there is dropped (it would be decapsulated as this node)
    tunnel_guard: tuple[IPAddress, ...] = ()

    @property
    def tunnel_devices(self) -> tuple[str, ...]:
        """Every device steered traffic leaves by and its replies come back on: VXLAN links and WireGuard devices."""
        return tuple(sorted({*self.tunnel_links, *(e.device for e in self.endpoints if e.device)}))


def _no_gateway(instance: GatewayInstance | None, steering: Steering) -> bool:
    return instance is None or not instance.alive or not steering.endpoints


def _action(instance: GatewayInstance | None) -> NoGatewayAction:
    return instance.failover.no_gateway_action if instance is not None else NoGatewayAction.FAIL_CLOSED


EndpointKey = tuple[IPAddress, int, int, str]


def plan_worker(
    intent: Intent,
    *,
    node: str,
    underlay: IPAddress,
    settings: WorkerSettings,
    wireguard_devices: Mapping[str, str] | None = None,
    source_bindings: Sequence[SourceBinding] | None = None,
) -> WorkerPlan:
    """The whole desired data path of worker `node` whose underlay (tunnel source) address is `underlay`.

    `wireguard_devices`: instance name -> WireGuard device (`WireguardPlan.route_devices`); steerings of WireGuard
    instances are steered like VXLAN ones, their endpoint table routing `dev <device>` instead of encapsulating.
    `source_bindings`: the pod interfaces discovered on this node (`check_sources`); None = not discovered (the
    caller checks no bindings: only the reverse-path check applies, unless source validation is off).
    """
    wg = dict(wireguard_devices or {})
    marks = settings.marks
    version = underlay.version
    skipped: list[Skip] = []
    # (steering, endpoint or None = drop)
    chosen: list[tuple[Steering, EndpointKey | None]] = []
    for s in sorted(intent.steerings, key=steering_key):
        if s.node != node:
            continue
        instance = intent.instance(s.gateway)
        tunnel = instance.tunnel if instance is not None else None
        device = ""
        if tunnel is not None and tunnel.type is TunnelType.WIREGUARD:
            device = wg.get(s.gateway, "")
            if not device:
                skipped.append(Skip(pod_ip=s.pod_ip, policy=str(s.policy), reason=SkipReason.NO_TUNNEL_DEVICE))
                continue
        if _no_gateway(instance, s):
            if _action(instance) is NoGatewayAction.FAIL_OPEN:
                skipped.append(Skip(pod_ip=s.pod_ip, policy=str(s.policy), reason=SkipReason.NO_GATEWAY_FAIL_OPEN))
            else:
                chosen.append((s, None))
            continue
        # the instance's tunnel family (`spec.tunnel.family`), else this worker's underlay family: the same family
        # the gateway encapsulates the replies in (`plan.gateway`)
        endpoint = pick_family(s.endpoints, instance.tunnel.version(version) if instance is not None else version)
        if device and endpoint is None:  # WireGuard: the device knows its peer; the address only names the slot
            endpoint = s.endpoints[0]
        if endpoint is None or instance is None or tunnel is None:
            skipped.append(Skip(pod_ip=s.pod_ip, policy=str(s.policy), reason=SkipReason.NO_ENDPOINT_FOR_UNDERLAY))
            continue
        if device:
            chosen.append((s, (endpoint, 0, 0, device)))
        else:
            chosen.append((s, (endpoint, worker_vni(instance, node), tunnel.udp_port, "")))

    endpoint_keys = {ep for _, ep in chosen if ep is not None}
    capacity = min(MAX_ENDPOINTS, marks.capacity)
    if len(endpoint_keys) > capacity:
        # a full layout must not fail the whole plan: keep the first endpoints (stable order), skip the others' pods
        endpoint_keys = set(sorted(endpoint_keys, key=_endpoint_order)[:capacity])
        for s, ep in chosen:
            if ep is not None and ep not in endpoint_keys:
                skipped.append(Skip(pod_ip=s.pod_ip, policy=str(s.policy), reason=SkipReason.ENDPOINT_SLOTS_EXHAUSTED))
        chosen = [(s, ep) for s, ep in chosen if ep is None or ep in endpoint_keys]
    slots = _slots(endpoint_keys, capacity=capacity)
    endpoints: list[Endpoint] = []
    for key in sorted(endpoint_keys, key=lambda k: slots[k]):
        address, vni, port, device = key
        slot = slots[key]
        endpoints.append(
            Endpoint(
                slot=slot, address=address, vni=vni, port=port, device=device, mark=marks.mark(slot),
                table=marks.table_base + slot, priority=marks.rule_priority_base + 1 + slot,
                counter=f"ep_{addr_token(address)}_{vni}",
            )
        )
    by_key = {(e.address, e.vni, e.port, e.device): e for e in endpoints}

    steer: list[tuple[IPAddress, IPNetwork, int, Steering]] = []
    accepted: dict[tuple[int, int], list[IPNetwork]] = {}
    for s, ep in chosen:
        mark = marks.drop_mark if ep is None else by_key[ep].mark
        pod = (s.pod_ip.version, int(s.pod_ip))
        for dest in s.destinations:
            if dest.version != pod[0]:
                continue
            if add_disjoint(accepted, pod, dest):
                steer.append((s.pod_ip, dest, mark, s))
            else:
                skipped.append(Skip(pod_ip=s.pod_ip, policy=str(s.policy), reason=SkipReason.OVERLAPPING_DESTINATION))
    entries = tuple(
        sorted(
            (SteerEntry(pod_ip=p, destination=d, mark=m, policy=st.policy, eip=st.eip) for p, d, m, st in steer),
            key=lambda e: (e.pod_ip.version, int(e.pod_ip), net_key(e.destination)),
        )
    )
    ports = sorted({e.port for e in endpoints if not e.device})
    kernel = _kernel(endpoints, ports, underlay=underlay, settings=settings, intent=intent)
    sources = check_sources(intent, node=node, mode=settings.source_validation, bindings=source_bindings)
    return WorkerPlan(
        node=node, underlay=underlay, kernel=kernel, endpoints=tuple(endpoints), steer=entries,
        cluster_cidrs=sorted_nets(intent.cluster_cidrs), tunnel_links=tuple(link_name(p) for p in ports),
        tunnel_ports=tuple(ports), marks=marks, skipped=tuple(skipped) + sources.skipped,
        source_validation=settings.source_validation, bridged=sources.bridged, unbound=sources.unbound,
        tunnel_guard=tunnel_guard(intent),
    )


def tunnel_guard(intent: Intent) -> tuple[IPAddress, ...]:
    """Every gateway-side tunnel address of the cluster (pure): the instances' EIPs, their members' addresses and
    every steering's endpoints, both families, sorted."""
    found: set[IPAddress] = set()
    for inst in intent.instances:
        found.update(inst.eips)
        found.update(m.address for m in inst.members)
    for s in intent.steerings:
        found.update(s.endpoints)
    return tuple(sorted(found, key=lambda a: (a.version, int(a))))


def check_sources(
    intent: Intent, *, node: str, mode: SourceValidation, bindings: Iterable[SourceBinding] | None
) -> SourceCheck:
    """Match this node's steered pod IPs with the discovered pod interfaces (pure; the agent also calls it on pod
    churn passes to refresh the bridge table without a full plan).

    A pod IP on one bridge port becomes a bridge binding; on one routed interface it needs nothing more (the
    reverse-path check binds it); on none, on two, or behind a non-bridge master it is unknown: skipped with a
    reason, and in strict mode listed in `unbound`. `bindings` None (not discovered) or mode off: no decision.
    """
    if mode is SourceValidation.OFF or bindings is None:
        return SourceCheck()
    found: dict[IPAddress, list[SourceBinding]] = {}
    for b in bindings:
        found.setdefault(b.pod_ip, []).append(b)
    policy: dict[IPAddress, str] = {}
    for s in sorted(intent.steerings, key=steering_key):
        if s.node == node:
            policy.setdefault(s.pod_ip, str(s.policy))
    bridged: list[SourceBinding] = []
    unbound: list[IPAddress] = []
    skipped: list[Skip] = []
    for ip in sorted(policy, key=lambda a: (a.version, int(a))):
        here = sorted(set(found.get(ip, ())), key=SourceBinding.order)
        reason: SkipReason | None = None
        if not here:
            reason = SkipReason.SOURCE_BINDING_UNKNOWN
        elif len(here) > 1:
            reason = SkipReason.SOURCE_BINDING_CONFLICT
        elif here[0].bridge is None:
            reason = SkipReason.SOURCE_BINDING_UNENFORCEABLE
        elif here[0].bridge:
            bridged.append(here[0])
        if reason is not None:
            skipped.append(Skip(pod_ip=ip, policy=policy[ip], reason=reason))
            if mode is SourceValidation.STRICT:
                unbound.append(ip)
    return SourceCheck(bridged=tuple(bridged), unbound=tuple(unbound), skipped=tuple(skipped))


def _endpoint_order(key: EndpointKey) -> tuple[int, int, int, int, str]:
    address, vni, port, device = key
    return (address.version, int(address), vni, port, device)


def _slots(keys: set[EndpointKey], *, capacity: int) -> dict[EndpointKey, int]:
    names = {f"{a}|{v}|{p}" + (f"|{d}" if d else ""): (a, v, p, d) for a, v, p, d in keys}
    by_name = assign_slots(names, capacity=capacity)
    return {names[n]: slot for n, slot in by_name.items()}


def _port_mtu(intent: Intent, port: int, settings: WorkerSettings, version: int) -> int:
    on_port = [i for i in intent.instances if i.tunnel.udp_port == port]
    # one device per port: sized for the largest overhead among the underlay families its instances use
    worst = max((i.tunnel.version(version) for i in on_port), default=version)
    return inner_mtu(underlay_mtu=settings.underlay_mtu, underlay_version=worst, node_override=settings.tunnel_mtu,
                     specified=(i.tunnel.mtu for i in on_port))


def _kernel(
    endpoints: list[Endpoint], ports: list[int], *, underlay: IPAddress, settings: WorkerSettings, intent: Intent
) -> KernelState:
    marks = settings.marks
    links = frozenset(
        tunnel_link(port=p, mac=WORKER_MAC, mtu=_port_mtu(intent, p, settings, underlay.version), address=WORKER_NH4)
        for p in ports
    )
    neighbours = frozenset(
        Neighbour(dev=link.name, ip=nh, mac=GATEWAY_MAC) for link in links for nh in (GATEWAY_NH4, GATEWAY_NH6)
    )
    routes: set[Route] = set()
    rules: set[Rule] = set()
    if endpoints:
        base = marks.rule_priority_base
        for family in (4, 6):
            # the gate: packets without our mark (all of the node's other traffic) skip our per-endpoint rules, so
            # their routing cost does not grow with the number of endpoints
            rules.add(Rule(family=family, priority=base, fwmark=marks.mark_base, mask=marks.mark_mask, invert=True,
                           goto=base + 999))
            rules.add(Rule(family=family, priority=base + 999, nop=True))
            rules.add(
                Rule(family=family, priority=base + 1, fwmark=marks.mark_base, mask=marks.mark_mask,
                     table=MAIN_TABLE, iif="lo")
            )
    for e in endpoints:
        if e.device:
            routes.add(Route(table=e.table, dst=ip_network("0.0.0.0/0"), dev=e.device))
            routes.add(Route(table=e.table, dst=ip_network("::/0"), dev=e.device))
        else:
            encap = Encap(vni=e.vni, dst=e.address)
            dev = link_name(e.port)
            routes.add(Route(table=e.table, dst=ip_network("0.0.0.0/0"), dev=dev, via=GATEWAY_NH4, encap=encap))
            routes.add(Route(table=e.table, dst=ip_network("::/0"), dev=dev, via=GATEWAY_NH6, encap=encap))
        for family in (4, 6):
            # only our bits: a CNI may set its own bits on the packet after our mark (same hook, later chain)
            rules.add(Rule(family=family, priority=e.priority, fwmark=e.mark, mask=marks.owned_mask, table=e.table))
    sysctls = frozenset(Sysctl(key=k, value=v) for link in links for k, v in tunnel_sysctls(link.name))
    return KernelState(
        links=links, neighbours=neighbours, routes=frozenset(routes), rules=frozenset(rules), sysctls=sysctls
    )
