"""The worker agent service with fakes (data path, snapshot source, injected clock): passes converge the data path,
skips are logged only when they change, drift asks for a repair pass, the whole life stops helpers and keeps the
kernel state."""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from appliance.agent.service import AgentDeps, AgentService
from appliance.core.intent import Intent
from appliance.core.snapshot import Snapshot
from appliance.core.waiting import wait_until
from appliance.datapath.apply.conntrack import ConntrackFailure, ConntrackFlushResult, conntrack_changes
from appliance.runtime.config import AgentConfig, parse_agent_config
from appliance.runtime.reconciling import PassOutcome, PassReport
from appliance.runtime.skips import SkipNote
from tests.unit.resolution_builders import gateway, gw_node, node, ns, pod, policy

SKIP = SkipNote(planner="worker", reason="NoTunnelDevice", subject="100.64.1.10", subject_kind="pod_ip", policy="p1")


def world(revision: int = 1) -> Snapshot:
    return Snapshot(
        gateways=(gateway("egw"),),
        policies=(policy("p1", gateway="egw", app="web", eip4="203.0.113.130"),),
        namespaces=(ns("default"),),
        nodes=(gw_node("gw1", "198.51.100.11"), node("w1", "100.127.0.11")),
        pods=(pod("default", "web-1", "100.64.1.10", lbl={"app": "web"}, node_name="w1"),),
        revision=revision,
    )


class Source:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.callbacks: list[Callable[[str], None]] = []

    def synced(self) -> bool:
        return True

    def snapshot(self) -> Snapshot:
        return self.snap

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self.callbacks.append(callback)


class DataPath:
    def __init__(self) -> None:
        self.converged: list[tuple[Intent, bool]] = []
        self.skipped: frozenset[SkipNote] = frozenset()
        self.gone = False
        self.removed = 0

    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> PassOutcome:
        self.converged.append((intent, full))
        return PassOutcome(changes=("rule add",), skipped=self.skipped)

    def drifted(self) -> bool:
        return self.gone

    def remove_all(self) -> tuple[str, ...]:
        self.removed += 1
        return ()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def config(tmp_path: Path) -> AgentConfig:
    raw = {"node_name": "w1", "state_dir": str(tmp_path), "reconcile": {"debounce_ms": 10}}
    return parse_agent_config(raw, source=tmp_path / "agent.yaml", env={})


def make(tmp_path: Path) -> tuple[AgentService, DataPath, Source, Clock, list[Mapping[str, int]], list[PassReport]]:
    clock, dp, source = Clock(), DataPath(), Source(world())
    counts: list[Mapping[str, int]] = []
    reports: list[PassReport] = []
    deps = AgentDeps(source=source, datapath=dp, clock=clock, on_skips=counts.append, on_pass=reports.append)
    return AgentService(config(tmp_path), deps), dp, source, clock, counts, reports


def test_a_pass_resolves_and_converges_the_data_path(tmp_path: Path) -> None:
    svc, dp, _source, clock, _counts, reports = make(tmp_path)
    clock.t += 0.1
    assert svc.reconciler.poll(clock.t) is not None
    ((intent, full),) = dp.converged
    assert full and [str(s.pod_ip) for s in intent.steerings] == ["100.64.1.10"]
    assert len(reports) == 1 and reports[0].outcome.ok


def test_skips_are_logged_when_they_change_not_every_pass(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    svc, dp, source, clock, counts, _ = make(tmp_path)
    caplog.set_level(logging.INFO)
    dp.skipped = frozenset({SKIP})
    for revision in (2, 3, 4):  # three passes with the same skip
        source.snap = world(revision)
        svc.reconciler.notify("resync")
        clock.t += 1.0
        svc.reconciler.poll(clock.t)
    events = [getattr(r, "egressgw_event", "") for r in caplog.records]
    assert events.count("plan.skipped") == 1 and "plan.skip_cleared" not in events
    skipped = next(r for r in caplog.records if getattr(r, "egressgw_event", "") == "plan.skipped")
    assert vars(skipped)["egressgw_fields"] == {"node": "w1", "planner": "worker", "pod_ip": "100.64.1.10",
                                                "reason": "NoTunnelDevice", "policy": "p1"}  # fmt: skip
    dp.skipped = frozenset()
    svc.reconciler.notify("resync")
    clock.t += 1.0
    svc.reconciler.poll(clock.t)
    events = [getattr(r, "egressgw_event", "") for r in caplog.records]
    assert events.count("plan.skip_cleared") == 1
    assert counts == [{"NoTunnelDevice": 1}, {}]
    assert svc.skips.current == frozenset()


def test_drift_asks_for_a_full_repair_pass(tmp_path: Path) -> None:
    svc, dp, _source, clock, _counts, _ = make(tmp_path)
    clock.t += 0.1
    svc.reconciler.poll(clock.t)
    dp.gone = True  # someone flushed our nft table
    clock.t += 10.0
    svc.reconciler.poll(clock.t)
    report = svc.reconciler.poll(clock.t + 1.0)
    assert report is not None and "drift" in report.reasons and dp.converged[-1][1] is True


def test_whole_life_stops_helpers_and_keeps_the_kernel_state(tmp_path: Path) -> None:
    dp, events = DataPath(), []

    class Helper:
        def start(self) -> None:
            events.append("start")

        def stop(self) -> None:
            events.append("stop")

    svc = AgentService(config(tmp_path), AgentDeps(source=Source(world()), datapath=dp, helpers=[Helper()]))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(svc.run()))
    t.start()
    wait_until(lambda: dp.converged, timeout=30, interval=0.01, what="the first converge")
    svc.request_stop("SIGTERM")
    t.join(30)
    assert result == [0] and svc.stopping
    assert events == ["start", "stop"] and dp.converged and dp.removed == 0


def test_a_helper_that_cannot_start_fails_the_service(tmp_path: Path) -> None:
    stopped: list[str] = []

    class Broken:
        def start(self) -> None:
            raise RuntimeError("no API server")

        def stop(self) -> None:
            stopped.append("broken")

    class Fine:
        def start(self) -> None:
            pass

        def stop(self) -> None:
            stopped.append("fine")

    deps = AgentDeps(source=Source(world()), datapath=DataPath(), helpers=[Fine(), Broken()])
    svc = AgentService(config(tmp_path), deps)
    assert svc.run() == 1 and stopped == ["fine"]


def test_conntrack_flush_is_reported_as_it_happened() -> None:
    a, b = ipaddress.ip_address("100.64.1.10"), ipaddress.ip_address("100.64.1.11")
    assert conntrack_changes(ConntrackFlushResult(requested=())) == ()
    ok = ConntrackFlushResult(requested=(a, b), flushed=(a, b), deleted=3, already_gone=1)
    assert conntrack_changes(ok) == ("conntrack flush 100.64.1.10", "conntrack flush 100.64.1.11",
                                     "conntrack deleted 3 entries (1 already gone)")  # fmt: skip
    failed = ConntrackFlushResult(
        requested=(a, b), flushed=(a,), deleted=1,
        failures=(ConntrackFailure(pod_ip=b, entry=None, reason="netlink error 1: EPERM"),),
    )  # fmt: skip
    assert conntrack_changes(failed) == ("conntrack flush 100.64.1.10", "conntrack deleted 1 entries")
    assert failed.problems() == ("conntrack flush 100.64.1.11: listing its entries failed: netlink error 1: EPERM",)
