"""The gateway member service: reconcile kernel state, then announce; health; drain. The I/O pieces are injected.

Order is the product here (DESIGN section 4, "make before break"):

1. The reconcile loop (`appliance.runtime.reconciling`) runs `resolve -> plan_gateway -> apply`. The data path reports
   which EIPs are *in place* in the kernel (address held, SNAT and return routes installed) after each pass.
2. Only then are EIPs announced: the announcement planner (`bgp.announcing`) decides the set from the intent and
   this member's health, and the set is filtered to the EIPs in place. A failed apply never announces what it
   could not carry; an EIP that disappears from the intent is withdrawn before the next pass removes it.
3. Health (`bgp.health`, rise/fall + failback hold-down) is fed every `health.interval_s` by the checks: uplink up,
   tunnel devices present, our nft table present, reconcile heartbeat fresh, optional upstream probe, maintenance
   file absent, not draining. Unhealthy -> withdraw (or worst preference, per `bgp.withdraw_on_unhealthy`).
4. Drain (SIGTERM, SIGUSR1 from `egressgw gateway drain`, or the drain file): the sequence of `bgp.draining`
   (withdraw everything, wait until ExaBGP acknowledged the withdrawal on every peer, bounded by the drain timeout;
   close the sessions when it did not; keep forwarding for the settle time), then stop ExaBGP and BFD, remove our
   kernel state and exit. A second SIGTERM/SIGINT cuts the waits short. Except a SIGTERM/SIGINT on the only live
   member of an instance: there is nobody to drain to, so it is a restart stop: the kernel state stays, ExaBGP stops
   without a NOTIFICATION (graceful restart) and the BFD sidecar is left running (`detach`, BFD stays up: a BFD down
   would make the routers drop the routes they keep for the restart); the routers keep the routes stale until the
   next start, which adopts kernel state and sidecar and sends End-of-RIB only after it stated its announcements
   (`bgp.speaking`). `egressgw gateway drain` always drains.
5. State out: after every pass, health tick and drain step the service publishes a new frozen `MemberView`
   (`service.view`, replaced in one assignment); the status file, the metrics hook and the member Lease read it.
   The planners' skips (data path, WireGuard, announcements) are logged when they change (`plan.skipped`,
   `plan.skip_cleared`) and shown in the view.

Everything with I/O sits behind a small Protocol (`GatewayDataPath`, `Speaker`, `Sidecar`, `Lifecycle`), so unit
tests run the whole sequence with fakes and an injected clock; `appliance.cli.gateway` wires the real ones.
"""

from __future__ import annotations

import os
import threading

from appliance.core.events import EventLogger, error_text
from appliance.core.intent import Intent
from appliance.core.maintenance import drained_by_annotation
from appliance.core.model import IPAddress
from appliance.core.snapshot import Snapshot
from appliance.gateway.member_state import StateDir
from appliance.gateway.seams import (
    DataPathResult,
    GatewayDataPath,
    GatewayDeps,
    Lifecycle,
    Phase,
    Sidecar,
    Speaker,
)
from appliance.gateway.status import render_announcement, status_document
from appliance.gateway.view import DrainView, MemberCondition, MemberView, ReconcileView
from appliance.policy.intent_tracking import IntentTracker
from appliance.runtime.config import GatewayConfig
from appliance.runtime.reconciling import PassOutcome, Reconciler, Trigger, full_pass
from appliance.runtime.skips import SkipNote, SkipTracker, announcement_skips
from bgp.announcing import Announcement, MemberMode, member_mode, plan_announcements
from bgp.draining import DrainProgress, DrainStage, run_drain
from bgp.health import (
    Check,
    HealthConfig,
    HealthReason,
    HealthState,
    heartbeat_ok,
    initial_health,
    step_health,
    step_sessions,
)

__all__ = [
    "DataPathResult",
    "GatewayDataPath",
    "GatewayDeps",
    "GatewayService",
    "Lifecycle",
    "Phase",
    "Sidecar",
    "Speaker",
    "render_announcement",
]


#: seconds a BFD state reading is reused
_BFD_CACHE_S = 1.0


