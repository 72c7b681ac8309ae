"""The reconcile loop: events mark work dirty, one loop runs coalesced passes, with resync, backoff and a heartbeat.

Why this shape (client-go's workqueue, kopf's processing): watch events arrive in bursts from any thread; running a
pass per event would plan the same world hundreds of times during a rollout. So an event only records a *reason*
(`pod`, `policy`, `resync`...) and wakes the loop; the loop waits `debounce` after the first pending reason (at most
`max_delay` while events keep coming), then runs ONE pass over the whole snapshot. A periodic resync repairs drift
(someone flushed our nft table). A failing pass is logged and retried with exponential backoff; it never kills the
loop. Nothing runs before the SnapshotSource has synced: an empty snapshot must never mean "remove everything".

Every pass logs one line, `reconcile.pass`: why it ran, how long it took, what changed, what failed.
The heartbeat (`Reconciler.heartbeat`) is refreshed on every loop turn (at least every `tick_s`), so a health check
sees a stalled loop (a hung apply) as a stale heartbeat.

The scheduling decisions are in `Reconciler.poll(now)`, driven with an injected clock in unit tests; `run()` is the
thin threaded shell around it.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from appliance.core.backoff import BackoffPolicy
from appliance.core.backoff import backoff_delay as policy_delay
from appliance.core.events import EventLogger, error_text
from appliance.core.snapshot import Snapshot, SnapshotSource
from appliance.runtime.config import ReconcileSettings
from appliance.runtime.skips import SkipNote

#: how often a due pass re-checks `SnapshotSource.synced()` before the first sync
_UNSYNCED_POLL_S = 0.05


class Trigger(enum.StrEnum):
    """Reasons the loop itself adds (event reasons come from the SnapshotSource and the commands)."""

    START = "start"
    RESYNC = "resync"
    RETRY = "retry"
    SYNCED = "synced"
    #: our kernel state is missing (a flushed nft table, a deleted tunnel device): repair now, not at the resync
    DRIFT = "drift"


#: reasons that always run a pass, even over an unchanged snapshot
_LOOP_TRIGGERS = frozenset(str(t) for t in Trigger)


def full_pass(reasons: frozenset[str]) -> bool:
    """Whether a pass must observe the kernel (start, resync, retry, first sync) rather than trust its cache."""
    return bool(reasons & _LOOP_TRIGGERS)


@dataclass(frozen=True, slots=True, kw_only=True)
class PassOutcome:
    """What one pass did. `changes`/`failures` are short human/grep-able items (`route add 203.0.113.130/32`)."""

    changes: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    #: what the planners left out on this pass and why (the services log changes of this set, not every pass)
    skipped: frozenset[SkipNote] = frozenset()

    @property
    def ok(self) -> bool:
        return not self.failures


class PassFunction(Protocol):
    def __call__(self, snapshot: Snapshot, reasons: frozenset[str]) -> PassOutcome: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PassReport:
    """The record of one pass (also what `reconcile.pass` logs)."""

    reasons: frozenset[str]
    started: float
    duration_s: float
    revision: int
    outcome: PassOutcome
    #: consecutive failed passes including this one (0 after a success)
    failures_in_a_row: int
    #: clock time of the scheduled retry, None when the pass succeeded
    retry_at: float | None


def backoff_delay(failures_in_a_row: int, settings: ReconcileSettings) -> float:
    """Exponential backoff: initial, 2x, 4x ... capped at backoff_max_s (computed by `appliance.core.backoff`)."""
    policy = BackoffPolicy(initial=settings.backoff_initial_s, maximum=settings.backoff_max_s)
    return policy_delay(policy, failures_in_a_row)


class Reconciler:
    """Coalescing scheduler + pass runner. Thread-safe `notify`; `poll`/`run` belong to one loop thread."""

    def __init__(
        self,
        *,
        source: SnapshotSource,
        run_pass: PassFunction,
        settings: ReconcileSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: EventLogger | None = None,
        tick_s: float = 1.0,
        on_pass: Callable[[PassReport], None] | None = None,
        skip_unchanged: bool = True,
        drift_check: Callable[[], bool] | None = None,
        drift_check_s: float = 5.0,
        run_always: frozenset[str] = frozenset(),
    ) -> None:
        self._source = source
        self._run_pass = run_pass
        self._settings = settings = settings or ReconcileSettings()
        self._clock = clock
        self._log = log or EventLogger("egressgw.reconcile")
        self._tick_s = tick_s
        self._on_pass = on_pass
        #: skip event-triggered passes whose snapshot equals the last successfully applied one (resync, retry and
        #: start always run): lease renewals arrive every few seconds per member and change nothing we plan from
        self._skip_unchanged = skip_unchanged
        #: event reasons that run a pass even over an unchanged snapshot, still trusting the appliers' caches (an
        #: input that is not in the snapshot changed: e.g. the agent's endpoint probes)
        self._run_always = _LOOP_TRIGGERS | run_always
        #: a cheap "is our kernel state still there?" probe, run every drift_check_s once a pass succeeded
        self._drift_check = drift_check
        self._drift_check_s = drift_check_s
        self._next_drift_check = 0.0
        self._last_ok: Snapshot | None = None
        self.skipped = 0
        self._cond = threading.Condition()
        now = clock()
        self._reasons: set[str] = {Trigger.START.value}
        self._first_dirty: float | None = now
        self._last_dirty: float = now
        self._next_resync = now + settings.resync_period_s
        self._failures = 0
        self._retry_at: float | None = None
        self._was_synced = False
        self._waiting_logged = False
        self.heartbeat: float | None = None
        self.last_report: PassReport | None = None
        self.passes = 0
        self.failed_passes = 0

    # ----- producers (any thread) -----

    def notify(self, reason: str) -> None:
        """Mark work dirty with a reason and wake the loop. Cheap; safe from any thread (watch callbacks)."""
        now = self._clock()
        with self._cond:
            self._reasons.add(reason)
            if self._first_dirty is None:
                self._first_dirty = now
            self._last_dirty = now
            self._cond.notify()

    def subscribe_to_source(self) -> None:
        self._source.subscribe(self.notify)

    # ----- scheduling (pure given the clock) -----

    def next_due(self) -> float:
        """Clock time at which the next pass is due (may be in the past)."""
        with self._cond:
            return self._next_due_locked()

    def _next_due_locked(self) -> float:
        due = self._next_resync
        if self._retry_at is not None:
            due = min(due, self._retry_at)
        if self._first_dirty is not None:
            debounce = self._settings.debounce_ms / 1000.0
            max_delay = self._settings.max_delay_ms / 1000.0
            due = min(due, self._last_dirty + debounce, self._first_dirty + max_delay)
        return due

    def poll(self, now: float) -> PassReport | None:
        """Run a pass if one is due at `now` (and the source has synced); refresh the heartbeat either way."""
        self.heartbeat = now
        if self._drift_check is not None and self._last_ok is not None and now >= self._next_drift_check:
            self._next_drift_check = now + self._drift_check_s
            try:
                drifted = self._drift_check()
            except Exception:
                self._log.exception("reconcile.drift_check_failed")
                drifted = False
            if drifted:
                self._log.warning("reconcile.drift_detected")
                self.notify(Trigger.DRIFT.value)
        with self._cond:
            if now >= self._next_resync:
                self._reasons.add(Trigger.RESYNC.value)
                if self._first_dirty is None:
                    self._first_dirty = now
                    self._last_dirty = now
            if self._retry_at is not None and now >= self._retry_at:
                self._reasons.add(Trigger.RETRY.value)
            due = self._next_due_locked()
            if now < due or not self._reasons:
                return None
            if not self._source.synced():
                if not self._waiting_logged:
                    self._log.info("reconcile.waiting_for_sync", pending=sorted(self._reasons))
                    self._waiting_logged = True
                return None  # keep the reasons; `run` re-polls every `_UNSYNCED_POLL_S`
            if not self._was_synced:
                self._was_synced = True
                self._reasons.add(Trigger.SYNCED.value)
            reasons = frozenset(self._reasons)
            self._reasons.clear()
            self._first_dirty = None
            self._retry_at = None
        return self._execute(reasons, now)

    def _execute(self, reasons: frozenset[str], now: float) -> PassReport | None:
        snapshot = self._source.snapshot()
        if (
            self._skip_unchanged
            and self._last_ok is not None
            and not reasons & self._run_always
            and (snapshot is self._last_ok or snapshot == self._last_ok)
        ):
            # events that changed nothing we plan from (a lease renewal, our own status write): no pass
            self.skipped += 1
            self._log.debug("reconcile.skipped", reasons=sorted(reasons), revision=snapshot.revision)
            return None
        try:
            outcome = self._run_pass(snapshot, reasons)
        except Exception as e:  # a failed pass must never kill the loop
            self._log.exception("reconcile.pass_crashed", reasons=sorted(reasons))
            outcome = PassOutcome(failures=(error_text(e),))
        end = self._clock()
        self.passes += 1
        with self._cond:
            if outcome.ok:
                self._failures = 0
                retry_at = None
                self._last_ok = snapshot
            else:
                self._failures += 1
                self.failed_passes += 1
                self._last_ok = None
                retry_at = end + backoff_delay(self._failures, self._settings)
                self._retry_at = retry_at
            self._next_resync = end + self._settings.resync_period_s
            failures = self._failures
        report = PassReport(
            reasons=reasons,
            started=now,
            duration_s=end - now,
            revision=snapshot.revision,
            outcome=outcome,
            failures_in_a_row=failures,
            retry_at=retry_at,
        )
        self.last_report = report
        self.heartbeat = end
        self._log_report(report)
        if self._on_pass is not None:
            self._on_pass(report)
        return report

    def _log_report(self, r: PassReport) -> None:
        fields: dict[str, object] = {
            "reasons": sorted(r.reasons),
            "duration_ms": round(r.duration_s * 1000, 1),
            "revision": r.revision,
            "changed": len(r.outcome.changes),
            "changes": list(r.outcome.changes[:20]),
            "failed": len(r.outcome.failures),
        }
        if r.outcome.ok:
            self._log.info("reconcile.pass", result="ok", **fields)
        else:
            retry_in = round((r.retry_at or 0) - (r.started + r.duration_s), 3)
            self._log.warning(
                "reconcile.pass",
                result="failed",
                failures=list(r.outcome.failures[:20]),
                failures_in_a_row=r.failures_in_a_row,
                retry_in_s=retry_in,
                **fields,
            )

    # ----- the threaded shell -----

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set: wait for the next due time (at most `tick_s`, for the heartbeat), poll."""
        self.subscribe_to_source()
        while not stop.is_set():
            now = self._clock()
            self.poll(now)
            now = self._clock()
            with self._cond:
                wait = min(self._tick_s, max(0.0, self._next_due_locked() - now))
                if wait == 0.0 and self._reasons:  # due but not synced yet (or racing a notify): no busy loop
                    wait = _UNSYNCED_POLL_S
                if wait > 0 and not stop.is_set():
                    self._cond.wait(wait)

    def wake(self) -> None:
        """Wake the loop without adding a reason (used at shutdown so `run` sees its stop event)."""
        with self._cond:
            self._cond.notify()

    def heartbeat_age(self, now: float) -> float | None:
        return None if self.heartbeat is None else now - self.heartbeat
