"""Keep egressgw status written: store changes -> (coalesced) resolve -> `StatusWriter.submit`.

A gateway member whose reconcile loop already resolves the intent can call `StatusWriter.submit(snapshot, intent)`
itself; this small driver is for processes that only write status (and the tests). It never runs before the store
is synced, coalesces bursts of events (`debounce`), re-runs every `resync` seconds (status drift, lease expiry), and
passes the previous intent to `resolve` so `rr` EIPs stay where they were.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from appliance.core.intent import Intent
from appliance.core.snapshot import Snapshot, SnapshotSource
from appliance.policy.resolution import resolve
from k8s_sync.kubeapi import KubeApi
from k8s_sync.leases import DEFAULT_NAMESPACE, LeaderElection
from k8s_sync.status_writer import StatusWriter
from k8s_sync.store import Store

log = logging.getLogger(__name__)


class StatusService:
    def __init__(self, source: SnapshotSource, writer: StatusWriter, *, debounce: float = 0.05,
                 resync: float = 30.0,
                 resolver: Callable[[Snapshot, Intent | None], Intent] | None = None,
                 initial_previous: Callable[[], Intent | None] | None = None) -> None:
        """`initial_previous`: the intent to start from (e.g. `oneshot.intent_from_status` over the policies' written
        status), so a restart keeps `rr` EIPs where they were."""
        self.source = source
        self.writer = writer
        self.debounce = debounce
        self.resync = resync
        self._resolver = resolver or (lambda snap, prev: resolve(snap, previous=prev))
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.intent: Intent | None = None
        self._initial_previous = initial_previous
        self.passes = 0

    def start(self) -> None:
        self.source.subscribe(lambda reason: self._dirty.set())
        self.writer.start()
        self._dirty.set()
        self._thread = threading.Thread(target=self._run, name="status-service", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._dirty.set()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.writer.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(self.resync)
            if self._stop.is_set():
                return
            self._stop.wait(self.debounce)
            self._dirty.clear()
            if not self.source.synced():
                continue
            try:
                started = time.monotonic()
                snapshot = self.source.snapshot()
                if self.intent is None and self._initial_previous is not None:
                    self.intent = self._initial_previous()
                self.intent = self._resolver(snapshot, self.intent)
                self.writer.submit(snapshot, self.intent)
                self.passes += 1
                log.debug("status.resolved revision=%d seconds=%.3f", snapshot.revision, time.monotonic() - started)
            except Exception:
                log.exception("status.resolve_failed")


def start_status_writing(api: KubeApi, store: Store, *, identity: str,
                         lease_namespace: str = DEFAULT_NAMESPACE) -> tuple[StatusService, LeaderElection]:
    """The complete status side of a gateway member: leader election + writer + driver, started.

    Only the leader writes; on becoming leader the driver runs a pass at once. Stop with `service.stop()` and
    `election.release()` (hands leadership over without waiting for expiry).
    """
    writer = StatusWriter(api, store.raw_objects, is_leader=lambda: election.is_leader(), identity=identity)
    service = StatusService(
        store, writer,
        initial_previous=store.written_intent)
    election = LeaderElection(api, identity, namespace=lease_namespace,
                              on_change=lambda leader: service.kick() if leader else None)
    election.start()
    service.start()
    return service, election
