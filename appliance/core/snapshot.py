"""One frozen, typed view of everything the planners read from the cluster.

`k8s_sync` builds it (after every reflector has finished its first list); planners only read it. A `Problem` is an
invalid object found while building it: reported on the object, skipped by every planner.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from appliance.core.model import (
    Appliance,
    EgressClusterInfo,
    EgressGateway,
    EgressPolicy,
    IPNetwork,
    Namespace,
    Node,
    Pod,
)


class Reason(enum.StrEnum):
    """Why an object is not (fully) in effect. Used in status conditions, logs, events and metric labels."""

    INVALID = "Invalid"
    IMMUTABLE_FIELD = "ImmutableField"
    GATEWAY_NOT_FOUND = "GatewayNotFound"
    NO_DEFAULT_GATEWAY = "NoDefaultGateway"
    POOL_EXHAUSTED = "PoolExhausted"
    NO_POOL_FOR_FAMILY = "NoPoolForFamily"
    EIP_NOT_IN_POOL = "EIPNotInPool"
    NO_MEMBERS = "NoMembers"
    DUPLICATE_POOL_IP = "DuplicatePoolIP"
    DUPLICATE_CLUSTER_DEFAULT = "DuplicateClusterDefault"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class ObjectRef:
    kind: str
    namespace: str  # "" for cluster-scoped objects
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Problem:
    """One thing wrong with one object: `field` is the dotted path (`spec.ippools.ipv4[2]`)."""

    ref: ObjectRef
    field: str
    reason: Reason
    message: str

    def __str__(self) -> str:
        return f"{self.ref}: {self.field}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything planners need. Only valid gateways and policies are in `gateways`/`policies`."""

    gateways: tuple[EgressGateway, ...] = ()
    policies: tuple[EgressPolicy, ...] = ()
    problems: tuple[Problem, ...] = ()
    cluster_info: EgressClusterInfo = EgressClusterInfo()
    namespaces: tuple[Namespace, ...] = ()
    nodes: tuple[Node, ...] = ()
    pods: tuple[Pod, ...] = ()
    #: pods NOT in `pods` that report an IP outside every detected cluster-internal source (`appliance.policy.
    #: cluster_cidrs`): an agent reflects only its own node's pods, and learns these from a cluster-wide pod watch
    #: that keeps nothing else (k8s_sync). Only their key, IPs and hostNetwork matter. Empty where `pods` is whole.
    remote_strays: tuple[Pod, ...] = ()
    appliances: tuple[Appliance, ...] = ()
    #: the Service CIDR(s), detected (see k8s_sync) - may be empty when undetectable
    service_cidrs: tuple[IPNetwork, ...] = ()
    #: Calico IPPool CIDRs, when that CRD exists
    calico_pools: tuple[IPNetwork, ...] = ()
    #: names of gateway members currently alive (their member Lease is fresh); None = unknown (treat all as alive)
    alive_members: frozenset[str] | None = None
    #: monotonically increasing version of the store this snapshot came from (for logs)
    revision: int = field(default=0, compare=False)


class SnapshotSource(Protocol):
    """What the reconcile loops need from k8s_sync (a real store, or an in-memory fake in unit tests)."""

    def synced(self) -> bool:
        """True once every reflector has finished its first list."""
        ...

    def snapshot(self) -> Snapshot: ...

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` (from any thread) whenever the snapshot may have changed."""
        ...
