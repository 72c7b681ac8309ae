"""The gateway side of state sync with fakes: config parsing, the announcement gate of a starting member (bounded),
the status document and line, the metrics from daemon statistics."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from appliance.cli.gateway import _state_sync_annotation
from appliance.cli.status import state_sync_lines
from appliance.core.errors import ConfigError
from appliance.core.intent import Intent
from appliance.datapath.apply.state_sync import START_TIMEOUT_S, PeerState
from appliance.datapath.plan.state_sync import ChannelStats, StateSyncPlan, StateSyncSettings
from appliance.gateway.member_state import StateDir, render_status
from appliance.gateway.service import GatewayDeps, GatewayService
from appliance.gateway.state_sync import GatewayStateSync, ReadyReason, StateSyncMetrics
from appliance.gateway.status import state_sync_line, status_document
from appliance.runtime.config import parse_gateway_config
from bgp.health import Check
from k8s_sync.leases import STATE_SYNC_ANNOTATION
from tests.unit.test_gateway_service import EIP, Clock, DataPath, Source, Speaker, config, run_pass, tick, world


class FakeDaemons:
    def __init__(self) -> None:
        self.plans: list[StateSyncPlan] = []
        self.settled = False
        self.peers: tuple[PeerState, ...] = ()
        self.last_resync_seconds: float | None = None

    def apply(self, plan: StateSyncPlan) -> tuple[tuple[str, ...], tuple[str, ...]]:
        self.plans.append(plan)
        return (), ()

    def tick(self) -> None: ...

    def stop_all(self) -> None: ...

    def states(self) -> tuple[PeerState, ...]:
        return self.peers

    def resync_settled(self) -> bool:
        return self.settled or not (self.plans and self.plans[-1].channels)


def peer(name: str, *, up: bool = True, sent: int = 0, received: int = 0, lost: int = 0, port: int = 3800,
         resync: str = "done") -> PeerState:
    return PeerState(peer=name, address="198.51.100.12", port=port, running=True, up=up, resync=resync,
                     resync_seconds=0.4, stats=ChannelStats(sent=sent, received=received, lost=lost))


def gateway_sync(clock: Clock, daemons: FakeDaemons, tmp_path: Path) -> GatewayStateSync:
    return GatewayStateSync(StateSyncSettings(resync_timeout_s=5.0), member="gw1", state_dir=tmp_path,
                            daemons=daemons, clock=clock)  # type: ignore[arg-type]


def make(tmp_path: Path, daemons: FakeDaemons) -> tuple[GatewayService, Speaker, Clock]:
    clock, dp, sp = Clock(), DataPath(), Speaker()
    deps = GatewayDeps(source=Source(world()), datapath=dp, speaker=sp, host_checks=lambda: {Check.UPLINK: True},
                       clock=clock, sleep=clock.sleep, state_sync=gateway_sync(clock, daemons, tmp_path))
    return GatewayService(config(tmp_path), deps, state=StateDir(tmp_path)), sp, clock


def test_a_starting_member_announces_after_its_first_resync(tmp_path: Path) -> None:
    daemons = FakeDaemons()
    svc, sp, clock = make(tmp_path, daemons)
    run_pass(svc, clock)
    assert daemons.plans and [c.peer for c in daemons.plans[-1].channels] == ["gw2"]
    tick(svc, clock, 2)  # healthy (rise 2), the resync still running
    assert svc.health.healthy and sp.current == frozenset()
    daemons.settled = True
    tick(svc, clock)
    assert {a.eip for a in sp.current} == {EIP}
    daemons.settled = False  # later resyncs (a respawned daemon) never withdraw anything
    tick(svc, clock)
    assert {a.eip for a in sp.current} == {EIP}


def test_the_gate_is_bounded(tmp_path: Path) -> None:
    daemons = FakeDaemons()
    svc, sp, clock = make(tmp_path, daemons)
    run_pass(svc, clock)
    tick(svc, clock, 2)
    assert sp.current == frozenset()
    tick(svc, clock, int(5.0 + START_TIMEOUT_S) + 1)  # no peer ever answers
    assert {a.eip for a in sp.current} == {EIP}


@pytest.mark.parametrize(("resyncs", "settled", "wait_s", "reason"), [
    (("done", "done"), True, 0.0, ReadyReason.RESYNC_DONE),
    (("done", "timed_out"), True, 0.0, ReadyReason.RESYNC_TIMED_OUT),
    (("done", "running"), False, 5.0 + START_TIMEOUT_S, ReadyReason.TIMEOUT),
    ((), True, 0.0, ReadyReason.NO_PEERS),
])
def test_the_gate_records_why_it_opened(tmp_path: Path, resyncs: tuple[str, ...], settled: bool, wait_s: float,
                                         reason: str) -> None:
    clock, daemons = Clock(), FakeDaemons()
    daemons.peers = tuple(peer(f"gw{i + 2}", resync=r, port=3800 + i) for i, r in enumerate(resyncs))
    sync = gateway_sync(clock, daemons, tmp_path)
    daemons.resync_settled = lambda: settled  # type: ignore[method-assign]
    sync.converge(world_intent())
    if wait_s:
        assert not sync.ready() and sync.ready_reason is None
        clock.sleep(wait_s)
    assert sync.ready() and sync.ready_reason == reason
    daemons.peers = ()  # decided once: later changes do not rewrite it
    assert sync.ready() and sync.ready_reason == reason


def world_intent() -> Intent:
    return Intent(steerings=(), outcomes=(), instances=(), cluster_cidrs=())


def test_status_document_and_lines(tmp_path: Path) -> None:
    daemons = FakeDaemons()
    daemons.peers = (peer("gw2", sent=3, received=5), peer("gw3", up=False))
    daemons.last_resync_seconds = 0.4123
    svc, _sp, clock = make(tmp_path, daemons)
    run_pass(svc, clock)
    doc = status_document(svc.publish_view())
    s = doc["state_sync"]
    assert s["peers_up"] == 1 and s["last_resync_s"] == 0.412 and s["ready"] is False
    assert [p["peer"] for p in s["peers"]] == ["gw2", "gw3"] and s["peers"][0]["received"] == 5
    line = state_sync_line(s)
    assert "1/2 peers up (gw2 up, gw3 DOWN)" in line and "waiting for the first resync" in line
    text = render_status(doc, running_pid=1, now=0.0)
    assert "state sync:    1/2 peers up" in text and "gw3" in text and "DOWN" in text
    assert state_sync_line(None) == "off"


def test_metrics_count_deltas_across_daemon_restarts() -> None:
    reg = CollectorRegistry()
    m = StateSyncMetrics(reg)
    m.observe((peer("gw2", sent=3, received=5, lost=1),), 0.5)
    m.observe((peer("gw2", sent=4, received=9, lost=1),), 0.5)
    m.observe((peer("gw2", sent=2, received=1, lost=0),), 0.7)  # the daemon restarted: counts from zero
    assert reg.get_sample_value("egressgw_state_sync_entries_sent_total") == 6
    assert reg.get_sample_value("egressgw_state_sync_entries_received_total") == 10
    assert reg.get_sample_value("egressgw_state_sync_entries_lost_total") == 1
    assert reg.get_sample_value("egressgw_state_sync_last_resync_seconds") == 0.7
    assert reg.get_sample_value("egressgw_state_sync_peer_up", {"peer": "gw2"}) == 1
    m.observe((peer("gw3", up=False),), None)
    assert reg.get_sample_value("egressgw_state_sync_peer_up", {"peer": "gw2"}) is None
    assert reg.get_sample_value("egressgw_state_sync_peers") == 1
    assert reg.get_sample_value("egressgw_state_sync_peers_up") == 0


def parse(raw: dict[str, Any]) -> Any:
    return parse_gateway_config({"node_name": "gw1", **raw}, source=Path("/etc/egressgw/gw.yaml"), env={})


def test_config_defaults_and_fields() -> None:
    assert parse({}).state_sync == StateSyncSettings()
    assert parse({}).state_sync.enabled is True
    s = parse({"state_sync": {"enabled": False, "address": "100.64.200.1", "port": 4000, "port_span": 16,
                              "peers": {"gw2": "100.64.200.2"}, "resync_timeout_s": 2}}).state_sync
    assert not s.enabled and s.address == ip_address("100.64.200.1") and (s.port, s.last_port) == (4000, 4015)
    assert s.peers == (("gw2", ip_address("100.64.200.2")),) and s.resync_timeout_s == 2


@pytest.mark.parametrize(("raw", "field"), [
    ({"enabled": "yes"}, "state_sync.enabled"),
    ({"port": 0}, "state_sync.port"),
    ({"port": 65500, "port_span": 100}, "state_sync.port_span"),
    ({"address": "nope"}, "state_sync.address"),
    ({"peers": {"gw2": "x"}}, "state_sync.peers.gw2"),
    ({"peers": ["gw2"]}, "state_sync.peers"),
    ({"portt": 1}, "state_sync"),
])
def test_bad_state_sync_field_is_named(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"state_sync": raw})
    assert e.value.field.startswith(field)


def test_plan_off_when_disabled(tmp_path: Path) -> None:
    clock, daemons = Clock(), FakeDaemons()
    sync = GatewayStateSync(StateSyncSettings(enabled=False), member="gw1", state_dir=tmp_path,
                            daemons=daemons, clock=clock)  # type: ignore[arg-type]
    sync.converge(Intent(steerings=(), outcomes=(), instances=(), cluster_cidrs=()))
    assert daemons.plans[-1].channels == () and sync.ready()


def test_egressgw_status_line_per_member_from_the_lease(tmp_path: Path) -> None:
    daemons = FakeDaemons()
    daemons.peers = (peer("gw2"),)
    svc, _sp, clock = make(tmp_path, daemons)
    run_pass(svc, clock)
    ann = _state_sync_annotation(svc.publish_view())
    assert ann == {STATE_SYNC_ANNOTATION: "1/1 peers up (gw2 up), waiting for the first resync (not announcing yet)"}
    assert _state_sync_annotation(None) == {}
    doc = {"gateways": [{"name": "egw", "members": [{"name": "gw1", "stateSync": "1/1 peers up (gw2 up)"},
                                                     {"name": "gw2", "stateSync": ""}]}]}
    assert state_sync_lines(doc) == ["STATE SYNC", "egw/gw1: 1/1 peers up (gw2 up)"]
    assert state_sync_lines({"gateways": [{"name": "egw", "members": [{"name": "gw1"}]}]}) == []
