"""The worker agent service: the reconcile loop `resolve -> plan_worker -> apply`, its helpers and its shutdown.

Symmetric to `appliance.gateway.service.GatewayService`, and smaller: a worker announces nothing and has no health
machine. What it owns:

1. The reconcile loop (`appliance.runtime.reconciling`): each pass takes the next intent from the `IntentTracker`
   (pod churn: incremental; otherwise a full resolve whose `previous` is what the status writer recorded, so every
   agent and member resolves `rr` EIPs the same way) and hands it to the data path. A cheap drift check (our nft
   table or a tunnel device gone) asks for a repair pass at once.
2. Data-path liveness (`appliance.agent.endpoint_liveness`, optional): each pass's intent is judged by the probes
   of the tunnel endpoints before it is planned, so whether a steering goes into a tunnel or fails open/closed
   depends on whether some member answers at the endpoint, not on Lease expiry alone; a state change of an endpoint
   wakes the loop for a pass that only touches the affected steer entries.
3. The planners' skips (worker plan and WireGuard plan): logged when they change (`plan.skipped`,
   `plan.skip_cleared`) and counted by reason through the `on_skips` hook.
4. Standing down (`appliance.agent.stand_down`): while the agent's own node is a member of an EgressGateway, the
   gateway service owns the node's data path; the agent removes its kernel state once, logs
   `agent.standing_down`, reports an `AgentStandingDown` note per gateway, suspends its drift check and plans
   nothing; it logs `agent.resuming` and plans in full again when the node stops being a member.
5. Shutdown: a stop request (SIGTERM/SIGINT) ends the loop and stops the helpers in reverse order, WITHOUT removing
   kernel state: the data path keeps forwarding while the agent restarts, and the next start adopts the state.

Everything with I/O is injected (`AgentDeps`), so unit tests run the service with a fake data path and snapshot
source; `appliance.cli.agent` wires the real ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from appliance.agent.datapath import WorkerDataPath
from appliance.agent.endpoint_liveness import LIVENESS_REASON, EndpointLiveness
from appliance.agent.stand_down import member_of, stand_down_notes
from appliance.core.events import EventLogger, error_text
from appliance.core.intent import Intent
from appliance.core.snapshot import Snapshot, SnapshotSource
from appliance.policy.intent_tracking import IntentTracker
from appliance.runtime.config import AgentConfig
from appliance.runtime.lifecycle import Lifecycle
from appliance.runtime.reconciling import PassOutcome, PassReport, Reconciler, full_pass
from appliance.runtime.skips import SkipTracker


@dataclass(kw_only=True)
class AgentDeps:
    source: SnapshotSource
    datapath: WorkerDataPath
    #: started before the loop, stopped (in reverse order) at exit: the cluster sync
    helpers: list[Lifecycle] = field(default_factory=list)
    #: the `previous` intent for `resolve` (the store's `written_intent()`); None = this service's own last intent
    previous: Callable[[], Intent | None] | None = None
    #: metrics hooks (optional): each pass report; the current skip counts by reason when they change
    on_pass: Callable[[PassReport], None] | None = None
    on_skips: Callable[[Mapping[str, int]], None] | None = None
    clock: Callable[[], float] = time.monotonic
    #: the endpoint probes judging each pass's intent (None = Leases alone decide); start/stop it as a helper
    liveness: EndpointLiveness | None = None


class AgentService:
    def __init__(self, cfg: AgentConfig, deps: AgentDeps, *, log: EventLogger | None = None) -> None:
        self.cfg = cfg
        self.deps = deps
        self.log = log or EventLogger("egressgw.agent", node=cfg.node_name)
        self.tracker = IntentTracker()
        self.skips = SkipTracker(self.log, on_counts=deps.on_skips)
        self._stop = threading.Event()
        #: the gateways this node is a member of while the agent stands down; () while it steers
        self.standing_down: tuple[str, ...] = ()
        self.reconciler = Reconciler(
            source=deps.source,
            run_pass=self.run_pass,
            settings=cfg.reconcile,
            clock=deps.clock,
            log=self.log.bind(loop="agent"),
            on_pass=deps.on_pass,
            drift_check=self._drifted,
            run_always=frozenset({LIVENESS_REASON}),
        )
        if deps.liveness is not None:
            deps.liveness.subscribe(self.reconciler.notify)

    def run_pass(self, snapshot: Snapshot, reasons: frozenset[str]) -> PassOutcome:
        """One pass: next intent, converge the data path, report the skips that changed (or stand down)."""
        gateways = member_of(snapshot, self.cfg.node_name)
        if gateways:
            return self._stand_down(gateways)
        full = full_pass(reasons)
        if self.standing_down:
            self.log.info("agent.resuming", gateway=",".join(self.standing_down))
            self.standing_down, full = (), True
        intent = self.tracker.next(snapshot, previous=self.deps.previous).intent
        if self.deps.liveness is not None:
            intent = self.deps.liveness.effective(intent)
        outcome = self.deps.datapath.converge(snapshot, intent, full=full)
        self.skips.update(outcome.skipped)
        return outcome

    def _stand_down(self, gateways: tuple[str, ...]) -> PassOutcome:
        outcome = PassOutcome()
        if not self.standing_down:
            self.log.warning("agent.standing_down", gateway=",".join(gateways),
                             reason="this node is a member of the gateway: the gateway service owns its data path")
            outcome = self.deps.datapath.stand_down()
            self.tracker = IntentTracker()
        # a failed removal is retried: the next pass stands down again
        self.standing_down = gateways if outcome.ok else ()
        notes = stand_down_notes(gateways, self.cfg.node_name)
        self.skips.update(notes)
        return PassOutcome(changes=outcome.changes, failures=outcome.failures, skipped=notes)

    def _drifted(self) -> bool:
        """Standing down, our table and devices are meant to be gone (or a gateway's): nothing to repair."""
        return not self.standing_down and self.deps.datapath.drifted()

    def request_stop(self, reason: str) -> None:
        """Thread-safe (signal handlers): end the loop; the kernel state is kept."""
        self.log.info("agent.stopping", signal=reason, kernel_state="kept")
        self._stop.set()
        self.reconciler.wake()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> int:
        """Start the helpers, run the loop until `request_stop`, stop the helpers. Returns the exit code."""
        started: list[Lifecycle] = []
        try:
            try:
                for helper in self.deps.helpers:
                    helper.start()
                    started.append(helper)
            except Exception as e:
                self.log.exception("agent.start_failed", error=error_text(e))
                return 1
            self.reconciler.run(self._stop)
        finally:
            for helper in reversed(started):
                try:
                    helper.stop()
                except Exception:
                    self.log.exception("helper.stop_failed", helper=type(helper).__name__)
        self.log.info("agent.stopped", passes=self.reconciler.passes, failed_passes=self.reconciler.failed_passes)
        return 0
