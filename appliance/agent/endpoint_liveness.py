"""The agent's data-path liveness: each pass's intent, judged by the endpoint probes, before it is planned.

The decision is `appliance.datapath.plan.endpoint_liveness.apply_liveness` (pure; the table there); the probes are
`appliance.datapath.apply.endpoint_probing.EndpointProber` (a thread). This module is the glue the service uses:

- every pass: the endpoints of this node's VXLAN steerings become the prober's targets, and the pass plans the
  effective intent (a steering whose endpoint stopped answering goes to "no gateway"; an instance whose Leases
  expired while its endpoints answer stays carried);
- an endpoint seen for the first time while its Leases say no member is alive (an agent starting during an API
  partition of the gateways, a new EIP) gets one probe round before the pass decides, so a working gateway is not
  failed closed for the first pass;
- a state change of an endpoint wakes the reconcile loop (`notify("endpoint_liveness")`); that pass trusts the
  applier's cache (no kernel observation) and only the affected steer entries change;
- what the probes overrode is logged when it changes (`liveness.overrides`), exported as metrics
  (`LivenessCollector`) and written to `<state_dir>/agent-status.json` (`egressgw`'s agent status document).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance.core.events import EventLogger
from appliance.core.intent import Intent, Steering
from appliance.core.model import IPAddress, TunnelType
from appliance.datapath.apply.endpoint_probing import EchoSocket, EndpointProber, EndpointReport
from appliance.datapath.plan.endpoint_liveness import (
    EndpointState,
    ProbeSettings,
    Verdict,
    apply_liveness,
    probe_targets,
    rewritten_steerings,
)
from appliance.datapath.plan.tunnel import pick_family

#: the reconcile reason of a pass woken by an endpoint state change
LIVENESS_REASON = "endpoint_liveness"
STATUS_FILE = "agent-status.json"


class FamilyProbers:
    """One `EndpointProber` per underlay address of this node (at most one per family), behind the prober's
    interface: a gateway's `spec.tunnel.family` decides which family its endpoints are, so each endpoint is probed
    from this node's address of its own family - the address its tunnel packets come from (each prober takes only
    the targets of its family). `run` runs the first prober and a thread per other one."""

    def __init__(self, sources: Sequence[IPAddress], settings: ProbeSettings,
                 on_change: Callable[[IPAddress, EndpointState], None] | None = None,
                 sockets: Mapping[int, EchoSocket] | None = None) -> None:
        """`sockets`: per IP version, an echo socket to use instead of opening one (tests)."""
        firsts = {a.version: a for a in reversed(sources)}  # the first address of each family
        self.probers = [EndpointProber(a, settings, on_change=on_change, sock=(sockets or {}).get(v))
                        for v, a in sorted(firsts.items())]

    @property
    def on_change(self) -> Callable[[IPAddress, EndpointState], None] | None:
        return self.probers[0].on_change

    @on_change.setter
    def on_change(self, callback: Callable[[IPAddress, EndpointState], None] | None) -> None:
        for p in self.probers:
            p.on_change = callback

    def set_targets(self, targets: Iterable[IPAddress]) -> None:
        wanted = tuple(targets)
        for p in self.probers:
            p.set_targets(wanted)

    def states(self) -> dict[IPAddress, EndpointState]:
        return {ip: st for p in self.probers for ip, st in p.states().items()}

    def reports(self) -> list[EndpointReport]:
        return [r for p in self.probers for r in p.reports()]

    def wait_judged(self, targets: Iterable[IPAddress], timeout: float) -> bool:
        wanted = tuple(targets)
        return all([p.wait_judged(wanted, timeout) for p in self.probers])

    def run(self, stop: threading.Event) -> None:
        threads = [threading.Thread(target=p.run, args=(stop,), name=f"endpoint-prober-v{p.source.version}",
                                    daemon=True) for p in self.probers[1:]]
        for t in threads:
            t.start()
        self.probers[0].run(stop)
        for t in threads:
            t.join(2.0)

    def close(self) -> None:
        for p in self.probers:
            p.close()


class EndpointLiveness:
    """Judges each pass's intent by the endpoint probes; `start`/`stop` run the prober thread (a `Lifecycle`).

    `sources`: every underlay address of this node; probes then go from the address of each endpoint's family
    (`FamilyProbers`). Without them, from `source` only (endpoints of the other family stay unknown: the Leases
    decide for them)."""

    def __init__(self, *, node: str, source: IPAddress, settings: ProbeSettings, state_dir: Path | None = None,
                 prober: EndpointProber | FamilyProbers | None = None, log: EventLogger | None = None,
                 sources: Sequence[IPAddress] = ()) -> None:
        self.node, self.source, self.settings = node, source, settings
        self.log = log or EventLogger("egressgw.agent.liveness", node=node)
        if prober is None and len({a.version for a in sources}) > 1:
            prober = FamilyProbers(sorted(sources, key=lambda a: a != source), settings, on_change=self._on_change)
        self.prober = prober or EndpointProber(source, settings, on_change=self._on_change)
        if prober is not None:
            prober.on_change = self._on_change
        self.status_path = state_dir / STATUS_FILE if state_dir is not None else None
        self._notify: Callable[[str], None] | None = None
        self._rewritten: tuple[Steering, ...] = ()
        self._seen: set[IPAddress] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.verdict = Verdict()
        self._status_error_logged = False

    def subscribe(self, notify: Callable[[str], None]) -> None:
        """`notify(reason)` is called (from the prober's thread) when an endpoint's state changes."""
        self._notify = notify

    def _on_change(self, endpoint: IPAddress, state: EndpointState) -> None:
        if self._notify is not None:
            self._notify(LIVENESS_REASON)

    # ----- Lifecycle -----

    def start(self) -> None:
        if not self.settings.enabled:
            return
        self._thread = threading.Thread(target=self.prober.run, args=(self._stop,), name="endpoint-prober",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.prober.close()

    # ----- each pass -----

    def effective(self, intent: Intent) -> Intent:
        """The intent this pass plans (see the module docstring)."""
        if not self.settings.enabled:
            return intent
        version = self.source.version
        targets = probe_targets(intent, node=self.node, underlay_version=version)
        self.prober.set_targets(targets)
        fresh = [t for t in targets - self._seen if t in _lease_dead_endpoints(intent, self.node, version)]
        self._seen = set(targets)
        if fresh:
            # a target added mid-round is sent at the next round and judged one round later
            self.prober.wait_judged(fresh, 3 * self.settings.round_interval(len(targets)) + 0.1)
        result = apply_liveness(intent, node=self.node, underlay_version=version, states=self.prober.states(),
                                reuse=self._rewritten)
        self._rewritten = rewritten_steerings(intent, result.intent)
        if result.verdict != self.verdict:
            self.log.info("liveness.overrides",
                          down_by_probe=[f"{p}->{e}" for p, e in result.verdict.down_by_probe[:20]],
                          down_by_probe_count=len(result.verdict.down_by_probe),
                          carried_without_lease=list(result.verdict.carried_without_lease))
            self.verdict = result.verdict
        self.write_status()
        return result.intent

    def status(self) -> dict[str, Any]:
        """The agent status document: endpoint probe states and what they overrode."""
        return {
            "node": self.node,
            "probe": {"enabled": self.settings.enabled, "interval_s": self.settings.interval_s,
                      "fall": self.settings.fall, "rise": self.settings.rise, "source": str(self.source)},
            "endpoints": [
                {"endpoint": str(r.endpoint), "state": str(r.state), "misses_in_a_row": r.misses, "sent": r.sent,
                 "answered": r.answered, "last_answer_age_s": r.last_answer_age_s}
                for r in self.prober.reports()
            ],
            "down_by_probe": [{"pod_ip": str(p), "endpoint": str(e)} for p, e in self.verdict.down_by_probe],
            "carried_without_lease": list(self.verdict.carried_without_lease),
            "written_at": time.time(),
        }

    def write_status(self) -> None:
        if self.status_path is None:
            return
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.status(), indent=2) + "\n")
            os.replace(tmp, self.status_path)
        except OSError as e:
            if not self._status_error_logged:
                self.log.warning("liveness.status_write_failed", path=str(self.status_path), error=str(e))
                self._status_error_logged = True


def _lease_dead_endpoints(intent: Intent, node: str, version: int) -> frozenset[IPAddress]:
    """Endpoints of this node's VXLAN steerings whose instance has no Lease-alive member."""
    out: set[IPAddress] = set()
    for s in intent.steerings:
        instance = intent.instance(s.gateway)
        if s.node != node or instance is None or instance.alive or instance.tunnel.type is not TunnelType.VXLAN:
            continue
        endpoint = pick_family(s.endpoints, instance.tunnel.version(version))
        if endpoint is not None:
            out.add(endpoint)
    return frozenset(out)


class LivenessCollector(Collector):
    """Prometheus metrics of the endpoint probes, read at scrape time (no stale label sets)."""

    def __init__(self, liveness: EndpointLiveness) -> None:
        self.liveness = liveness

    def collect(self) -> Iterator[Any]:
        reports = self.liveness.prober.reports()
        state = GaugeMetricFamily(
            "egressgw_endpoint_state",
            "Data-path liveness of each tunnel endpoint this worker steers to (1 for its current state: up = some "
            "member answers the probes, down = fall misses in a row, unknown = never answered, the Lease decides).",
            labels=["endpoint", "state"],
        )
        probes = CounterMetricFamily(
            "egressgw_endpoint_probes", "Echo probes sent to each tunnel endpoint, by result (answered, missed).",
            labels=["endpoint", "result"],
        )
        for r in reports:
            for s in EndpointState:
                state.add_metric([str(r.endpoint), str(s)], 1.0 if r.state is s else 0.0)
            probes.add_metric([str(r.endpoint), "answered"], r.answered)
            probes.add_metric([str(r.endpoint), "missed"], r.sent - r.answered)
        overrides = GaugeMetricFamily(
            "egressgw_liveness_overrides",
            "What the endpoint probes currently override against the Leases: steerings sent to no gateway because "
            "their endpoint is down (down_by_probe), instances carried although no member Lease is fresh "
            "(carried_without_lease).",
            labels=["kind"],
        )
        verdict = self.liveness.verdict
        overrides.add_metric(["down_by_probe"], len(verdict.down_by_probe))
        overrides.add_metric(["carried_without_lease"], len(verdict.carried_without_lease))
        yield state
        yield probes
        yield overrides
