"""Intents for data-path tests and benchmarks, built directly (no snapshot, no resolution), in the lab's address plan.

Why in the package: the golden-file tests, the netns integration tests and `egressgw bench datapath` all need the
same small vocabulary ("pod P on worker W selected by policy X of gateway G with EIP E toward D").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from appliance.core.intent import GatewayInstance, Intent, Steering
from appliance.core.model import (
    FailoverSpec,
    IPAddress,
    IPNetwork,
    Member,
    NoGatewayAction,
    PolicyKind,
    PolicyRef,
    TunnelSpec,
    TunnelType,
)

#: lab address plan (helpers-brief.md)
CLUSTER_CIDRS = ("100.64.0.0/16", "100.100.0.0/16", "100.127.0.0/24", "2001:db8:64::/48", "2001:db8:127::/64")
WORKERS = {"worker1": ("100.127.0.11", "2001:db8:127::11"), "worker2": ("100.127.0.12", "2001:db8:127::12")}
MEMBERS = {"gw1": "198.51.100.11", "gw2": "198.51.100.12", "gw3": "198.51.100.13"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Sel:
    """One selected pod IP: pod, node, policy name, gateway, EIP (None = useNodeIP), destinations."""

    pod_ip: str
    node: str = "worker1"
    policy: str = "p1"
    gateway: str = "gw-a"
    eip: str | None = "203.0.113.130"
    partner: str | None = None
    destinations: Sequence[str] = ()
    pod: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gw:
    name: str = "gw-a"
    members: Sequence[str] = ("gw1",)
    alive: Sequence[str] | None = None
    eips: Sequence[str] = ("203.0.113.130",)
    vni: int = 7700
    port: int | None = None
    mtu: int | None = None
    no_gateway_action: NoGatewayAction = NoGatewayAction.FAIL_CLOSED
    member_addresses: dict[str, str] = field(default_factory=dict)
    wireguard: bool = False
    #: the instance's secret (the EgressGateway's metadata.uid): its keyed VNIs derive from it
    uid: str = ""


def _everything(version: int) -> IPNetwork:
    return ip_network("0.0.0.0/0" if version == 4 else "::/0")


def build_intent(gateways: Iterable[Gw], selections: Iterable[Sel], *,
                 cluster: Sequence[str] = CLUSTER_CIDRS) -> Intent:
    instances: list[GatewayInstance] = []
    by_name: dict[str, GatewayInstance] = {}
    for g in gateways:
        members = tuple(
            sorted(Member(name=m, address=ip_address(g.member_addresses.get(m, MEMBERS.get(m, "198.51.100.99"))))
                   for m in g.members)
        )
        eips = tuple(sorted((ip_address(e) for e in g.eips), key=lambda a: (a.version, int(a))))
        inst = GatewayInstance(
            name=g.name, members=members, eips=eips,
            ranking=tuple((e, tuple(m.name for m in members)) for e in eips),
            alive=frozenset(g.members if g.alive is None else g.alive),
            tunnel=TunnelSpec(type=TunnelType.WIREGUARD if g.wireguard else TunnelType.VXLAN, vni=g.vni, port=g.port,
                              mtu=g.mtu),
            failover=FailoverSpec(no_gateway_action=g.no_gateway_action),
            tunnel_key=g.uid,
        )
        instances.append(inst)
        by_name[g.name] = inst
    steerings: list[Steering] = []
    for rank, s in enumerate(selections):
        pod_ip = ip_address(s.pod_ip)
        found = by_name.get(s.gateway)
        eip = ip_address(s.eip) if s.eip else None
        endpoints: tuple[IPAddress, ...]
        if eip is not None:
            pair = [eip] + ([ip_address(s.partner)] if s.partner else [])
            endpoints = tuple(sorted(pair, key=lambda a: a.version))
        else:
            alive = [m for m in (found.members if found else ()) if m.name in (found.alive if found else ())]
            endpoints = (alive[0].address,) if alive else ()
        dests = tuple(ip_network(d) for d in s.destinations) or (_everything(pod_ip.version),)
        steerings.append(
            Steering(
                pod_ip=pod_ip, namespace="default", pod=s.pod or f"pod-{s.pod_ip}", node=s.node,
                policy=PolicyRef(kind=PolicyKind.NAMESPACED, namespace="default", name=s.policy),
                gateway=s.gateway, eip=eip, destinations=dests, endpoints=endpoints, rank=rank,
            )
        )
    return Intent(
        steerings=tuple(steerings), outcomes=(), instances=tuple(instances),
        cluster_cidrs=tuple(ip_network(c) for c in cluster),
    )


def worker_addresses(workers: dict[str, tuple[str, ...]] | None = None) -> dict[str, tuple[IPAddress, ...]]:
    src = WORKERS if workers is None else workers
    return {n: tuple(ip_address(a) for a in addrs) for n, addrs in src.items()}


def scale_intent(*, pods: int, policies: int, eips: int, workers: int = 100,
                 node: str = "worker1", local_pods: int | None = None, pod_base: int = 80,
                 extra: Sequence[Sel] = ()) -> Intent:
    """A large intent: `pods` pod IPs spread over `policies` policies and `eips` EIPs of one gateway instance.

    `local_pods` of them run on `node` (default: pods / workers), the rest on worker-2..N. Pod IPs start at
    100.<pod_base>.0.0; `extra` selections (real pods of a testbed) come first (highest precedence).
    """
    # 203.0.113.128/25 holds 127 usable EIPs; larger benches continue in 100.120.0.0/16 (inside 100.64.0.0/10)
    eip_list = [f"203.0.113.{129 + i}" if i < 127 else f"100.120.{i >> 8}.{i & 0xFF}" for i in range(eips)]
    g = Gw(name="gw-a", members=("gw1", "gw2"), eips=tuple(eip_list))
    local = pods // workers if local_pods is None else local_pods
    sels = []
    for i in range(pods):
        pod_ip = f"100.{pod_base + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}"
        n = node if i < local else f"worker-{2 + i % max(1, workers - 1)}"
        p = i % policies
        dest = () if p % 2 == 0 else (f"203.0.113.{(p % 8) * 16}/28",)
        sels.append(Sel(pod_ip=pod_ip, node=n, policy=f"p{p}", eip=eip_list[p % len(eip_list)], destinations=dest))
    return build_intent([g], [*extra, *sels])
