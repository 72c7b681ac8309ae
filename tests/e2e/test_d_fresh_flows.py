"""Fresh flows across a failover, through the real lab (BIRD 2, two members with ExaBGP + BFD, a pod behind a
worker, the external server): the quick form of the fresh-flow scenarios of `egressgw bench failover`.

Per repetition a fresh UDP flow and a fresh server-push TCP connection are created through the primary right before
a drain / power-off, plus the long-lived probe; once with conntrack state sync off, once on (a lab each, the
members configured so from the start). Whatever the setting, the record must be complete and consistent, every flow
must have been established through the primary before the fault, and the server must only ever see the EIP (a
failover never leaks a pod address). How much each setting loses is the benchmark's business (docs/benchmarks.md,
"Stateful failover"), not asserted here.
"""

from __future__ import annotations

from typing import Any

import pytest

from lab.bench.failover import ROUTERS, run_router, scenario
from lab.bench.fresh_flows import FRESH_KEYS, SYNC_OFF, SYNC_ON, SyncMode
from tests.e2e.conftest import DEFAULT_EIP_V4

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

PREFIX = "egt-ff-"


RUNS = ["run_sync_off", "run_sync_on"]


def _run(mode: SyncMode, faults: tuple[str, ...], reps: int) -> dict[str, Any]:
    """The lab up with the mode's gateway config from the start, the faults with fresh flows, the lab down."""
    res = run_router("bird", ROUTERS["bird"], (), 0, print, fresh_faults=tuple(scenario(f) for f in faults),
                     fresh_modes=(mode,), fresh_reps=reps, prefix=PREFIX, gateway_overrides=dict(mode.overrides))
    return {"mode": mode.name, "faults": {f"fresh_{f}" for f in faults}, "reps": reps, **res}


@pytest.fixture(scope="module")
def run_sync_off() -> dict[str, Any]:
    return _run(SYNC_OFF, ("drain", "power_off"), 1)


@pytest.fixture(scope="module")
def run_sync_on() -> dict[str, Any]:
    return _run(SYNC_ON, ("drain", "power_off"), 1)


@pytest.fixture(params=RUNS)
def fresh_run(request: pytest.FixtureRequest) -> dict[str, Any]:
    run: dict[str, Any] = request.getfixturevalue(request.param)
    return run


def test_every_fault_ran_and_every_record_is_complete(fresh_run: dict[str, Any]) -> None:
    assert fresh_run["errors"] == {}
    fresh = fresh_run["fresh_flows"]
    assert set(fresh) == fresh_run["faults"]
    for name, modes in fresh.items():
        assert list(modes) == [fresh_run["mode"]], name
        reps = modes[fresh_run["mode"]]["reps"]
        assert len(reps) == fresh_run["reps"]
        for r in reps:
            missing = [k for k in (*FRESH_KEYS, "tcp_survived", "router_convergence_ms", "member") if k not in r]
            assert not missing, (name, missing)


def test_counters_are_consistent(fresh_run: dict[str, Any]) -> None:
    for name, modes in fresh_run["fresh_flows"].items():
        for sc in modes.values():
            reps, summary = sc["reps"], sc["summary"]
            for r in reps:
                assert 0 <= r["fresh_udp_lost"] <= r["fresh_udp_sent"], name
                assert r["fresh_udp_sent"] > 0, name
                assert isinstance(r["tcp_survived"], bool) and isinstance(r["server_push_tcp_survived"], bool)
                assert r["snat_port_changed"] in (True, False, None)
                if r["snat_port_changed"] is not None:
                    assert r["snat_port_changed"] == (r["snat_ports_before"] != r["snat_ports_after"])
                if r["server_push_tcp_survived"]:
                    assert r["server_push_resumed"]
                assert r["server_push_tcp_stall_ms"] is not None and r["server_push_tcp_stall_ms"] >= 0
            assert summary["n"] == len(reps)
            assert summary["fresh_udp_lost"] == sum(r["fresh_udp_lost"] for r in reps)
            assert summary["fresh_udp_sent"] == sum(r["fresh_udp_sent"] for r in reps)
            assert summary["server_push_tcp_survived"] == sum(r["server_push_tcp_survived"] for r in reps)


def test_the_flows_went_through_the_primary_before_the_fault(fresh_run: dict[str, Any]) -> None:
    """The fault hit flows that were up: the UDP flow had answers (with the port the server saw) before the fault,
    the push connection had delivered, and the router moved the EIP away from the faulted member."""
    for name, modes in fresh_run["fresh_flows"].items():
        for sc in modes.values():
            for r in sc["reps"]:
                assert r["fresh_flow_age_ms"] is not None and r["fresh_flow_age_ms"] > 0, name
                assert r["snat_ports_before"], name
                assert r["server_push_connected"], name
                assert r["router_convergence_ms"] is not None, name


def test_the_server_only_ever_saw_the_eip(fresh_run: dict[str, Any]) -> None:
    for name, modes in fresh_run["fresh_flows"].items():
        for sc in modes.values():
            for r in sc["reps"]:
                assert r["fresh_udp_sources"] == [DEFAULT_EIP_V4], name
                assert r["sources"] in ([], [DEFAULT_EIP_V4]), name  # the long-lived probe

