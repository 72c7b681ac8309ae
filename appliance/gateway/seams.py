"""The seams of the gateway service: the Protocols its I/O pieces implement and the bundle that hands them over.

Why separate: `appliance.gateway.service` is the order of things (kernel first, then announce; health; drain); these
are the shapes the real pieces (data path, ExaBGP speaker, BFD sidecar, leases) and the unit tests' fakes share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from appliance.core.intent import GatewayInstance, Intent
from appliance.core.model import IPAddress
from appliance.core.snapshot import Snapshot, SnapshotSource
from appliance.gateway.view import MemberView, Phase, StateSyncView
from appliance.runtime.lifecycle import Lifecycle
from appliance.runtime.reconciling import PassOutcome, PassReport
from bgp.announcing import Announcement
from bgp.health import Check

__all__ = [
    "DataPathResult",
    "Freshness",
    "GatewayDataPath",
    "GatewayDeps",
    "Lifecycle",
    "Phase",
    "Sidecar",
    "Speaker",
    "StateSync",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPathResult:
    #: the pass's changes, failures and the planners' skips (data path and WireGuard)
    outcome: PassOutcome
    #: EIPs whose kernel state is complete on this member (only these may be announced)
    eips_in_place: frozenset[IPAddress] = frozenset()


class GatewayDataPath(Protocol):
    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> DataPathResult:
        """Plan and apply. `full`: observe the kernel and repair drift (start, resync, retry passes); else diff
        against what the last successful apply left (event-driven passes: cheap at 10k pods)."""
        ...

    def checks(self) -> Mapping[Check, bool]:
        """TUNNEL_DEVICE and NFT_TABLE: our tunnel devices and nft table exist (drift, a flushed ruleset)."""
        ...

    def remove_all(self) -> tuple[str, ...]: ...


class Speaker(Protocol):
    def start(self) -> None: ...

    def set_announcements(self, announcements: frozenset[Announcement]) -> None: ...

    def acknowledged(self) -> frozenset[Announcement]: ...

    def peer_states(self) -> dict[str, str]: ...

    def wait_converged(self, timeout_s: float) -> bool: ...

    def stop(self, timeout_s: float = 5.0) -> None: ...


class Sidecar(Protocol):
    """The BFD sidecar (start/stop, per-peer state)."""

    def start(self, timeout_s: float = 5.0) -> None: ...

    def peer_states(self) -> dict[str, str]: ...

    def stop(self, timeout_s: float = 3.0, *, abrupt: bool = False) -> None: ...

    def detach(self, timeout_s: float = 3.0) -> None: ...


class Freshness(Protocol):
    """Stale members step back (`bgp.heartbeat.MemberHeartbeat`): told the instances of each pass, it answers in
    which of them this member's cluster view is stale while another member's is fresh."""

    def set_instances(self, instances: Iterable[GatewayInstance]) -> None: ...

    def stepped_back(self) -> frozenset[str]: ...


class StateSync(Protocol):
    """Conntrack state sync (`appliance.gateway.state_sync`): converged each pass; `ready()` gates the first
    announcement of a starting member on its first resync (bounded); its view goes into the `MemberView`."""

    def converge(self, intent: Intent) -> None: ...

    def ready(self) -> bool: ...

    def view(self) -> StateSyncView: ...


@dataclass(kw_only=True)
class GatewayDeps:
    source: SnapshotSource
    datapath: GatewayDataPath
    speaker: Speaker | None = None
    bfd: Sidecar | None = None
    #: stale-member step-back (None = off); its heartbeat is started and stopped as one of the `helpers`
    freshness: Freshness | None = None
    #: conntrack state sync (None = off); started and stopped as one of the `helpers`
    state_sync: StateSync | None = None
    #: started before the loop, stopped (in reverse order) at exit: cluster sync, member lease, leader election...
    helpers: list[Lifecycle] = field(default_factory=list)
    #: host checks that are not the data path's: uplink, upstream probe (check -> passed)
    host_checks: Callable[[], Mapping[Check, bool]] = dict
    #: the `previous` intent for `resolve` (the store's `written_intent()`: what the status writer recorded, shared
    #: by every agent and member so `rr` EIPs agree); None = this service's own last intent
    previous: Callable[[], Intent | None] | None = None
    #: called after each successful pass (the status writer's `submit`; it decides whether it is the leader)
    publish: Callable[[Snapshot, Intent], None] | None = None
    #: metrics hooks (optional): each pass report; the member's view after each health tick
    on_pass: Callable[[PassReport], None] | None = None
    on_tick: Callable[[MemberView], None] | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
