"""The reconcile loop's scheduling: coalescing, resync, backoff on failure, nothing before sync (injected clock)."""

from __future__ import annotations

import ipaddress
import itertools
import threading
import time
from collections.abc import Callable

import pytest

from appliance.core.snapshot import Snapshot
from appliance.core.waiting import wait_until
from appliance.runtime.config import ReconcileSettings
from appliance.runtime.reconciling import PassOutcome, Reconciler, backoff_delay, full_pass


class FakeSource:
    def __init__(self, *, synced: bool = True) -> None:
        self.is_synced = synced
        self.revision = 0
        self.callbacks: list[Callable[[str], None]] = []

    def synced(self) -> bool:
        return self.is_synced

    def snapshot(self) -> Snapshot:
        # the content follows the revision (Snapshot equality ignores `revision` itself)
        cidr = ipaddress.ip_network(f"100.100.{self.revision % 256}.0/24")
        return Snapshot(revision=self.revision, service_cidrs=(cidr,))

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self.callbacks.append(callback)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Recorder:
    """A pass function that records its calls and fails while `fail` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, frozenset[str]]] = []
        self.fail: str | None = None
        self.raise_: Exception | None = None

    def __call__(self, snapshot: Snapshot, reasons: frozenset[str]) -> PassOutcome:
        self.calls.append((snapshot.revision, reasons))
        if self.raise_ is not None:
            raise self.raise_
        if self.fail:
            return PassOutcome(failures=(self.fail,))
        return PassOutcome(changes=("nothing",))


SETTINGS = ReconcileSettings(
    resync_period_s=30.0, debounce_ms=50, max_delay_ms=500, backoff_initial_s=0.5, backoff_max_s=4.0
)


def change(r: Reconciler, src: FakeSource, reason: str) -> None:
    """A watch event that changed the world."""
    src.revision += 1
    r.notify(reason)


def make(synced: bool = True) -> tuple[Reconciler, FakeSource, Clock, Recorder]:
    src, clock, rec = FakeSource(synced=synced), Clock(), Recorder()
    return Reconciler(source=src, run_pass=rec, settings=SETTINGS, clock=clock), src, clock, rec


def advance(r: Reconciler, clock: Clock, seconds: float, step: float = 0.01) -> None:
    end = clock.t + seconds
    while clock.t < end - 1e-9:
        clock.t = round(clock.t + step, 6)
        r.poll(clock.t)


def test_first_pass_runs_after_debounce_with_start_reason() -> None:
    r, _, clock, rec = make()
    assert r.poll(clock.t) is None  # debounce not over yet
    advance(r, clock, 0.05)
    assert len(rec.calls) == 1
    assert {"start", "synced"} <= rec.calls[0][1]


def test_burst_of_events_is_coalesced_into_one_pass() -> None:
    r, src, clock, rec = make()
    advance(r, clock, 0.1)
    rec.calls.clear()
    for i in range(100):
        change(r, src, "pod" if i % 2 else "policy")
        advance(r, clock, 0.001, step=0.001)
    advance(r, clock, 0.1)
    assert len(rec.calls) == 1
    assert rec.calls[0][1] == {"pod", "policy"}


def test_steady_event_stream_still_runs_at_max_delay() -> None:
    r, src, clock, rec = make()
    advance(r, clock, 0.1)
    rec.calls.clear()
    for _ in range(200):  # an event every 10 ms for 2 s: debounce never expires
        change(r, src, "pod")
        advance(r, clock, 0.01)
    assert 3 <= len(rec.calls) <= 5  # once per max_delay (500 ms)


def test_event_that_changed_nothing_is_skipped_but_resync_is_not() -> None:
    r, src, clock, rec = make()
    advance(r, clock, 0.1)
    rec.calls.clear()
    r.notify("Lease/MODIFIED")  # a lease renewal: same snapshot content
    advance(r, clock, 0.1)
    assert rec.calls == [] and r.skipped == 1
    change(r, src, "Pod/ADDED")
    advance(r, clock, 0.1)
    assert [reasons for _, reasons in rec.calls] == [frozenset({"Pod/ADDED"})]
    advance(r, clock, 30.0, step=0.5)
    assert [reasons for _, reasons in rec.calls][-1] == frozenset({"resync"})  # drift repair runs anyway


def test_nothing_runs_before_the_source_is_synced() -> None:
    r, src, clock, rec = make(synced=False)
    r.notify("pod")
    advance(r, clock, 5.0)
    assert rec.calls == []
    assert r.heartbeat == clock.t  # the loop is alive while it waits
    src.is_synced = True
    advance(r, clock, 0.05)
    assert len(rec.calls) == 1
    assert {"start", "pod", "synced"} <= rec.calls[0][1]


def test_periodic_resync_without_events() -> None:
    r, _, clock, rec = make()
    advance(r, clock, 0.1)
    rec.calls.clear()
    advance(r, clock, 29.5, step=0.5)
    assert rec.calls == []
    advance(r, clock, 1.0, step=0.5)
    assert [reasons for _, reasons in rec.calls] == [frozenset({"resync"})]


def test_failed_pass_is_retried_with_exponential_backoff_capped() -> None:
    r, _, clock, rec = make()
    rec.fail = "route add 203.0.113.130/32: EPERM"
    times: list[float] = []
    for _ in range(700):
        clock.t = round(clock.t + 0.05, 6)
        if r.poll(clock.t) is not None:
            times.append(clock.t)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert r.last_report is not None and r.last_report.failures_in_a_row == len(times)
    assert all("retry" in reasons for _, reasons in rec.calls[1:])
    rec.fail = None
    advance(r, clock, 5.0, step=0.05)
    assert r.last_report.outcome.ok and r.last_report.failures_in_a_row == 0
    calls = len(rec.calls)
    advance(r, clock, 10.0, step=0.5)
    assert len(rec.calls) == calls  # no more retries after a success


def test_exception_in_pass_is_a_failure_not_a_crash() -> None:
    r, _, clock, rec = make()
    rec.raise_ = RuntimeError("netlink socket closed")
    advance(r, clock, 0.1)
    assert r.last_report is not None
    assert r.last_report.outcome.failures == ("RuntimeError: netlink socket closed",)
    assert r.last_report.retry_at == pytest.approx(clock.t + 0.5, abs=0.06)
    rec.raise_ = None
    advance(r, clock, 0.6)
    assert r.last_report.outcome.ok


def test_backoff_delay_table() -> None:
    assert [backoff_delay(n, SETTINGS) for n in (1, 2, 3, 4, 5, 50)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_event_during_backoff_runs_new_work_without_waiting_for_the_retry() -> None:
    r, src, clock, rec = make()
    rec.fail = "boom"
    advance(r, clock, 0.06)
    assert len(rec.calls) == 1
    rec.fail = None
    change(r, src, "pod")
    advance(r, clock, 0.06)
    assert len(rec.calls) == 2 and "pod" in rec.calls[1][1]


def test_threaded_run_loop_reacts_to_notify_and_stops() -> None:
    src = FakeSource()
    rec = Recorder()
    r = Reconciler(source=src, run_pass=rec, settings=SETTINGS, tick_s=0.05)
    stop = threading.Event()
    t = threading.Thread(target=r.run, args=(stop,))
    t.start()
    try:
        wait_until(lambda: rec.calls, timeout=30, interval=0.01, what="the first pass")
        src.revision = 7  # new content
        src.callbacks[0]("policy")
        wait_until(lambda: len(rec.calls) >= 2, timeout=30, interval=0.01, what="the second pass")
        assert rec.calls[1] == (7, frozenset({"policy"}))
        assert r.heartbeat_age(time.monotonic()) is not None
    finally:
        stop.set()
        r.wake()
        t.join(2)
    assert not t.is_alive()


def test_full_pass_only_for_loop_triggers() -> None:
    from appliance.runtime.reconciling import full_pass

    assert full_pass(frozenset({"resync"})) and full_pass(frozenset({"Pod/ADDED", "retry"}))
    assert full_pass(frozenset({"start", "synced"}))
    assert not full_pass(frozenset({"Pod/ADDED", "Lease/MODIFIED"}))


def test_drift_check_triggers_a_full_pass_over_an_unchanged_snapshot() -> None:
    src, clock, rec = FakeSource(), Clock(), Recorder()
    flushed = [False]
    checks: list[float] = []

    def drifted() -> bool:
        checks.append(clock.t)
        return flushed[0]

    r = Reconciler(source=src, run_pass=rec, settings=SETTINGS, clock=clock, drift_check=drifted, drift_check_s=5)
    advance(r, clock, 0.1)
    rec.calls.clear()
    advance(r, clock, 6.0, step=0.1)
    assert rec.calls == [] and len(checks) == 2  # checked every 5 s, nothing found
    flushed[0] = True  # someone ran `nft flush ruleset`
    advance(r, clock, 5.0, step=0.1)
    assert rec.calls and "drift" in rec.calls[0][1]


def test_a_run_always_reason_runs_over_an_unchanged_snapshot_without_a_full_pass() -> None:
    src, clock, rec = FakeSource(), Clock(), Recorder()
    r = Reconciler(source=src, run_pass=rec, settings=SETTINGS, clock=clock,
                   run_always=frozenset({"endpoint_liveness"}))
    advance(r, clock, 0.1)
    rec.calls.clear()
    r.notify("endpoint_liveness")  # an input outside the snapshot changed (the agent's endpoint probes)
    advance(r, clock, 0.1)
    assert [reasons for _, reasons in rec.calls] == [frozenset({"endpoint_liveness"})]
    assert not full_pass(rec.calls[0][1])
    r.notify("Lease/MODIFIED")
    advance(r, clock, 0.1)
    assert len(rec.calls) == 1 and r.skipped == 1
