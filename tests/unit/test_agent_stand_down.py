"""One node, both roles: the agent stands down while its node is a member of an EgressGateway (the decision from the
snapshot, the service's stand-down/resume with a fake data path: removed once, logged, counted, no drift repair,
a full pass on resume)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.agent.service import AgentDeps, AgentService
from appliance.agent.stand_down import REASON, gateway_owns_table, member_of
from appliance.core.intent import Intent
from appliance.core.snapshot import Snapshot
from appliance.datapath.plan.nft_rendering import NftTable
from appliance.runtime.config import parse_agent_config
from appliance.runtime.reconciling import PassOutcome
from tests.unit.resolution_builders import gateway, gw_node, node, ns, pod, policy


def world(w1_labels: dict[str, str] | None = None, revision: int = 1) -> Snapshot:
    return Snapshot(
        gateways=(gateway("egw"), gateway("edge", selector={"edge": "true"})),
        policies=(policy("p1", gateway="egw", app="web", eip4="203.0.113.130"),),
        namespaces=(ns("default"),),
        nodes=(gw_node("gw1", "198.51.100.11"), node("w1", "100.127.0.11", lbl=w1_labels)),
        pods=(pod("default", "web-1", "100.64.1.10", lbl={"app": "web"}, node_name="w1"),),
        revision=revision,
    )


@pytest.mark.parametrize(("labels", "node_name", "expected"), [
    (None, "w1", ()),
    ({"edge": "true"}, "w1", ("edge",)),
    ({"edge": "true", "role": "gateway"}, "w1", ("edge", "egw")),
    ({"edge": "false"}, "w1", ()),
    (None, "gw1", ("egw",)),
    (None, "not-registered", ()),
])
def test_member_of_matches_the_gateways_node_selector_against_the_own_node(
    labels: dict[str, str] | None, node_name: str, expected: tuple[str, ...]
) -> None:
    assert member_of(world(labels), node_name) == expected


def test_a_gateway_with_appliance_members_only_selects_no_node() -> None:
    snap = world({"edge": "true"})
    snap = replace(snap, gateways=tuple(replace(g, node_selector=None) if g.name == "edge" else g
                                        for g in snap.gateways))
    assert member_of(snap, "w1") == ()


def test_a_table_the_gateway_service_wrote_is_left_alone() -> None:
    gateway_table = NftTable(role="gateway", chains="", sets=(), counters=frozenset())
    worker_table = NftTable(role="worker", chains="", sets=(), counters=frozenset())
    assert gateway_owns_table(gateway_table.comment)
    assert not gateway_owns_table(worker_table.comment)
    assert not gateway_owns_table(None) and not gateway_owns_table("")


class Source:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def synced(self) -> bool:
        return True

    def snapshot(self) -> Snapshot:
        return self.snap

    def subscribe(self, callback: Callable[[str], None]) -> None:
        pass


class DataPath:
    def __init__(self) -> None:
        self.converged: list[bool] = []
        self.stood_down = 0
        self.fail_stand_down = False
        self.gone = False

    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> PassOutcome:
        self.converged.append(full)
        self.gone = False
        return PassOutcome(changes=("rule add",))

    def drifted(self) -> bool:
        return self.gone

    def remove_all(self) -> tuple[str, ...]:
        return ()

    def stand_down(self) -> PassOutcome:
        self.stood_down += 1
        if self.fail_stand_down:
            return PassOutcome(failures=("nft delete table: busy",))
        self.gone = True
        return PassOutcome(changes=("nft table deleted",))


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(tmp_path: Path) -> tuple[AgentService, DataPath, Source, Clock, list[Mapping[str, int]]]:
    clock, dp, source = Clock(), DataPath(), Source(world())
    counts: list[Mapping[str, int]] = []
    cfg = parse_agent_config({"node_name": "w1", "state_dir": str(tmp_path), "reconcile": {"debounce_ms": 10}},
                             source=tmp_path / "agent.yaml", env={})
    return AgentService(cfg, AgentDeps(source=source, datapath=dp, clock=clock, on_skips=counts.append)), dp, \
        source, clock, counts


def step(svc: AgentService, clock: Clock, source: Source, snap: Snapshot | None = None) -> None:
    if snap is not None:
        source.snap = snap
    svc.reconciler.notify("resync")
    clock.t += 1.0
    svc.reconciler.poll(clock.t)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, str]]:
    return [vars(r)["egressgw_fields"] for r in caplog.records if getattr(r, "egressgw_event", "") == name]


def test_the_agent_stands_down_while_its_node_is_a_member_and_resumes_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    svc, dp, source, clock, counts = make(tmp_path)
    step(svc, clock, source)
    assert dp.converged == [True] and svc.standing_down == ()

    for revision in (2, 3):  # the node is labelled into gateway `edge`: removed once, nothing planned
        step(svc, clock, source, world({"edge": "true"}, revision))
    assert dp.stood_down == 1 and dp.converged == [True] and svc.standing_down == ("edge",)
    assert [e["gateway"] for e in events(caplog, "agent.standing_down")] == ["edge"]
    assert counts[-1] == {REASON: 1}
    assert events(caplog, "plan.skipped")[-1]["reason"] == REASON

    for _ in range(3):  # our table is gone on purpose: no drift repair while standing down (resyncs plan nothing)
        clock.t += 15.0
        report = svc.reconciler.poll(clock.t)
        assert report is None or "drift" not in report.reasons
    assert dp.converged == [True] and dp.stood_down == 1

    step(svc, clock, source, world(None, 4))  # the label is removed: a full pass again
    assert dp.converged == [True, True] and svc.standing_down == ()
    assert [e["gateway"] for e in events(caplog, "agent.resuming")] == ["edge"]
    assert counts[-1] == {}


def test_a_failed_removal_is_retried_on_the_next_pass(tmp_path: Path) -> None:
    svc, dp, source, clock, _counts = make(tmp_path)
    dp.fail_stand_down = True
    step(svc, clock, source, world({"edge": "true"}))
    assert dp.stood_down == 1 and svc.standing_down == ()
    dp.fail_stand_down = False
    clock.t += 60.0  # past any backoff
    step(svc, clock, source)
    assert dp.stood_down == 2 and svc.standing_down == ("edge",)
