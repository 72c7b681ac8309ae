"""SIGTERM on an instance's only live member is a restart stop (kernel state and announcements kept, nothing
withdrawn: the routers keep the routes through graceful restart); with another member alive it drains; the drain
command always drains. A starting member states its announcements only once it knows them (End-of-RIB waits)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.core.waiting import wait_until
from appliance.gateway.member_state import StateDir
from appliance.gateway.service import GatewayDeps, GatewayService
from appliance.runtime.config import parse_gateway_config
from tests.unit.test_gateway_service import BGP, EIP, DataPath, Source, Speaker, make, run_pass, tick, world


def one_member_world() -> object:
    snap = world()
    return replace(snap, nodes=tuple(n for n in snap.nodes if n.name != "gw2"))


def run_until_announced(tmp_path: Path, snap: object, stop: str) -> tuple[int, DataPath, Speaker, GatewayService]:
    dp, sp = DataPath(), Speaker()
    cfg = parse_gateway_config(
        {"node_name": "gw1", "bgp": {**BGP, "drain": {"timeout_s": 2, "settle_s": 0.1}}, "state_dir": str(tmp_path),
         "health": {"fall": 2, "rise": 2, "interval_s": 0.05}, "reconcile": {"debounce_ms": 10}},
        source=tmp_path / "gw.yaml", env={})
    state = StateDir(tmp_path)
    state.acquire()
    svc = GatewayService(cfg, GatewayDeps(source=Source(snap), datapath=dp, speaker=sp), state=state)  # type: ignore[arg-type]
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(svc.run()))
    t.start()
    try:
        wait_until(lambda: sp.current, timeout=30, interval=0.02, what="the first announcements")
        if stop == "sigterm":
            svc.request_drain("SIGTERM", hurry_if_repeated=True, restart_if_sole=True)
        else:
            state.request_drain()  # `egressgw gateway drain`
        t.join(10)
    finally:
        svc.request_drain("test cleanup")
        t.join(10)
        state.release()
    return result[0], dp, sp, svc


def test_sigterm_on_the_only_member_keeps_kernel_state_and_routes(tmp_path: Path) -> None:
    code, dp, sp, svc = run_until_announced(tmp_path, one_member_world(), "sigterm")
    assert code == 0 and sp.stopped
    assert svc.sole_member_instances() == ("egw",)
    assert dp.removed == 0  # the kernel state stays for the next start to adopt
    assert {a.eip for a in sp.current} == {EIP}  # never withdrawn: the routers keep the route (graceful restart)
    assert "set 0" not in sp.events[1:]


@pytest.mark.parametrize("snap, stop", [(world(), "sigterm"), (one_member_world(), "drain command")])
def test_sigterm_with_another_member_alive_or_the_drain_command_drain(tmp_path: Path, snap: object,
                                                                       stop: str) -> None:
    code, dp, sp, _svc = run_until_announced(tmp_path, snap, stop)
    assert code == 0 and sp.stopped
    assert sp.current == frozenset() and dp.removed == 1


def test_sole_member_counts_only_live_other_members(tmp_path: Path) -> None:
    svc, _dp, _sp, clock = make(tmp_path)
    run_pass(svc, clock)
    assert svc.sole_member_instances() == ()  # gw2 is a member too (liveness unknown: alive)
    assert svc.intent is not None
    svc.intent = replace(svc.intent, instances=tuple(replace(i, alive=frozenset({"gw1"}))
                                                     for i in svc.intent.instances))
    assert svc.sole_member_instances() == ("egw",)  # gw2's Lease expired: nobody to drain to


def test_a_starting_member_states_no_set_before_it_knows_it(tmp_path: Path) -> None:
    svc, _dp, sp, clock = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock)  # still Starting (rise = 2): the speaker is told nothing, so End-of-RIB waits
    assert sp.sets == []
    tick(svc, clock)
    assert [{a.eip for a in s} for s in sp.sets] == [{EIP}]
