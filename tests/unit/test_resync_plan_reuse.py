"""A resync pass with nothing new reuses the last plan (the applier then only checks the kernel against it); any
change of the intent or of the other inputs plans again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from appliance.datapath.apply import incremental
from appliance.datapath.apply.incremental import IncrementalGateway
from appliance.datapath.apply.netlink import ApplyResult
from appliance.datapath.plan.gateway import GatewaySettings
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent, worker_addresses

GW = Gw(eips=("203.0.113.130",))


def test_gateway_resync_reuses_the_plan_until_an_input_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[object] = []
    real = incremental.plan_gateway

    def counting(*args: object, **kwargs: object) -> object:
        planned.append(args[0])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(incremental, "plan_gateway", counting)
    applied: list[object] = []

    def apply(plan: object, observe: bool = True) -> ApplyResult:
        applied.append(plan)
        return ApplyResult()

    applier = SimpleNamespace(apply=apply, netlink=SimpleNamespace(execute=lambda c: ApplyResult()),
                              shell=SimpleNamespace(netns=None), forget=lambda: None)
    inc = IncrementalGateway(applier, member="gw1", settings=GatewaySettings())  # type: ignore[arg-type]
    workers = worker_addresses()
    intent = build_intent([GW], [Sel(pod_ip="100.64.1.10", policy="a")])
    inc.converge(intent, workers=workers)
    inc.converge(intent, workers=workers)  # the periodic resync: same intent object
    inc.converge(build_intent([GW], [Sel(pod_ip="100.64.1.10", policy="a")]), workers=workers)  # equal intent
    assert len(planned) == 1 and len(applied) == 3
    assert applied[0] is applied[1] is applied[2]
    inc.converge(build_intent([GW], [Sel(pod_ip="100.64.1.11", policy="a")]), workers=workers)
    assert len(planned) == 2
    inc.converge(inc.intent, workers={})  # type: ignore[arg-type]  # the workers changed: plan again
    assert len(planned) == 3


def test_a_failed_apply_forgets_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[object] = []
    real = incremental.plan_gateway
    monkeypatch.setattr(incremental, "plan_gateway",
                        lambda *a, **k: planned.append(a) or real(*a, **k))  # type: ignore[func-returns-value]
    results = [ApplyResult(failures=("nft: boom",)), ApplyResult()]
    applier = SimpleNamespace(apply=lambda plan, observe=True: results.pop(0),
                              netlink=SimpleNamespace(execute=lambda c: ApplyResult()),
                              shell=SimpleNamespace(netns=None), forget=lambda: None)
    inc = IncrementalGateway(applier, member="gw1", settings=GatewaySettings())  # type: ignore[arg-type]
    intent = build_intent([GW], [Sel(pod_ip="100.64.1.10", policy="a")])
    inc.converge(intent, workers=worker_addresses())
    inc.converge(intent, workers=worker_addresses())
    assert len(planned) == 2
