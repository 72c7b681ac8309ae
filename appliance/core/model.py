"""The typed egressgw model: the egressgw.io API objects and the cluster objects planners need.

Everything here is pure data: frozen, slotted, keyword-only dataclasses with `ipaddress` types, tuples sorted where
order carries no meaning (so equality and rendering are deterministic). Raw Kubernetes payloads are converted into
these types once, at the edge (`appliance.api.manifests`), after validation (`appliance.api.validation`).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import NewType

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

GROUP = "egressgw.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Namespace label naming the namespace's default EgressGateway.
DEFAULT_GATEWAY_LABEL = "egressgw.io/default-gateway"
#: Node annotation carrying the node's WireGuard public key (base64).
WIREGUARD_KEY_ANNOTATION = "egressgw.io/wireguard-public-key"
#: Lease label marking a gateway appliance outside the cluster; the value is the EgressGateway name.
APPLIANCE_LEASE_LABEL = "egressgw.io/gateway"
#: Lease annotation with the appliance's underlay (tunnel) address.
APPLIANCE_ADDRESS_ANNOTATION = "egressgw.io/underlay-address"
#: maintenance drain requested through the API, on a member's Node or on an appliance's member Lease: the value is the
#: operator's reason; while it is present the member withdraws (appliance.core.maintenance)
DRAIN_ANNOTATION = "egressgw.io/drain"

NodeName = NewType("NodeName", str)
GatewayName = NewType("GatewayName", str)

#: Highest accepted policy priority (fits an int32 so every client and the CRD schema agree).
MAX_PRIORITY = 2**31 - 1


class Operator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is Operator.IN:
            return labels.get(self.key) in self.values
        if self.operator is Operator.NOT_IN:
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator is Operator.EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelSelector:
    """A Kubernetes label selector. An empty selector matches everything (as in Kubernetes)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class IPRange:
    """An inclusive address range of one family; single IPs and CIDRs are ranges too."""

    first: IPAddress
    last: IPAddress

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, IPv4Address | IPv6Address) or ip.version != self.first.version:
            return False
        return int(self.first) <= int(ip) <= int(self.last)

    def addresses(self) -> Iterator[IPAddress]:
        cls = type(self.first)
        for i in range(int(self.first), int(self.last) + 1):
            yield cls(i)

    def networks(self) -> Iterator[IPNetwork]:
        yield from ipaddress.summarize_address_range(self.first, self.last)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True, kw_only=True)
class IPPool:
    """The EIP pool of one family: sorted, non-overlapping ranges."""

    ranges: tuple[IPRange, ...] = ()

    def __contains__(self, ip: object) -> bool:
        return any(ip in r for r in self.ranges)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.ranges)

    def addresses(self) -> Iterator[IPAddress]:
        for r in self.ranges:
            yield from r.addresses()

    def nth(self, index: int) -> IPAddress:
        """The index-th address of the pool in range order (0-based), without expanding the pool."""
        for r in self.ranges:
            if index < r.size:
                return type(r.first)(int(r.first) + index)
            index -= r.size
        raise IndexError(index)

    def index_of(self, ip: IPAddress) -> int:
        offset = 0
        for r in self.ranges:
            if ip in r:
                return offset + int(ip) - int(r.first)
            offset += r.size
        raise ValueError(f"{ip} is not in the pool")


class TunnelType(enum.StrEnum):
    VXLAN = "vxlan"
    WIREGUARD = "wireguard"