class GatewayService:
    def __init__(
        self, cfg: GatewayConfig, deps: GatewayDeps, *, state: StateDir | None = None, log: EventLogger | None = None
    ) -> None:
        self.cfg = cfg
        self.deps = deps
        self.state = state
        self.log = log or EventLogger("egressgw.gateway", node=cfg.node_name)
        #: guards health, intent, announcements, skips and drain state (health thread, loop thread, drain)
        self.lock = threading.RLock()
        self.phase = Phase.STARTING
        self.health: HealthState = initial_health(deps.clock())
        self.last_checks: dict[Check, bool] = {}
        self.intent: Intent | None = None
        self.snapshot: Snapshot | None = None
        self.eips_in_place: frozenset[IPAddress] = frozenset()
        self.mode: MemberMode | None = None
        self.desired: frozenset[Announcement] = frozenset()
        self.drain_view: DrainView | None = None
        self._draining = False
        self._drain_requested = threading.Event()
        self._abort = threading.Event()
        self._drain_reason = ""
        #: the drain annotation's reason at the last health observation (None = not in maintenance)
        self._maintenance: str | None = None
        #: the stop request allows a restart stop when this member is an instance's only live member
        self._restart_if_sole = False
        #: stopping for a restart: the kernel state and the BFD sidecar stay (set by `run`)
        self._restart_stop = False
        #: the speaker was given a desired set once (not before intent and health are known: End-of-RIB waits)
        self._stated = False
        self._bfd_seen: dict[str, str] = {}
        self._bfd_cache: tuple[float, dict[str, str] | None] | None = None
        #: instances in which this member steps back (stale cluster view), see `bgp.freshness`
        self._stepped_back: frozenset[str] = frozenset()
        self._datapath_skips: frozenset[SkipNote] = frozenset()
        self._announcement_skips: frozenset[SkipNote] = frozenset()
        self.skips = SkipTracker(self.log)
        self.tracker = IntentTracker()
        self.reconciler = Reconciler(
            source=deps.source,
            run_pass=self.run_pass,
            settings=cfg.reconcile,
            clock=deps.clock,
            log=self.log.bind(loop="gateway"),
            on_pass=deps.on_pass,
        )
        self._pid = os.getpid()
        #: the published state: replaced (never mutated) by `publish_view`
        self.view: MemberView = self._build_view({}, {}, frozenset())

    # ----- the pass: kernel first -----

    def run_pass(self, snapshot: Snapshot, reasons: frozenset[str]) -> PassOutcome:
        intent = self.tracker.next(snapshot, previous=self.deps.previous).intent
        me = self.cfg.node_name
        if self.deps.freshness is not None:
            self.deps.freshness.set_instances(intent.instances)
        kept = frozenset(e for i in intent.instances if any(m.name == me for m in i.members) for e in i.eips)
        with self.lock:
            leaving = self.eips_in_place - kept
            # break after withdraw: EIPs this pass will remove from the kernel are withdrawn first
            self.snapshot, self.intent = snapshot, intent
            self.eips_in_place = self.eips_in_place & kept
        if leaving:
            self.update_announcements()
            if self.deps.speaker is not None:
                acked = self.deps.speaker.wait_converged(min(1.0, self.cfg.drain_timeout_s))
                self.log.info("eip.released", eips=sorted(str(e) for e in leaving), withdrawal_acknowledged=acked)
        result = self.deps.datapath.converge(snapshot, intent, full=full_pass(reasons))
        if self.deps.state_sync is not None:
            try:
                self.deps.state_sync.converge(intent)
            except Exception:  # the data path is in place: sync trouble must not fail the pass
                self.log.exception("state_sync.converge_failed")
        with self.lock:
            self.eips_in_place = result.eips_in_place
            self._datapath_skips = result.outcome.skipped
        self.update_announcements()
        if result.outcome.ok and self.deps.publish is not None:
            self.deps.publish(snapshot, intent)
        self.publish_view()
        return result.outcome

    # ----- announcements: only what is in place -----

    def _health_config(self) -> HealthConfig:
        h = self.cfg.health
        spec_hold = 30.0
        intent = self.intent
        if intent is not None:
            mine = [i for i in intent.instances if any(m.name == self.cfg.node_name for m in i.members)]
            if mine:
                spec_hold = max(i.failover.failback_hold_seconds for i in mine)
        hold = self.cfg.bgp.failback_hold(spec_hold) if self.cfg.bgp is not None else spec_hold
        return HealthConfig(fall=h.fall, rise=h.rise, hold_s=hold)

    def update_announcements(self) -> None:
        """Recompute the desired set from intent + health + what is in place, and hand it to the speaker."""
        bgp = self.cfg.bgp
        if bgp is None:
            with self.lock:
                self._update_skips()
            return
        now = self.deps.clock()
        stepped_back = self.deps.freshness.stepped_back() if self.deps.freshness is not None else frozenset()
        with self.lock:
            if stepped_back != self._stepped_back:
                # our cluster view is stale while another member's is fresh (or fresh again): bgp.freshness
                self.log.warning("member.stepped_back" if stepped_back else "member.stepped_forward",
                                 instances=sorted(stepped_back), previous=sorted(self._stepped_back))
                self._stepped_back = stepped_back
            health, draining, intent, snapshot = self.health, self._draining, self.intent, self.snapshot
            in_place = self.eips_in_place
            held_for_sync = False
            if intent is None or snapshot is None:
                mode = member_mode(healthy=health.healthy, draining=draining, in_hold_down=False, settings=bgp)
                desired: frozenset[Announcement] = frozenset()
                self._announcement_skips = frozenset()
            else:
                plan = plan_announcements(
                    instances=intent.instances,
                    gateways={g.name: g for g in snapshot.gateways},
                    me=self.cfg.node_name,
                    healthy=health.healthy,
                    draining=draining,
                    in_hold_down=health.in_hold_down(now),
                    settings=bgp,
                    stepped_back=stepped_back,
                )
                mode = plan.mode
                desired = frozenset(a for a in plan.announcements if a.eip in in_place)
                if desired and not self._sync_ready():
                    # a starting member takes traffic only once its first conntrack resync is done (bounded)
                    self.log.debug("state_sync.announcements_held", eips=sorted(str(a.eip) for a in desired))
                    desired = frozenset()
                    held_for_sync = True
                self._announcement_skips = announcement_skips(plan)
                held_back = sorted(str(a.eip) for a in plan.announcements if a.eip not in in_place)
                if held_back:
                    self.log.debug("eip.not_in_place", eips=held_back)
            self._update_skips()
            old, old_mode = self.desired, self.mode
            self.desired, self.mode = desired, mode
            # a starting member states its set only once it knows it (a pass done, health past Starting): the
            # speaker holds the End-of-RIB until then, so routers keep the routes of a restarted member meanwhile
            known = intent is not None and not held_for_sync and (
                draining or health.healthy or health.reason is not HealthReason.STARTING)
            if known and (desired != old or not self._stated) and self.deps.speaker is not None:
                # under the lock: the loop and health threads both call this; the last computed set must win
                self.deps.speaker.set_announcements(desired)
                self._stated = True
        if desired == old and mode == old_mode:
            return
        if mode != old_mode:
            self.log.info("member.mode", mode=mode, previous=old_mode, health=health.status, reason=health.reason)
        old_by_prefix = {a.prefix: a for a in old}
        for a in sorted(desired - old, key=lambda a: (a.prefix.version, a.prefix)):
            was = old_by_prefix.get(a.prefix)
            self.log.info(
                "eip.announced" if was is None else "eip.repreferred",
                eip=a.eip,
                med=a.med,
                prepends=a.as_path_prepends,
                mode=mode,
            )
        new_prefixes = {a.prefix for a in desired}
        for a in sorted(old, key=lambda a: (a.prefix.version, a.prefix)):
            if a.prefix not in new_prefixes:
                self.log.info("eip.withdrawn", eip=a.eip, mode=mode, reason=health.reason)

    def _sync_ready(self) -> bool:
        s = self.deps.state_sync
        if s is None:
            return True
        try:
            return s.ready()
        except Exception:
            self.log.exception("state_sync.ready_failed")
            return True

    def _update_skips(self) -> None:
        """Hand the union of the planners' skips to the tracker (it logs only changes). Call under the lock."""
        self.skips.update(self._datapath_skips | self._announcement_skips)

    # ----- health -----

    def observe_checks(self) -> dict[Check, bool]:
        now = self.deps.clock()
        results: dict[Check, bool] = {}
        try:
            results.update(self.deps.host_checks())
        except Exception:
            self.log.exception("health.check_crashed", check="host")
            results[Check.UPLINK] = False
        try:
            results.update(self.deps.datapath.checks())
        except Exception:
            self.log.exception("health.check_crashed", check="datapath")
            results[Check.NFT_TABLE] = False
        results[Check.RECONCILE_LOOP] = heartbeat_ok(
            self.reconciler.heartbeat, now=now, max_age_s=self.cfg.health.heartbeat_max_age_s
        ) and (self.reconciler.last_report is not None)
        results[Check.NOT_DISABLED] = not self.cfg.disable_file.exists()
        maintenance = drained_by_annotation(self.snapshot, self.cfg.node_name)
        results[Check.NOT_IN_MAINTENANCE] = maintenance is None
        if maintenance != self._maintenance:
            # the drain annotation (appliance.core.maintenance) appeared, changed or went away
            self.log.info("member.maintenance", drained=maintenance is not None, reason=maintenance,
                          previous=self._maintenance)
            self._maintenance = maintenance
        results[Check.NOT_DRAINING] = not self._draining
        return results

    def health_tick(self) -> None:
        """One observation: checks -> health machine -> announcements -> view -> status file (+ metrics hook)."""
        if self.state is not None and self.state.drain_requested() and not self._drain_requested.is_set():
            self.request_drain("drain file")
        checks = self.observe_checks()
        if not (checks.get(Check.NFT_TABLE, True) and checks.get(Check.TUNNEL_DEVICE, True)):
            self.reconciler.notify(Trigger.DRIFT.value)  # repair now; do not wait for the resync
        now = self.deps.clock()
        sessions = self._sessions_up()
        with self.lock:
            before = self.health
            config = self._health_config()
            # a session back after a loss shorter than `fall` re-arms the failback hold-down (bgp.health)
            self.health = step_sessions(step_health(before, checks, now=now, config=config), sessions, now=now,
                                        config=config)
            self.last_checks = checks
            after = self.health
        if after.session_returns != before.session_returns:
            self.log.info("member.hold_down_rearmed", cause="session_returned",
                          hold_down_s=round(max(0.0, after.hold_until - now), 1))
        if after.status != before.status or after.reason != before.reason:
            self.log.info(
                "member.health",
                status=after.status,
                reason=after.reason,
                failing=[str(c) for c in after.failing],
                hold_down_s=round(max(0.0, after.hold_until - now), 1) if after.healthy else 0,
            )
        elif after.failing != before.failing and after.failing:
            self.log.warning("health.check_failed", failing=[str(c) for c in after.failing], status=after.status)
        self.update_announcements()
        view = self.publish_view()
        self.write_status()
        if self.deps.on_tick is not None:
            self.deps.on_tick(view)

    def _sessions_up(self) -> frozenset[str]:
        """The BGP sessions (`bgp:<peer>`) and BFD sessions (`bfd:<peer>`) that are up now (none without BGP)."""
        sp = self.deps.speaker
        try:
            peers = sp.peer_states() if sp is not None else {}
        except Exception:
            peers = {}
        bfd = self.bfd_states() or {}
        return frozenset({f"bgp:{p}" for p, st in peers.items() if st == "up"}
                         | {f"bfd:{p}" for p, st in bfd.items() if st == "Up"})

    # ----- the published state -----

    def publish_view(self) -> MemberView:
        """Build a new `MemberView` and replace the published one (one assignment: readers never see half)."""
        sp = self.deps.speaker
        acked = sp.acknowledged() if sp is not None else frozenset()
        peers = sp.peer_states() if sp is not None else {}
        bfd = self.bfd_states() or {}
        with self.lock:
            view = self._build_view(peers, bfd, acked)
            self.view = view
        return view

    def _build_view(
        self, peers: dict[str, str], bfd: dict[str, str], acked: frozenset[Announcement]
    ) -> MemberView:
        r = self.reconciler.last_report
        reconcile = None
        if r is not None:
            reconcile = ReconcileView(
                ok=r.outcome.ok,
                duration_s=r.duration_s,
                passes=self.reconciler.passes,
                failed_passes=self.reconciler.failed_passes,
                failures=r.outcome.failures[:5],
            )
        return MemberView(
            node=self.cfg.node_name,
            pid=self._pid,
            phase=self.phase,
            taken_at=self.deps.clock(),
            health=self.health,
            checks=tuple(sorted(self.last_checks.items())),
            mode=self.mode,
            desired=self.desired,
            acknowledged=acked,
            eips_in_place=self.eips_in_place,
            peers=tuple(sorted(peers.items())),
            bfd=tuple(sorted(bfd.items())),
            reconcile=reconcile,
            drain=self.drain_view,
            skipped=self.skips.current,
            conditions=self._datapath_conditions(),
            state_sync=self.deps.state_sync.view() if self.deps.state_sync is not None else None,
        )

    def _datapath_conditions(self) -> tuple[MemberCondition, ...]:
        """The data path's member conditions (`WorkerTrafficSpoofed`); data paths without any (fakes) have none."""
        conditions = getattr(self.deps.datapath, "conditions", None)
        return tuple(conditions()) if conditions is not None else ()

    def bfd_states(self) -> dict[str, str] | None:
        """BFD session state per peer, read from the sidecar at most once a second (it is a `birdc` call, and the
        health tick may run every 200 ms). None without a sidecar or when it does not answer."""
        if self.deps.bfd is None:
            return None
        now = self.deps.clock()
        if self._bfd_cache is None or now - self._bfd_cache[0] >= _BFD_CACHE_S:
            try:
                states: dict[str, str] | None = self.deps.bfd.peer_states()
            except Exception:
                states = None
            self._bfd_cache = (now, states)
            for peer, state in sorted((states or {}).items()):
                if self._bfd_seen.get(peer) != state:
                    self.log.info("bfd.session_changed", peer=peer, state=state, previous=self._bfd_seen.get(peer))
                    self._bfd_seen[peer] = state
        return self._bfd_cache[1]

    def write_status(self) -> None:
        """Write the published view's status document to the state directory."""
        if self.state is None:
            return
        try:
            self.state.write_status(status_document(self.view))
        except OSError as e:
            self.log.warning("status.file_write_failed", error=str(e))

    # ----- drain -----

    def request_drain(self, reason: str, *, hurry_if_repeated: bool = False, restart_if_sole: bool = False) -> None:
        """Thread-safe (signal handlers): ask the main loop to drain and exit. A repeated request with
        `hurry_if_repeated` (a second SIGTERM/SIGINT) cuts the waits short; `egressgw gateway drain` both writes the
        drain file and sends SIGUSR1, so those repeat without hurrying. `restart_if_sole` (SIGTERM/SIGINT): when this
        member is the only live member of one of its instances, stop without draining (`sole_member_instances`)."""
        if self._drain_requested.is_set():
            if hurry_if_repeated:
                self._abort.set()
                self.log.warning("drain.hurried", reason=reason)
            return
        self._drain_reason = reason
        self._restart_if_sole = restart_if_sole
        self._drain_requested.set()

    def sole_member_instances(self) -> tuple[str, ...]:
        """The instances with EIPs in which this member is the only live member (no other member's Lease is fresh):
        draining there would only take the EIPs off the routers, nobody could take them over."""
        me = self.cfg.node_name
        with self.lock:
            intent = self.intent
        if intent is None:
            return ()
        out = []
        for inst in intent.instances:
            names = {m.name for m in inst.members}
            if me not in names or not inst.eips:
                continue
            others = names - {me}
            if not (others & inst.alive if inst.alive else others):
                out.append(inst.name)
        return tuple(sorted(out))

    def drain(self) -> None:
        """Run the drain sequence (`bgp.draining.run_drain`): withdraw, wait for the acks (bounded), close the
        sessions when unacknowledged, settle while still forwarding. Kernel state stays in place."""
        with self.lock:
            self.phase = Phase.DRAINING
            self._draining = True
        self.log.info("drain.started", reason=self._drain_reason, timeout_s=self.cfg.drain_timeout_s)
        run_drain(
            _ServiceDrain(self),
            timeout_s=self.cfg.drain_timeout_s,
            settle_s=self.cfg.drain_settle_s,
            clock=self.deps.clock,
            sleep=self.deps.sleep,
            hurried=self._abort.is_set,
            on_progress=self._drain_progress,
        )

    def _drain_progress(self, p: DrainProgress) -> None:
        """Each stage of the drain: the view and status file follow it, and it is logged."""
        with self.lock:
            self.drain_view = DrainView(state=str(p.stage), reason=self._drain_reason, acknowledged=p.acknowledged)
        self.publish_view()
        if p.stage is DrainStage.DONE:
            total_ms = round(((p.finished or p.started) - p.started) * 1000, 1)
            self.log.info("drain.done", acknowledged=p.acknowledged, total_ms=total_ms)
            return
        self.write_status()
        if p.stage is DrainStage.SETTLING:
            self.log.info("drain.withdrawn", acknowledged=p.acknowledged, waited_ms=round(p.ack_wait_s * 1000, 1))

    # ----- the whole life -----

    def run(self, *, tick_stop: threading.Event | None = None) -> int:
        """Start everything, tick health until a drain is requested, drain, shut down. Returns the exit code."""
        loop_stop = threading.Event()
        health_stop = tick_stop or threading.Event()
        started: list[Lifecycle] = []
        threads: list[threading.Thread] = []
        try:
            try:
                for helper in self.deps.helpers:
                    helper.start()
                    started.append(helper)
                if self.deps.bfd is not None:
                    self.deps.bfd.start()
                if self.deps.speaker is not None:
                    self.deps.speaker.start()
            except Exception as e:
                self.log.exception("gateway.start_failed", error=error_text(e))
                return 1
            threads.append(threading.Thread(target=self.reconciler.run, args=(loop_stop,), name="reconcile"))
            threads.append(threading.Thread(target=self._health_loop, args=(health_stop,), name="health"))
            for t in threads:
                t.daemon = True
                t.start()
            with self.lock:
                self.phase = Phase.RUNNING
            self.publish_view()
            self.log.info("gateway.started", state_dir=self.cfg.state_dir, bgp=self.cfg.bgp is not None)
            while not self._drain_requested.wait(0.5):
                if health_stop.is_set():
                    break
            sole = self.sole_member_instances() if self._restart_if_sole else ()
            if sole:
                self._restart_stop = True
                self.log.info("gateway.restart_stop", reason=self._drain_reason, sole_member_of=list(sole),
                              kernel_state="kept")
            elif self._drain_requested.is_set():
                self.drain()
            health_stop.set()
            loop_stop.set()
            self.reconciler.wake()
            for t in threads:
                t.join(10.0)
            return 0
        finally:
            self._shutdown(started)

    def _health_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.health_tick()
            except Exception:
                self.log.exception("health.tick_crashed")
            stop.wait(self.cfg.health.interval_s)

    def _shutdown(self, started: list[Lifecycle]) -> None:
        if self.deps.speaker is not None:
            try:
                self.deps.speaker.stop()
            except Exception:
                self.log.exception("bgp.stop_failed")
        if self.deps.bfd is not None:
            try:
                if self._restart_stop:  # BFD stays up: the routers keep our routes through the restart
                    self.deps.bfd.detach()
                else:
                    self.deps.bfd.stop()
            except Exception:
                self.log.exception("bfd.stop_failed")
        if self._draining:
            try:
                removed = self.deps.datapath.remove_all()
                self.log.info("kernel.removed", changes=len(removed))
            except Exception:
                self.log.exception("kernel.remove_failed")
        for helper in reversed(started):
            try:
                helper.stop()
            except Exception:
                self.log.exception("helper.stop_failed", helper=type(helper).__name__)
        with self.lock:
            self.phase = Phase.STOPPED
        try:
            self.publish_view()
        except Exception:
            self.log.exception("status.view_failed")
        self.write_status()
        self.log.info("gateway.stopped", drained=self._draining)


class _ServiceDrain:
    """The drain sequence's effects on a gateway service (`bgp.draining.DrainIO`)."""

    def __init__(self, svc: GatewayService) -> None:
        self._svc = svc

    def withdraw(self) -> None:
        """The member is draining: the planner now plans no announcements (or a de-preferred set)."""
        self._svc.update_announcements()

    def wait_acknowledged(self, timeout_s: float) -> bool:
        speaker = self._svc.deps.speaker
        return True if speaker is None else speaker.wait_converged(timeout_s)

    def close_sessions(self) -> None:
        """No ack in time (a peer down, ExaBGP stuck): closing the sessions is a withdrawal the routers act on."""
        speaker = self._svc.deps.speaker
        if speaker is not None:
            self._svc.log.warning(
                "drain.closing_sessions", reason="withdrawal not acknowledged within the drain timeout"
            )
            speaker.stop()
        if self._svc.deps.bfd is not None:
            # with graceful restart the closed sessions leave our routes stale on the routers: a BFD that stops
            # without AdminDown makes them drop the routes now (docs/routers.md, graceful restart)
            self._svc.deps.bfd.stop(abrupt=True)
