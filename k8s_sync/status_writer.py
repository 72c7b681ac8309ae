"""The one status writer: writes planned status (`status_planning`) through `/status` and records Events.

- `submit(snapshot, intent)` never blocks: it replaces the pending work (latest wins) and wakes the worker thread,
  so a slow or absent API server never stalls a reconcile loop.
- Coalescing window: write passes start at least `window_s` apart. The first submission after a quiet window is
  written at once (a new policy gets its status without delay); everything submitted during the window collapses
  into one pass at its end. So during a rollout every object gets at most one patch per window (its `selectedIPs`
  changes with every pod event; the API server must not see a request per pod event). `flush()` skips the wait.
- Only the leader writes (`is_leader`, from `leases.LeaderElection`); followers drop work silently.
- Each write is a JSON merge patch of `status` carrying `metadata.resourceVersion`: if someone changed the object
  since we read it (409 Conflict), the object is fetched again, its status re-planned against it, and the write
  retried (a few times). 404 = deleted meanwhile: nothing to do.
- What we wrote is remembered with the resourceVersion the server returned, and overlays the store's (possibly
  lagging) copy, so the next pass does not rewrite the same status while our own watch event is still in flight.
- Events (core v1) are created only for writes that succeeded, for cluster-scoped objects in `default`.
- Lag, for `k8s_sync.status_metrics`: `pending_objects` (writes of the current or last pass not done yet) and
  `caught_up_at` (wall time of the end of the last pass that left nothing to write).
Log events: `status.written`, `status.conflict`, `status.write_failed`, `event.recorded`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.core.events import EventLogger, error_text
from appliance.core.intent import Intent
from appliance.core.model import API_VERSION
from appliance.core.snapshot import ObjectRef, Snapshot
from k8s_sync.event_filter import EventFilter
from k8s_sync.kubeapi import JSON, ApiError, KubeApi
from k8s_sync.resources import RESOURCES
from k8s_sync.status_planning import STATUS_KINDS, EventSpec, StatusPlan, StatusWrite, plan_status

log = EventLogger(logging.getLogger(__name__))

MAX_CONFLICT_RETRIES = 3


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _rv_int(rv: str) -> int:
    return int(rv) if rv.isdigit() else -1


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteReport:
    written: int = 0
    conflicts: int = 0
    failed: int = 0
    events: int = 0


class StatusWriter:
    def __init__(self, api: KubeApi, objects: Callable[[str], Sequence[JSON]], *,
                 is_leader: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time,
                 identity: str = "egressgw", retry_delay: float = 2.0, window_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`objects(kind)` returns the current raw objects of a kind (the store's `raw_objects`). `window_s`: the
        least time between the starts of two write passes (1 s: status lags pod churn by at most a second, and a
        rollout of hundreds of pods per second costs one patch per changed object per second)."""
        self.api = api
        self._objects = objects
        self._is_leader = is_leader
        self._clock = clock
        self.identity = identity
        self._retry_delay = retry_delay
        self.window_s = window_s
        self._monotonic = monotonic
        #: when the next write pass may start (the coalescing window), and whether a flush waives the wait
        self._next_pass_at = float("-inf")
        self._flushing = 0
        #: True while the worker holds pending work until the window ends (tests, metrics)
        self.holding = False
        self._cond = threading.Condition()
        self._pending: tuple[Snapshot, Intent] | None = None
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._written: dict[ObjectRef, tuple[str, JSON]] = {}
        #: which Events are posted (a per-object budget, no repeats): k8s_sync.event_filter
        self.event_filter = EventFilter()
        self.last_report = WriteReport()
        #: cumulative counts since start (metrics, tests)
        self.totals = {"written": 0, "conflicts": 0, "failed": 0, "events": 0}
        #: status writes planned by the current/last pass and not done yet (k8s_sync.status_metrics)
        self.pending_objects = 0
        #: wall time the writer last had nothing left to write (end of a pass whose writes all went through)
        self.caught_up_at = clock()

    # ----- the non-blocking face -----

    def submit(self, snapshot: Snapshot, intent: Intent) -> None:
        with self._cond:
            self._pending = (snapshot, intent)
            self._cond.notify_all()

    def is_leader(self) -> bool:
        """Whether this writer holds the status lease (only the leader writes)."""
        return self._is_leader()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10.0)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far has been handled (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._pending is not None or self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._flushing -= 1
        return True

    def poke(self) -> None:
        """Wake the worker to re-check its window (an injected `monotonic` clock moved)."""
        with self._cond:
            self._cond.notify_all()

    def _hold(self) -> bool:
        """Under the lock: wait a little if the window is not over; True when the caller must check again."""
        left = self._next_pass_at - self._monotonic()
        if left <= 0 or self._flushing or self._stop:
            self.holding = False
            return False
        self.holding = True
        self._cond.notify_all()
        self._cond.wait(min(left, 0.5))  # bounded: an injected clock moves without notifying
        return True

    def _run(self) -> None:
        retry: tuple[Snapshot, Intent] | None = None
        while True:
            with self._cond:
                while self._pending is None and not self._stop and retry is None:
                    self._cond.wait()
                if self._stop:
                    return
                if self._pending is None and retry is not None:
                    self._cond.wait(self._retry_delay)  # a newer submission supersedes the retry
                    if self._stop:
                        return
                if self._hold():
                    continue
                work = self._pending or retry
                self._pending, retry = None, None
                self._busy = True
                self._next_pass_at = self._monotonic() + self.window_s
            try:
                if work is not None and self._is_leader():
                    report = self.write_once(*work)
                    if report.failed:
                        retry = work
                elif work is not None:  # a follower has nothing to write: it is not behind
                    self.pending_objects, self.caught_up_at = 0, self._clock()
            except Exception:
                log.exception("status.write_failed", cause="unexpected")
                retry = work
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # ----- one pass (synchronous) -----

    def plan(self, snapshot: Snapshot, intent: Intent) -> StatusPlan:
        objects = {kind: self._overlay(kind, self._objects(kind)) for kind in STATUS_KINDS}
        present = {ObjectRef(kind=kind, namespace=str(o["metadata"].get("namespace") or ""),
                             name=str(o["metadata"]["name"])) for kind, objs in objects.items() for o in objs}
        for ref in [r for r in self._written if r not in present]:  # deleted objects: forget what we wrote
            del self._written[ref]
        return plan_status(snapshot, intent, objects, now=rfc3339(self._clock()))

    def write_once(self, snapshot: Snapshot, intent: Intent) -> WriteReport:
        plan = self.plan(snapshot, intent)
        written = conflicts = failed = events = 0
        ok_refs: set[ObjectRef] = set()
        self.pending_objects = len(plan.writes)
        for write in plan.writes:
            result = self._write(write, snapshot, intent)
            if result is None:
                failed += 1
                continue
            self.pending_objects -= 1
            written += result[0] > 0
            conflicts += result[1]
            if result[0]:
                ok_refs.add(write.ref)
        for event in plan.events:
            if event.ref not in ok_refs:
                continue
            if not self.event_filter.admit(event, self._monotonic()):
                log.debug("event.suppressed", object=event.ref, reason=event.reason, message=event.message)
                continue
            if self._record(event):
                events += 1
        report = WriteReport(written=written, conflicts=conflicts, failed=failed, events=events)
        if plan.writes:
            log.info("status.pass", writes=len(plan.writes), written=written, conflicts=conflicts, failed=failed,
                     events=events, revision=snapshot.revision)
        self.last_report = report
        if not failed:
            self.caught_up_at = self._clock()
        for key in self.totals:
            self.totals[key] += getattr(report, key)
        return report

    def _overlay(self, kind: str, objects: Sequence[JSON]) -> list[JSON]:
        out = []
        for obj in objects:
            meta = obj.get("metadata") or {}
            ref = ObjectRef(kind=kind, namespace=str(meta.get("namespace") or ""), name=str(meta.get("name")))
            mine = self._written.get(ref)
            if mine is not None and _rv_int(mine[0]) > _rv_int(str(meta.get("resourceVersion") or "")):
                obj = {**obj, "metadata": {**meta, "resourceVersion": mine[0]}, "status": mine[1]}
            out.append(obj)
        return out

    def _path(self, ref: ObjectRef) -> str:
        return RESOURCES[ref.kind].path(ref.namespace or None, ref.name, "status")

    def _write(self, write: StatusWrite, snapshot: Snapshot, intent: Intent) -> tuple[int, int] | None:
        """(1 if written else 0, conflicts) or None when it failed."""
        conflicts = 0
        for _ in range(MAX_CONFLICT_RETRIES + 1):
            body = {"metadata": {"resourceVersion": write.resource_version}, "status": write.patch}
            try:
                answer = self.api.merge_patch(self._path(write.ref), body)
            except ApiError as e:
                if e.status == 404:
                    return (0, conflicts)
                if e.status != 409:
                    log.warning("status.write_failed", object=write.ref, status=e.status, error=e.message)
                    return None
                conflicts += 1
                log.info("status.conflict", object=write.ref)
                fresh = self._refetch(write.ref)
                if fresh is None:
                    return (0, conflicts)
                again = plan_status(snapshot, intent, {write.ref.kind: [fresh]}, now=rfc3339(self._clock()))
                if not again.writes:
                    return (0, conflicts)
                write = again.writes[0]
                continue
            except Exception as e:  # API away: the worker retries later
                log.warning("status.write_failed", object=write.ref, error=error_text(e))
                return None
            rv = str((answer.get("metadata") or {}).get("resourceVersion") or "")
            self._written[write.ref] = (rv, answer.get("status") or write.status)
            log.debug("status.written", object=write.ref, resource_version=rv)
            return (1, conflicts)
        return None

    def _refetch(self, ref: ObjectRef) -> JSON | None:
        try:
            return self.api.get(RESOURCES[ref.kind].path(ref.namespace or None, ref.name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def _record(self, event: EventSpec) -> bool:
        now = rfc3339(self._clock())
        namespace = event.ref.namespace or "default"
        involved: Mapping[str, Any] = {"apiVersion": API_VERSION, "kind": event.ref.kind, "name": event.ref.name,
                                       "uid": event.uid, **({"namespace": event.ref.namespace}
                                                            if event.ref.namespace else {})}
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{event.ref.name}.", "namespace": namespace},
            "involvedObject": involved, "reason": str(event.reason), "message": event.message,
            "type": str(event.type), "source": {"component": "egressgw"}, "reportingComponent": "egressgw",
            "reportingInstance": self.identity, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.api.create(f"/api/v1/namespaces/{namespace}/events", body)
        except Exception as e:  # events are best effort
            log.warning("event.record_failed", object=event.ref, reason=event.reason, error=error_text(e))
            return False
        log.info("event.recorded", object=event.ref, reason=event.reason, message=event.message)
        return True
