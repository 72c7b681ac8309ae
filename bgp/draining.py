"""The drain sequence (make before break), once: a pure state machine and the one driver that runs it.

Make before break: the backups are already in the routers' tables (every healthy member announces every EIP), so a
withdrawal only makes a router switch to the next path; our kernel state (EIP addresses, nft SNAT, tunnel) must stay
in place until then, to carry the packets still in flight. The order (docs/bgp.md, "Drain"):

1. withdraw: the member is marked draining and its announcements are replaced by the drain target (nothing, or a
   de-preferred set);
2. wait until ExaBGP acknowledged the target on every peer, in short slices, bounded by the drain timeout;
3. no acknowledgement in time (a peer down, ExaBGP stuck): close the BGP sessions, a withdrawal the routers act on;
4. settle: keep forwarding for the settle time (the routers process the UPDATE and re-run best path);
5. done. The caller then stops ExaBGP and BFD and removes its kernel state.

A hurry (a second SIGTERM) ends the wait as unacknowledged (so the sessions are closed) and skips the settle time.

Why a state machine: the gateway service drives this sequence with its own I/O (status writes, logs, a hurry flag
set from a signal handler) and unit tests drive it with an injected clock; the lab and the tests drive it over a
bare speaker with `drain_announcements`. Both go through `run_drain`, so there is one order, not two.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from bgp.announcing import Announcement
from bgp.settings import DrainSettings

#: longest single wait for the acks (so a hurry is noticed within this time)
ACK_POLL_S = 0.2
#: longest single sleep of the settle time
SETTLE_POLL_S = 0.05


class DrainStage(enum.StrEnum):
    WITHDRAWING = "withdrawing"
    SETTLING = "settling"
    DONE = "done"


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainProgress:
    """Where a drain is: its stage, deadlines (clock times) and whether the withdrawal was acknowledged."""

    stage: DrainStage
    started: float
    ack_deadline: float
    settle_s: float
    #: None while waiting; True when acknowledged in time, False after the timeout or a hurry
    acknowledged: bool | None = None
    #: when the acknowledgement wait ended (clock time), None while waiting
    acked_at: float | None = None
    settle_until: float | None = None
    finished: float | None = None

    @property
    def ack_wait_s(self) -> float:
        return (self.acked_at if self.acked_at is not None else self.started) - self.started

    @property
    def close_sessions(self) -> bool:
        """The withdrawal was not acknowledged: closing the sessions is what makes the routers drop our routes."""
        return self.acknowledged is False


def begin_drain(now: float, *, timeout_s: float, settle_s: float) -> DrainProgress:
    """Step 1: a drain starts withdrawing now; the acknowledgement must arrive within `timeout_s`."""
    return DrainProgress(stage=DrainStage.WITHDRAWING, started=now, ack_deadline=now + timeout_s, settle_s=settle_s)


def ack_wait_s(p: DrainProgress, now: float, *, poll_s: float = ACK_POLL_S) -> float:
    """How long the next acknowledgement wait may block (0: the deadline has passed)."""
    return max(0.0, min(p.ack_deadline - now, poll_s))


def after_ack_wait(p: DrainProgress, *, acked: bool, now: float, hurried: bool = False) -> DrainProgress:
    """Steps 2-3: acknowledged -> settle; deadline passed or hurried -> settle unacknowledged (close the sessions);
    else keep waiting. A hurry leaves no settle time."""
    if p.stage is not DrainStage.WITHDRAWING:
        return p
    if not acked and not hurried and now < p.ack_deadline:
        return p
    settle = 0.0 if hurried else p.settle_s
    return replace(p, stage=DrainStage.SETTLING, acknowledged=acked and not hurried, acked_at=now,
                   settle_until=now + settle)  # fmt: skip


def settle_wait_s(p: DrainProgress, now: float, *, poll_s: float = SETTLE_POLL_S) -> float:
    """How long the next settle sleep may last (0: settled)."""
    if p.settle_until is None:
        return 0.0
    return max(0.0, min(p.settle_until - now, poll_s))


def after_settle(p: DrainProgress, *, now: float, hurried: bool = False) -> DrainProgress:
    """Step 4: settled (or hurried) -> done."""
    if p.stage is not DrainStage.SETTLING:
        return p
    if hurried or p.settle_until is None or now >= p.settle_until:
        return replace(p, stage=DrainStage.DONE, finished=now)
    return p


class DrainIO(Protocol):
    """What the driver needs from its caller: the three effects of the sequence."""

    def withdraw(self) -> None: ...

    def wait_acknowledged(self, timeout_s: float) -> bool: ...

    def close_sessions(self) -> None: ...


def run_drain(
    io: DrainIO,
    *,
    timeout_s: float,
    settle_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    hurried: Callable[[], bool] = lambda: False,
    on_progress: Callable[[DrainProgress], None] | None = None,
    ack_poll_s: float = ACK_POLL_S,
    settle_poll_s: float = SETTLE_POLL_S,
) -> DrainProgress:
    """Run the sequence to DONE: withdraw, wait for the acks (bounded), close the sessions when unacknowledged,
    settle. `on_progress` sees each new stage (the service writes its status there). Never raises on a timeout."""
    p = begin_drain(clock(), timeout_s=timeout_s, settle_s=settle_s)
    io.withdraw()
    if on_progress is not None:
        on_progress(p)
    while p.stage is DrainStage.WITHDRAWING:
        wait = ack_wait_s(p, clock(), poll_s=ack_poll_s)
        acked = wait > 0 and not hurried() and io.wait_acknowledged(wait)
        p = after_ack_wait(p, acked=acked, now=clock(), hurried=hurried())
    if on_progress is not None:
        on_progress(p)
    if p.close_sessions:
        io.close_sessions()
    while p.stage is DrainStage.SETTLING:
        now = clock()
        wait = settle_wait_s(p, now, poll_s=settle_poll_s)
        if wait > 0 and not hurried():
            sleep(wait)
            now += wait  # a sleep counts as slept even when the clock is a test's and did not move
        p = after_settle(p, now=max(now, clock()), hurried=hurried())
    if on_progress is not None:
        on_progress(p)
    return p


class Announces(Protocol):
    def set_announcements(self, announcements: frozenset[Announcement]) -> None: ...

    def wait_converged(self, timeout_s: float) -> bool: ...

    def stop(self, timeout_s: float = 5.0) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerDrain:
    """`DrainIO` over a bare speaker: withdraw = announce `target`, close = stop the speaker."""

    speaker: Announces
    target: frozenset[Announcement] = frozenset()

    def withdraw(self) -> None:
        self.speaker.set_announcements(self.target)

    def wait_acknowledged(self, timeout_s: float) -> bool:
        return self.speaker.wait_converged(timeout_s)

    def close_sessions(self) -> None:
        self.speaker.stop()


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainResult:
    #: True when ExaBGP acknowledged the target set on every peer before the timeout
    acknowledged: bool
    #: seconds spent waiting for the acknowledgement
    ack_wait_s: float
    #: seconds spent settling afterwards
    settle_s: float


def drain_announcements(
    speaker: Announces,
    settings: DrainSettings,
    *,
    target: frozenset[Announcement] = frozenset(),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> DrainResult:
    """The drain sequence over a bare speaker (the lab and the tests): converge to `target` (default: nothing
    announced), close the sessions if that is not acknowledged in time, then settle. Never raises on a timeout."""
    p = run_drain(
        SpeakerDrain(speaker=speaker, target=target),
        timeout_s=settings.timeout_s,
        settle_s=settings.settle_s,
        clock=clock,
        sleep=sleep,
        ack_poll_s=math.inf,
        settle_poll_s=math.inf,
    )
    settled = (p.finished or 0.0) - (p.acked_at or 0.0)
    return DrainResult(acknowledged=bool(p.acknowledged), ack_wait_s=p.ack_wait_s, settle_s=settled)
