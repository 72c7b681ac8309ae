"""The resolved intent: which pod IP leaves through which gateway and EIP, toward which destinations.

Produced by `appliance.policy.resolution.resolve(snapshot)` (pure); consumed by the data-path planners (worker,
gateway), the BGP announcement planner, the status writer and `egressgw explain`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from appliance.core.model import BgpSpec, FailoverSpec, IPAddress, IPNetwork, IPPool, Member, PolicyRef, TunnelSpec
from appliance.core.snapshot import Reason


class PolicyState(enum.StrEnum):
    READY = "Ready"
    PENDING = "Pending"
    INVALID = "Invalid"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyOutcome:
    """Per-policy result, for status and explain."""

    policy: PolicyRef
    state: PolicyState
    gateway: str = ""
    eip_v4: IPAddress | None = None
    eip_v6: IPAddress | None = None
    use_node_ip: bool = False
    reason: Reason | None = None
    message: str = ""
    #: number of pod IPs this policy currently steers
    selected_ips: int = 0


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Steering:
    """One selected pod IP's egress rule: traffic from `pod_ip` to `destinations` leaves via `gateway` as `eip`.

    `destinations` are disjoint from every higher-precedence steering of the same pod IP (overlaps are already
    resolved), and are the policy's destSubnet of the pod IP's family, or 0.0.0.0/0 (::/0) for "everything
    not cluster-internal" - cluster-internal destinations are excluded by the planners with `Intent.cluster_cidrs`.
    `eip` is None for useNodeIP (the gateway member masquerades to its own uplink address).
    """

    pod_ip: IPAddress
    namespace: str
    pod: str
    node: str
    policy: PolicyRef
    gateway: str
    eip: IPAddress | None
    destinations: tuple[IPNetwork, ...]
    #: tunnel endpoints toward the gateway instance, one per family available (v4 first): the EIP itself and its
    #: partner of the other family at the same pool index (so IPv6 traffic can ride an IPv4 underlay and the
    #: reverse). For useNodeIP (eip None) the underlay address of the instance's first-ranked alive member.
    endpoints: tuple[IPAddress, ...] = ()
    #: position in the global precedence order (0 = highest precedence); deterministic
    rank: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayInstance:
    """One gateway instance as the data path and BGP see it."""

    name: str
    members: tuple[Member, ...]
    #: every EIP in use by a Ready policy of this instance (sorted); these are held and announced by each member
    eips: tuple[IPAddress, ...]
    #: eip -> member names best first (rendezvous ranking over all members, alive or not). An IPv4 and an IPv6 EIP at
    #: the same pool index share one ranking key (the index), so a dual-stack pair always has the same primary.
    ranking: tuple[tuple[IPAddress, tuple[str, ...]], ...]
    #: members whose member Lease is fresh (all members when liveness is unknown)
    alive: frozenset[str] = frozenset()
    tunnel: TunnelSpec = TunnelSpec()
    bgp: BgpSpec = BgpSpec()
    failover: FailoverSpec = FailoverSpec()
    ipv4_pool: IPPool = IPPool()
    ipv6_pool: IPPool = IPPool()
    #: the per-instance secret of its keyed VNIs (the EgressGateway's metadata.uid; docs/security.md "Keyed VNIs")
    tunnel_key: str = ""

    def rank_of(self, eip: IPAddress) -> tuple[str, ...]:
        for ip, order in self.ranking:
            if ip == eip:
                return order
        return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    steerings: tuple[Steering, ...]
    outcomes: tuple[PolicyOutcome, ...]
    instances: tuple[GatewayInstance, ...]
    #: destinations never sent to a gateway: node IPs, pod CIDRs, service CIDRs, extraCidr (both families)
    cluster_cidrs: tuple[IPNetwork, ...]

    def instance(self, name: str) -> GatewayInstance | None:
        return next((i for i in self.instances if i.name == name), None)
