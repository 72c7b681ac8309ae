"""The gateway service's order of things with fakes and an injected clock: kernel first, then announce; health
rise/fall and hold-down; maintenance file; drain (withdraw, ack, settle, then remove); status file; full life."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance.cli.gateway import status_command
from appliance.core.intent import Intent
from appliance.core.model import IPAddress
from appliance.core.snapshot import Snapshot
from appliance.core.waiting import wait_until
from appliance.gateway.member_state import StateDir, render_status
from appliance.gateway.service import DataPathResult, GatewayDeps, GatewayService, Phase
from appliance.gateway.view import MemberView
from appliance.runtime.config import GatewayConfig, parse_gateway_config
from appliance.runtime.reconciling import PassOutcome
from appliance.runtime.skips import SkipNote
from bgp.announcing import Announcement, MemberMode
from bgp.health import Check
from tests.unit.resolution_builders import gateway, gw_node, ip, node, ns, pod, policy

EIP = ip("203.0.113.130")


def world() -> Snapshot:
    return Snapshot(
        gateways=(gateway("egw"),),
        policies=(policy("p1", gateway="egw", app="web", eip4=str(EIP)),),
        namespaces=(ns("default"),),
        nodes=(gw_node("gw1", "198.51.100.11"), gw_node("gw2", "198.51.100.12"), node("w1", "100.127.0.11")),
        pods=(pod("default", "web-1", "100.64.1.10", lbl={"app": "web"}, node_name="w1"),),
        revision=1,
    )


class Source:
    def __init__(self, snap: Snapshot, *, synced: bool = True) -> None:
        self.snap, self.is_synced = snap, synced
        self.callbacks: list[Callable[[str], None]] = []

    def synced(self) -> bool:
        return self.is_synced

    def snapshot(self) -> Snapshot:
        return self.snap

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self.callbacks.append(callback)


class DataPath:
    def __init__(self) -> None:
        self.in_place = True
        self.table = True
        self.converged: list[Intent] = []
        self.full: list[bool] = []
        self.removed = 0
        self.skipped: frozenset[SkipNote] = frozenset()

    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> DataPathResult:
        self.converged.append(intent)
        self.full.append(full)
        eips: frozenset[IPAddress] = frozenset(e for i in intent.instances for e in i.eips)
        if not self.in_place:
            return DataPathResult(outcome=PassOutcome(failures=("addr add: EPERM",)), eips_in_place=frozenset())
        return DataPathResult(outcome=PassOutcome(changes=("addr add",), skipped=self.skipped), eips_in_place=eips)

    def checks(self) -> Mapping[Check, bool]:
        return {Check.NFT_TABLE: self.table, Check.TUNNEL_DEVICE: True}

    def remove_all(self) -> tuple[str, ...]:
        self.removed += 1
        return ("table delete",)


class Speaker:
    def __init__(self) -> None:
        self.sets: list[frozenset[Announcement]] = []
        self.acked: frozenset[Announcement] = frozenset()
        self.ack_after_waits = 0
        self.started = self.stopped = False
        self.events: list[str] = []

    def start(self) -> None:
        self.started = True

    def set_announcements(self, announcements: frozenset[Announcement]) -> None:
        self.sets.append(announcements)
        self.events.append(f"set {len(announcements)}")

    def acknowledged(self) -> frozenset[Announcement]:
        return self.acked

    def peer_states(self) -> dict[str, str]:
        return {"198.51.100.1": "up"}

    def wait_converged(self, timeout_s: float) -> bool:
        if self.ack_after_waits > 0:
            self.ack_after_waits -= 1
            return False
        self.acked = self.sets[-1]
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped = True
        self.events.append("stop")

    @property
    def current(self) -> frozenset[Announcement]:
        return self.sets[-1] if self.sets else frozenset()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


BGP = {
    "local_asn": 64513,
    "router_id": "198.51.100.11",
    "peers": [{"address": "198.51.100.1", "asn": 64512}],
    "failback_hold_s": 5,
    "drain": {"timeout_s": 3, "settle_s": 0.5},
}


def config(tmp_path: Path, **extra: Any) -> GatewayConfig:
    raw = {"node_name": "gw1", "bgp": BGP, "state_dir": str(tmp_path), "health": {"fall": 2, "rise": 2}, **extra}
    return parse_gateway_config(raw, source=tmp_path / "gw.yaml", env={})


def make(tmp_path: Path, **extra: Any) -> tuple[GatewayService, DataPath, Speaker, Clock]:
    clock, dp, sp = Clock(), DataPath(), Speaker()
    deps = GatewayDeps(
        source=Source(world()),
        datapath=dp,
        speaker=sp,
        host_checks=lambda: {Check.UPLINK: True},
        clock=clock,
        sleep=clock.sleep,
    )
    svc = GatewayService(config(tmp_path, **extra), deps, state=StateDir(tmp_path))
    return svc, dp, sp, clock


def run_pass(svc: GatewayService, clock: Clock) -> None:
    clock.t += 0.1
    assert svc.reconciler.poll(clock.t) is not None


def tick(svc: GatewayService, clock: Clock, n: int = 1) -> None:
    for _ in range(n):
        clock.t += 1.0
        svc.reconciler.heartbeat = clock.t
        svc.health_tick()


def test_nothing_announced_while_starting_then_hold_down_then_ranked(tmp_path: Path) -> None:
    svc, _dp, sp, clock = make(tmp_path)
    run_pass(svc, clock)
    assert sp.current == frozenset()  # unhealthy (starting): kernel state first, no announcement yet
    tick(svc, clock)
    assert svc.mode is MemberMode.UNHEALTHY_WITHDRAWN and sp.current == frozenset()
    tick(svc, clock)  # rise = 2
    assert svc.health.healthy
    assert str(svc.mode) == MemberMode.HOLD_DOWN
    (a,) = sp.current
    assert a.eip == EIP and a.med is not None and a.med >= 10000  # worst preference during failback hold-down
    tick(svc, clock, 5)  # failback_hold_s = 5
    assert str(svc.mode) == MemberMode.RANKED
    (a,) = sp.current
    assert a.eip == EIP and a.med is not None and a.med < 10000


def test_eip_not_in_place_is_never_announced(tmp_path: Path) -> None:
    svc, dp, sp, clock = make(tmp_path)
    dp.in_place = False
    run_pass(svc, clock)
    tick(svc, clock, 10)
    assert svc.health.healthy and sp.current == frozenset()
    dp.in_place = True
    clock.t += 1.0  # the failed pass is retried with backoff
    svc.reconciler.poll(clock.t)
    assert {a.eip for a in sp.current} == {EIP}


def test_failing_check_withdraws_after_fall(tmp_path: Path) -> None:
    svc, dp, sp, clock = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock, 8)
    assert sp.current
    dp.table = False  # someone flushed our nft table
    tick(svc, clock)
    assert sp.current, "one failed observation must not withdraw (fall = 2)"
    report = svc.reconciler.poll(clock.t + 0.1)  # the failed check asked for a repair pass at once
    assert report is not None and "drift" in report.reasons and dp.full[-1] is True
    tick(svc, clock)
    assert not svc.health.healthy and sp.current == frozenset()
    assert Check.NFT_TABLE in svc.health.failing


def test_stalled_loop_fails_the_heartbeat_check(tmp_path: Path) -> None:
    svc, _dp, _sp, clock = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock, 8)
    svc.reconciler.heartbeat = clock.t
    clock.t += 60  # no loop turn for a minute (a hung apply)
    svc.health_tick()
    svc.health_tick()
    assert not svc.health.healthy and Check.RECONCILE_LOOP in svc.health.failing


def test_maintenance_file_withdraws_at_once(tmp_path: Path) -> None:
    svc, _dp, sp, clock = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock, 8)
    assert sp.current
    (tmp_path / "maintenance").touch()
    tick(svc, clock)
    assert sp.current == frozenset() and svc.health.reason == "Disabled"


def test_drain_withdraws_waits_for_ack_settles_then_removes(tmp_path: Path) -> None:
    svc, dp, sp, clock = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock, 8)
    assert sp.current
    sp.ack_after_waits = 3
    svc.request_drain("drain file")
    svc.request_drain("drain command")  # the file and SIGUSR1 both arrive: no hurry
    start = clock.t
    svc.drain()
    assert sp.current == frozenset()  # withdrawn
    assert sp.acked == frozenset()  # ...and acknowledged
    assert svc.view.drain is not None and svc.view.drain.acknowledged is True and not svc._abort.is_set()
    assert clock.t - start >= 0.5  # settle time spent while the kernel state still forwards
    assert dp.removed == 0
    svc._shutdown([])
    assert sp.events[-1] == "stop" and dp.removed == 1
    doc = StateDir(tmp_path).read_status()
    assert doc is not None and doc["phase"] == Phase.STOPPED and doc["drain"]["state"] == "done"


def test_drain_ack_timeout_is_bounded(tmp_path: Path) -> None:
    svc, _dp, sp, clock = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock, 8)
    sp.ack_after_waits = 10**9

    def never_acked(timeout_s: float) -> bool:
        clock.sleep(timeout_s)
        return False

    sp.wait_converged = never_acked  # type: ignore[method-assign]
    start = clock.t
    svc.request_drain("test")
    svc.drain()
    assert svc.view.drain is not None and svc.view.drain.acknowledged is False
    assert sp.stopped  # sessions closed: the routers withdraw our routes themselves
    assert 3.5 <= clock.t - start <= 3.8  # drain timeout, then the settle time


def test_status_document_and_rendering(tmp_path: Path) -> None:
    svc, _dp, _sp, clock = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock, 3)
    doc = StateDir(tmp_path).read_status()
    assert doc is not None
    assert doc["node"] == "gw1" and doc["health"]["status"] == "Healthy"
    assert doc["announcements"]["desired"] == [f"{EIP}/32 med={doc['announcements']['desired'][0].split('med=')[1]}"]
    assert doc["eips_in_place"] == [str(EIP)]
    text = render_status(doc, running_pid=None, now=time.time())
    assert "Healthy" in text and str(EIP) in text and "198.51.100.1" in text and "not running" in text
    assert status_command(StateDir(tmp_path), as_json=False) == 1  # no live service holds the state dir


def test_whole_life_in_threads_drain_request_from_another_thread(tmp_path: Path) -> None:
    dp, sp = DataPath(), Speaker()
    started: list[str] = []

    class Helper:
        def start(self) -> None:
            started.append("start")

        def stop(self) -> None:
            started.append("stop")

    cfg = parse_gateway_config(
        {
            "node_name": "gw1",
            "bgp": {**BGP, "drain": {"timeout_s": 2, "settle_s": 0.2}},
            "state_dir": str(tmp_path),
            "health": {"fall": 2, "rise": 2, "interval_s": 0.05},
            "reconcile": {"debounce_ms": 10},
        },
        source=tmp_path / "gw.yaml",
        env={},
    )
    deps = GatewayDeps(source=Source(world()), datapath=dp, speaker=sp, helpers=[Helper()])
    state = StateDir(tmp_path)
    state.acquire()
    svc = GatewayService(cfg, deps, state=state)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(svc.run()))
    t.start()
    try:
        wait_until(lambda: sp.current, timeout=30, interval=0.02, what="the first announcements")
        assert {a.eip for a in sp.current} == {EIP}
        assert state.running_pid() is not None
        state.request_drain()  # what `egressgw gateway drain` does (besides SIGUSR1)
        t.join(10)
    finally:
        svc.request_drain("test cleanup")
        t.join(10)
        state.release()
    assert result == [0]
    assert sp.current == frozenset() and sp.stopped and dp.removed == 1
    assert started == ["start", "stop"]


def test_eip_leaving_the_intent_is_withdrawn_before_the_kernel_pass(tmp_path: Path) -> None:
    svc, dp, sp, clock = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock, 8)
    assert {a.eip for a in sp.current} == {EIP}
    seen_at_converge: list[frozenset[Announcement]] = []
    original = dp.converge

    def converge(snapshot: Snapshot, intent: Intent, *, full: bool = True) -> DataPathResult:
        seen_at_converge.append(sp.current)
        return original(snapshot, intent, full=full)

    dp.converge = converge  # type: ignore[method-assign]
    source = svc.deps.source
    assert isinstance(source, Source)
    source.snap = Snapshot(gateways=source.snap.gateways, nodes=source.snap.nodes, revision=2)  # policy deleted
    svc.reconciler.notify("EgressPolicy/DELETED")
    clock.t += 1.0
    svc.reconciler.poll(clock.t)
    assert seen_at_converge == [frozenset()]  # withdrawn before the data path removed the EIP
    assert dp.full == [True, False]  # the first pass observes the kernel, an event-driven one trusts its cache
    assert sp.current == frozenset()


def test_the_view_is_replaced_not_mutated_and_carries_the_skips(tmp_path: Path) -> None:
    svc, dp, _sp, clock = make(tmp_path)
    seen: list[MemberView] = []
    svc.deps.on_tick = seen.append
    first = svc.view
    assert first.phase is Phase.STARTING and first.reconcile is None and first.skipped == frozenset()
    dp.skipped = frozenset({SkipNote(planner="gateway", reason="UnknownWorker", subject="100.64.9.9",
                                     subject_kind="pod_ip", detail="node w9")})  # fmt: skip
    run_pass(svc, clock)
    tick(svc, clock, 3)
    assert svc.view is not first and first.reconcile is None  # a new view each time; the old one is unchanged
    assert seen[-1] is svc.view and len(seen) == 3
    v = svc.view
    assert v.reconcile is not None and v.reconcile.ok and v.reconcile.passes == 1
    assert v.health.healthy and v.eips_in_place == {EIP} and {a.eip for a in v.desired} == {EIP}
    assert [s.reason for s in v.skipped] == ["UnknownWorker"]
    doc = StateDir(tmp_path).read_status()
    assert doc is not None and doc["skipped"] == [
        {"planner": "gateway", "pod_ip": "100.64.9.9", "reason": "UnknownWorker", "detail": "node w9"}
    ]
    dp.skipped = frozenset()
    svc.reconciler.notify("resync")
    clock.t += 1.0
    svc.reconciler.poll(clock.t)
    assert svc.view.skipped == frozenset() and svc.skips.current == frozenset()