class TunnelFamily(enum.StrEnum):
    """The address family of the underlay between the workers and the members of one gateway instance."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @property
    def version(self) -> int:
        return 4 if self is TunnelFamily.IPV4 else 6


def underlay_address(addresses: Iterable[IPAddress], family: TunnelFamily | None) -> IPAddress | None:
    """The underlay (tunnel) address among a Node's InternalIPs or an appliance's announced addresses.

    `family` set (`spec.tunnel.family`): the first address of that family, None when there is none (the node or
    appliance cannot be a tunnel end of that instance). Unset: IPv4 when there is one, else IPv6 - single-stack
    nodes tunnel over their only family, dual-stack nodes over IPv4 (set `ipv6` for an IPv6-only underlay).
    """
    found = tuple(addresses)
    if family is not None:
        return next((a for a in found if a.version == family.version), None)
    return next((a for a in found if a.version == 4), None) or next(iter(found), None)


class NoGatewayAction(enum.StrEnum):
    """What a worker does with selected traffic when no member of the gateway is healthy."""

    #: drop it: the pod never leaves with an address a partner did not allow-list (default; safer for firewalls)
    FAIL_CLOSED = "FailClosed"
    #: let it leave through the normal path (node IP): connectivity over address stability
    FAIL_OPEN = "FailOpen"


class AllocatorPolicy(enum.StrEnum):
    DEFAULT = "default"
    RR = "rr"


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelSpec:
    type: TunnelType = TunnelType.VXLAN
    #: VXLAN network identifier of this gateway instance
    vni: int = 7700
    #: UDP port: VXLAN's (default 4789) or WireGuard's listen port (default 51820)
    port: int | None = None
    #: inner MTU; None = derived from the underlay MTU minus the tunnel overhead
    mtu: int | None = None
    #: the underlay family both ends use (member and worker addresses, tunnel sources, reply encapsulation, the
    #: appliance Lease address); None = per node: IPv4 when the node has an IPv4 address, else IPv6
    family: TunnelFamily | None = None

    def version(self, fallback: int) -> int:
        """The underlay IP version of this instance's tunnels; `fallback` (the end's own family) when unset."""
        return self.family.version if self.family is not None else fallback

    @property
    def udp_port(self) -> int:
        if self.port is not None:
            return self.port
        return 4789 if self.type is TunnelType.VXLAN else 51820


@dataclass(frozen=True, slots=True, kw_only=True)
class BgpSpec:
    #: standard communities ("65000:100") attached to every EIP announcement of this instance
    communities: tuple[str, ...] = ()
    #: large communities ("65000:1:2")
    large_communities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverSpec:
    no_gateway_action: NoGatewayAction = NoGatewayAction.FAIL_CLOSED
    #: seconds a returning member waits, healthy, before it announces with its real preference again
    failback_hold_seconds: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressGateway:
    name: str
    ipv4_pool: IPPool = IPPool()
    ipv6_pool: IPPool = IPPool()
    ipv4_default_eip: IPv4Address | None = None
    ipv6_default_eip: IPv6Address | None = None
    #: members that are cluster nodes; None = no cluster-node members (appliances only)
    node_selector: LabelSelector | None = None
    cluster_default: bool = False
    tunnel: TunnelSpec = TunnelSpec()
    bgp: BgpSpec = BgpSpec()
    failover: FailoverSpec = FailoverSpec()
    generation: int = 0
    #: metadata.uid (a random UUID the API server assigns at creation): the secret the instance's keyed VNIs are
    #: derived from (`appliance.datapath.plan.tunnel.keyed_vni`); "" for objects that never went through an API server
    uid: str = ""

    def pool(self, version: int) -> IPPool:
        return self.ipv4_pool if version == 4 else self.ipv6_pool

    def default_eip(self, version: int) -> IPAddress | None:
        return self.ipv4_default_eip if version == 4 else self.ipv6_default_eip


class PolicyKind(enum.StrEnum):
    NAMESPACED = "EgressPolicy"
    CLUSTER = "EgressClusterPolicy"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class PolicyRef:
    kind: PolicyKind
    namespace: str  # "" for cluster policies
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressIPSpec:
    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None
    use_node_ip: bool = False
    allocator_policy: AllocatorPolicy = AllocatorPolicy.DEFAULT


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedTo:
    pod_selector: LabelSelector | None = None
    pod_subnet: tuple[IPNetwork, ...] = ()
    #: EgressClusterPolicy only; None = pods of every namespace
    namespace_selector: LabelSelector | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPolicy:
    """An EgressPolicy or EgressClusterPolicy (ref.kind tells which)."""

    ref: PolicyRef
    #: "" = the namespace's default gateway, then the cluster default
    egress_gateway_name: str = ""
    egress_ip: EgressIPSpec = EgressIPSpec()
    applied_to: AppliedTo = AppliedTo()
    #: empty = every destination that is not cluster-internal
    dest_subnet: tuple[IPNetwork, ...] = ()
    priority: int = 0
    generation: int = 0
    #: creation time (RFC 3339) - the tie-breaker for `rr` allocation order
    created: str = ""


class PodCidrMode(enum.StrEnum):
    AUTO = "auto"
    K8S = "k8s"
    CALICO = "calico"
    NONE = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressClusterInfo:
    pod_cidr_mode: PodCidrMode = PodCidrMode.AUTO
    detect_cluster_ip: bool = True
    detect_node_ip: bool = True
    extra_cidr: tuple[IPNetwork, ...] = ()


# ----- cluster objects (only the fields planners use) -----


@dataclass(frozen=True, slots=True, kw_only=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    #: InternalIP addresses, the underlay / tunnel endpoints
    addresses: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()
    wireguard_public_key: str | None = None
    #: the `egressgw.io/drain` annotation's value (the reason; "" when empty); None = not drained
    drain_reason: str | None = None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def address(self, version: int) -> IPAddress | None:
        return next((a for a in self.addresses if a.version == version), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pod:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    node_name: str = ""
    ips: tuple[IPAddress, ...] = ()
    host_network: bool = False
    #: Pending/Running/Succeeded/Failed/Unknown; finished pods are never selected
    phase: str = "Running"

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Appliance:
    """A gateway member outside the cluster, registered with a coordination.k8s.io Lease."""

    name: str
    gateway: str
    address: IPAddress
    wireguard_public_key: str | None = None
    #: every underlay address the appliance announced (`address` is the first); the member address is picked from
    #: these by the instance's tunnel family (`underlay_address`); () = only `address`
    addresses: tuple[IPAddress, ...] = ()
    #: False when the lease expired (renewTime + leaseDurationSeconds in the past)
    alive: bool = True
    #: the `egressgw.io/drain` annotation's value on its member Lease (the reason); None = not drained
    drain_reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Member:
    """One member of a gateway instance: a cluster node or an appliance."""

    name: str
    address: IPAddress = field(compare=False)
    wireguard_public_key: str | None = field(default=None, compare=False)
