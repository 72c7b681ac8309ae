"""`MemberView`: one immutable picture of a gateway member's state, published by the service and read by everyone else.

Why: the status document, the metrics and the member Lease used to reach into the live service under its lock,
which tied them to its internals (and made an import cycle). Now the service builds a new `MemberView` whenever its
state changes and on every health tick, and replaces the old one in a single assignment; readers take
`service.view` and get a consistent snapshot without a lock. Everything here is frozen and pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from appliance.core.model import IPAddress
from appliance.runtime.skips import SkipNote
from bgp.announcing import Announcement, MemberMode
from bgp.health import Check, HealthState


class Phase(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileView:
    """The last reconcile pass and the loop's counters."""

    ok: bool
    duration_s: float
    passes: int
    failed_passes: int
    #: the first failures of the last pass (short, grep-able)
    failures: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainView:
    """Drain progress: `withdrawing`, `settling`, `done` (see `bgp.draining`)."""

    state: str
    reason: str
    #: None while waiting; whether the withdrawal was acknowledged in time
    acknowledged: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class MemberCondition:
    """A condition of the member that is not health (it does not withdraw anything), e.g. `WorkerTrafficSpoofed`."""

    type: str
    status: bool
    reason: str
    message: str = ""
    #: what the condition is about (worker node names for `WorkerTrafficSpoofed`), sorted
    subjects: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class PeerSyncView:
    """One state-sync channel (`appliance.gateway.state_sync`): the peer, its daemon, the counters since it started."""

    peer: str
    address: str
    port: int
    running: bool
    up: bool
    #: `pending`, `running`, `done`, `timed_out`: the last full resync requested from this peer
    resync: str
    sent: int = 0
    received: int = 0
    lost: int = 0
    problem: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSyncView:
    """Conntrack state sync of this member: its channels, and whether the first resync is behind it (a member
    announces only after it, bounded by `state_sync.resync_timeout_s`)."""

    ready: bool
    peers: tuple[PeerSyncView, ...] = ()
    #: duration of the last finished full resync (None before the first)
    last_resync_s: float | None = None
    #: peers without a channel, with the reason (`AddressFamilyMismatch`...)
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def peers_up(self) -> int:
        return sum(1 for p in self.peers if p.up)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberView:
    node: str
    pid: int
    phase: Phase
    #: the service clock when the view was taken (health hold-down is relative to it)
    taken_at: float
    health: HealthState
    #: the last observation of each check, sorted by check
    checks: tuple[tuple[Check, bool], ...] = ()
    mode: MemberMode | None = None
    #: what the planner wants announced (only EIPs in place) vs what ExaBGP acknowledged on every peer
    desired: frozenset[Announcement] = frozenset()
    acknowledged: frozenset[Announcement] = frozenset()
    eips_in_place: frozenset[IPAddress] = frozenset()
    #: BGP session state per peer, BFD session state per peer (sorted pairs)
    peers: tuple[tuple[str, str], ...] = ()
    bfd: tuple[tuple[str, str], ...] = ()
    reconcile: ReconcileView | None = None
    drain: DrainView | None = None
    #: what the planners (data path, WireGuard, announcements) currently leave out, and why
    skipped: frozenset[SkipNote] = frozenset()
    #: conditions reported by the data path (`WorkerTrafficSpoofed`)
    conditions: tuple[MemberCondition, ...] = ()
    #: conntrack state sync (None = off)
    state_sync: StateSyncView | None = None

    @property
    def draining(self) -> bool:
        return self.phase is Phase.DRAINING
