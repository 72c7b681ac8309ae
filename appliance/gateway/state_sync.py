"""The gateway member's conntrack state sync: plan each pass, run the daemons, gate the first announcement, report.

- Each reconcile pass: `plan_state_sync(intent)` (the other members of this member's instances are the peers) and
  `StateSyncDaemons.apply` (only channels that appear, vanish or change are touched).
- A thread of its own ticks the daemons (supervision, resync, statistics) and updates the metrics; a peer that is
  gone only marks its own channel down.
- `ready()`: a member that just started announces nothing before its first full resync from its peers finished
  or timed out (`state_sync.resync_timeout_s`, plus the daemons' start time): so the entries the others hold are in
  its kernel table before the routers can send it traffic. A peer with nothing to send finishes its resync one
  statistics interval after its channel is up (`plan.state_sync.step_resync`), so idle peers do not hold the gate
  until the timeout. Never blocks forever; once ready it stays ready; `ready_reason` says why the gate opened
  (`ReadyReason`).
- `view()` for the `MemberView` (status document, `egressgw gateway status`).

Metrics (gateway `/metrics`): `egressgw_state_sync_peers`, `egressgw_state_sync_peers_up`,
`egressgw_state_sync_peer_up{peer}`, `egressgw_state_sync_entries_{sent,received,lost}_total`,
`egressgw_state_sync_last_resync_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from appliance.core.events import EventLogger, error_text
from appliance.core.intent import Intent
from appliance.datapath.apply.state_sync import START_TIMEOUT_S, PeerState, ResyncState, StateSyncDaemons
from appliance.datapath.plan.state_sync import StateSyncPlan, StateSyncSettings, plan_state_sync
from appliance.gateway.view import PeerSyncView, StateSyncView


class StateSyncMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.peers = Gauge("egressgw_state_sync_peers", "State-sync peers configured (channels planned)",
                           registry=registry)
        self.peers_up = Gauge("egressgw_state_sync_peers_up", "State-sync peers heard from recently",
                              registry=registry)
        self.peer_up = Gauge("egressgw_state_sync_peer_up", "1 when the state-sync peer was heard from recently",
                             ["peer"], registry=registry)
        self.sent = Counter("egressgw_state_sync_entries_sent", "Conntrack entries (local events) sent to peers",
                            registry=registry)
        self.received = Counter("egressgw_state_sync_entries_received",
                                "Conntrack entries received from peers and written into the kernel table",
                                registry=registry)
        self.lost = Counter("egressgw_state_sync_entries_lost",
                            "Sync messages lost in transit plus received entries the kernel refused",
                            registry=registry)
        self.last_resync = Gauge("egressgw_state_sync_last_resync_seconds",
                                 "Duration of the last full resync from a peer", registry=registry)
        self._last: dict[tuple[str, int], tuple[int, int, int]] = {}
        self._labels: set[str] = set()

    def observe(self, states: tuple[PeerState, ...], last_resync_s: float | None) -> None:
        self.peers.set(len(states))
        self.peers_up.set(sum(1 for s in states if s.up))
        names = {s.peer for s in states}
        for gone in self._labels - names:
            self.peer_up.remove(gone)
        self._labels = names
        seen: dict[tuple[str, int], tuple[int, int, int]] = {}
        for s in states:
            self.peer_up.labels(peer=s.peer).set(1 if s.up else 0)
            now = (s.stats.sent, s.stats.received, s.stats.lost)
            before = self._last.get((s.peer, s.port), (0, 0, 0))
            # a restarted daemon counts from zero again
            delta = [n - b if n >= b else n for n, b in zip(now, before, strict=True)]
            self.sent.inc(delta[0])
            self.received.inc(delta[1])
            self.lost.inc(delta[2])
            seen[(s.peer, s.port)] = now
        self._last = seen
        if last_resync_s is not None:
            self.last_resync.set(last_resync_s)


class ReadyReason:
    """Why the announcement gate opened (`GatewayStateSync.ready_reason`, the `state_sync.ready` event)."""

    #: every channel's first resync finished
    RESYNC_DONE = "resync done"
    #: every channel's first resync ended, at least one of them by its own timeout (that peer did not answer)
    RESYNC_TIMED_OUT = "resync timed out"
    #: the gate's overall bound passed before every resync ended
    TIMEOUT = "timeout"
    #: nothing to wait for: no channel (sync off, or no other member)
    NO_PEERS = "no peers"


class GatewayStateSync:
    """Start/stop helper of the gateway service (`Lifecycle`) and its state-sync seam (`StateSync`)."""

    def __init__(self, settings: StateSyncSettings, *, member: str, state_dir: Path,
                 registry: CollectorRegistry | None = None, daemons: StateSyncDaemons | None = None,
                 clock: Callable[[], float] = time.monotonic, log: EventLogger | None = None) -> None:
        self.settings = settings
        self.member = member
        self.clock = clock
        self.log = log or EventLogger("egressgw.gateway", node=member)
        self.daemons = daemons or StateSyncDaemons(state_dir, settings, member=member, clock=clock, log=self.log)
        self.metrics = StateSyncMetrics(registry) if registry is not None else None
        self.plan: StateSyncPlan | None = None
        self._first_plan_at: float | None = None
        self._ready = False
        self.ready_reason: str | None = None
        self._skipped: tuple[tuple[str, str], ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- lifecycle -----

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="state-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        self.daemons.stop_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.daemons.tick()
                if self.metrics is not None:
                    self.metrics.observe(self.daemons.states(), self.daemons.last_resync_seconds)
            except Exception:
                self.log.exception("state_sync.tick_crashed")
            self._stop.wait(0.2)

    # ----- each pass -----

    def converge(self, intent: Intent) -> None:
        """Plan this member's channels and converge the daemons on them (logs what changed and what failed)."""
        plan = plan_state_sync(intent, member=self.member, settings=self.settings)
        skipped = tuple((peer, str(reason)) for peer, reason in plan.skipped)
        if skipped != self._skipped:
            for peer, reason in skipped:
                self.log.warning("state_sync.peer_skipped", peer=peer, reason=reason)
            self._skipped = skipped
        try:
            changes, failures = self.daemons.apply(plan)
        except Exception as e:  # sync must never fail the data path's pass
            changes, failures = (), (f"state sync: {error_text(e)}",)
        for c in changes:
            self.log.info("state_sync.changed", change=c)
        for f in failures:
            self.log.warning("state_sync.channel_failed", error=f)
        self.plan = plan
        if self._first_plan_at is None:
            self._first_plan_at = self.clock()

    def ready(self) -> bool:
        """True once the first full resync is behind us (done, or timed out): the member may announce."""
        if self._ready:
            return True
        if self._first_plan_at is None:
            return False
        waited = self.clock() - self._first_plan_at
        states = self.daemons.states()
        if self.daemons.resync_settled():
            if not states:
                reason = ReadyReason.NO_PEERS
            elif all(s.resync == ResyncState.DONE for s in states):
                reason = ReadyReason.RESYNC_DONE
            else:
                reason = ReadyReason.RESYNC_TIMED_OUT
        elif waited >= self.settings.resync_timeout_s + START_TIMEOUT_S:
            reason = ReadyReason.TIMEOUT
        else:
            return False
        self._ready, self.ready_reason = True, reason
        self.log.info("state_sync.ready", waited_s=round(waited, 3), peers=len(states), reason=reason,
                      resyncs={s.peer: s.resync for s in states})
        return True

    def view(self) -> StateSyncView:
        states = self.daemons.states()
        return StateSyncView(
            ready=self._ready,
            peers=tuple(
                PeerSyncView(peer=s.peer, address=s.address, port=s.port, running=s.running, up=s.up,
                             resync=s.resync, sent=s.stats.sent, received=s.stats.received, lost=s.stats.lost,
                             problem=s.problem)
                for s in states
            ),
            last_resync_s=self.daemons.last_resync_seconds,
            skipped=self._skipped,
        )
