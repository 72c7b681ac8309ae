"""Per-policy drop counters of a worker (plan.policy_drops, worker_nft, apply.metrics, the pod-churn fast path):
rendering, the pure aggregation, cardinality, the exported metric and the fast path's fallback."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.core.intent import Intent
from appliance.core.model import NoGatewayAction
from appliance.datapath.apply import incremental
from appliance.datapath.apply.incremental import IncrementalWorker
from appliance.datapath.apply.metrics import register
from appliance.datapath.apply.netlink import ApplyResult
from appliance.datapath.plan.nft_rendering import mark
from appliance.datapath.plan.policy_counters import NODE_IP, PolicyLabels
from appliance.datapath.plan.policy_drops import (
    DropLabels,
    PolicyDropReason,
    drop_counter,
    drop_labels,
    drop_readings,
)
from appliance.datapath.plan.worker import SourceBinding, SourceValidation, WorkerPlan, WorkerSettings, plan_worker
from appliance.datapath.plan.worker_nft import worker_table
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent

U4 = ip_address("100.127.0.11")
LIVE = Gw(name="live", eips=("203.0.113.130", "2001:db8:e1::2"))
DEAD = Gw(name="dead", members=("gw2",), alive=(), eips=("203.0.113.140", "203.0.113.141", "2001:db8:e1::9"))
OPEN = Gw(name="open", members=("gw3",), alive=(), eips=("203.0.113.150",),
          no_gateway_action=NoGatewayAction.FAIL_OPEN)
NO_GW, UNBOUND = PolicyDropReason.NO_GATEWAY, PolicyDropReason.SOURCE_UNBOUND


def _plan(sels: list[Sel], *, settings: WorkerSettings | None = None,
          bindings: list[SourceBinding] | None = None) -> WorkerPlan:
    return plan_worker(build_intent([LIVE, DEAD, OPEN], sels), node="worker1", underlay=U4,
                       settings=settings or WorkerSettings(), source_bindings=bindings)


def _drop(policy: str, eip: str, reason: PolicyDropReason = NO_GW, family: str = "4") -> DropLabels:
    return DropLabels(labels=PolicyLabels(namespace="default", policy=policy, eip=eip, family=family,
                                          kind="EgressPolicy"), reason=reason)


def test_fail_closed_pods_feed_one_counter_per_policy_eip_family() -> None:
    plan = _plan([
        Sel(pod_ip="100.64.1.10", gateway="dead", policy="a", eip="203.0.113.140"),
        Sel(pod_ip="100.64.1.11", gateway="dead", policy="a", eip="203.0.113.140"),
        Sel(pod_ip="2001:db8:64:1::10", gateway="dead", policy="a", eip="2001:db8:e1::9"),
        Sel(pod_ip="100.64.1.12", gateway="live", policy="b"),  # forwarded: no drop counter, no element
        Sel(pod_ip="100.64.1.13", gateway="dead", policy="c", eip=None),  # useNodeIP
        Sel(pod_ip="100.64.1.14", gateway="open", policy="o", eip="203.0.113.150"),  # fail open: leaves, not dropped
    ])
    a4, a6, c4 = _drop("a", "203.0.113.140"), _drop("a", "2001:db8:e1::9", family="6"), _drop("c", NODE_IP)
    labels = drop_labels(plan)
    assert set(labels.values()) == {a4, a6, c4}
    table = worker_table(plan)
    assert set(labels) <= table.counters
    assert table.set("pdpod4").elements == {("100.64.1.10", drop_counter(a4)), ("100.64.1.11", drop_counter(a4)),
                                            ("100.64.1.13", drop_counter(c4))}
    assert table.set("pdpod6").elements == {("2001:db8:64:1::10", drop_counter(a6))}
    assert table.set("pddst4").elements == frozenset() == table.set("pddst6").elements


def test_a_pod_ip_in_two_dropped_policies_is_keyed_by_destination() -> None:
    plan = _plan([
        Sel(pod_ip="100.64.1.10", gateway="dead", policy="a", eip="203.0.113.140", destinations=("203.0.113.0/28",)),
        Sel(pod_ip="100.64.1.10", gateway="dead", policy="b", eip="203.0.113.141", destinations=("203.0.113.32/28",)),
        # a second steering to a live instance does not count: its packets are forwarded
        Sel(pod_ip="100.64.1.11", gateway="dead", policy="a", eip="203.0.113.140", destinations=("203.0.113.0/28",)),
        Sel(pod_ip="100.64.1.11", gateway="live", policy="l", destinations=("203.0.113.64/28",)),
    ])
    table = worker_table(plan)
    a, b = drop_counter(_drop("a", "203.0.113.140")), drop_counter(_drop("b", "203.0.113.141"))
    assert table.set("pdpod4").elements == {("100.64.1.11", a)}
    assert table.set("pddst4").elements == {("100.64.1.10 . 203.0.113.0/28", a), ("100.64.1.10 . 203.0.113.32/28", b)}


def test_only_dropped_packets_reach_the_per_policy_lookup() -> None:
    plan = _plan([Sel(pod_ip="100.64.1.10", gateway="dead", policy="a", eip="203.0.113.140")])
    chains = worker_table(plan).chains
    pre = chains.split("chain prerouting {")[1].split("}")[0]
    # one rule per drop reason in the hot chain, as before: a forwarded packet tests the same single condition
    assert f"meta mark {mark(plan.marks.drop_mark)} jump no_gateway" in pre
    assert "policy_drops" not in pre and "counter name drop_no_gateway" not in pre
    no_gw = chains.split("chain no_gateway {")[1].split("}")[0]
    assert no_gw.split() == ["jump", "policy_drops", "counter", "name", "drop_no_gateway", "drop"]
    lookups = chains.split("chain policy_drops {")[1].split("}")[0]
    assert "ip saddr map @pdpod4 return" in lookups and "ip saddr . ip daddr map @pddst4" in lookups


def test_unbound_pod_ips_count_their_steered_policies_in_strict_mode() -> None:
    sels = [Sel(pod_ip="100.64.1.10", gateway="live", policy="a"), Sel(pod_ip="100.64.1.11", gateway="live",
                                                                          policy="b", eip="203.0.113.130")]
    bound = [SourceBinding(pod_ip=ip_address("100.64.1.11"), interface="veth-b", bridge="")]
    strict = _plan(sels, bindings=bound)
    assert strict.unbound == (ip_address("100.64.1.10"),)
    a = _drop("a", "203.0.113.130", UNBOUND)
    assert drop_labels(strict) == {drop_counter(a): a}
    table = worker_table(strict)
    assert table.set("pdpod4").elements == {("100.64.1.10", drop_counter(a))}
    assert "ip saddr @unbound4 jump source_unbound" in table.chains
    assert table.chains.split("chain source_unbound {")[1].split("}")[0].split() == [
        "jump", "policy_drops", "counter", "name", "drop_source_unbound", "drop"]
    rpf = _plan(sels, bindings=bound, settings=WorkerSettings(source_validation=SourceValidation.RPF))
    assert drop_labels(rpf) == {} and "source_unbound" not in worker_table(rpf).chains


def test_cardinality_follows_policies_not_pods() -> None:
    sels = [Sel(pod_ip=f"100.64.{i >> 8}.{i & 0xFF}", gateway="dead", policy=f"p{i % 5}",
                eip=("203.0.113.140", "203.0.113.141")[i % 2]) for i in range(1, 1500)]
    labels = drop_labels(_plan(sels))
    assert len(labels) == 10  # 5 policies x the 2 EIPs they use
    assert all(not v.labels.policy.startswith("100.") for v in labels.values())


def test_counter_names_differ_per_reason_and_are_short() -> None:
    long = _drop("p" * 253, "2001:db8:e1::9", family="6")
    assert drop_counter(long).startswith("pold_") and len(drop_counter(long)) < 32
    assert drop_counter(_drop("a", "203.0.113.140")) != drop_counter(_drop("a", "203.0.113.140", UNBOUND))


def test_readings_of_known_counters_only_become_samples() -> None:
    a = _drop("a", "203.0.113.140")
    known = {drop_counter(a): a}
    assert drop_readings({drop_counter(a): (7, 700), "pold_gone": (3, 3), "drop_no_gateway": (9, 900)}, known) == {
        a: 7}
    reg = CollectorRegistry()
    register(reg, lambda: {drop_counter(a): (7, 700), "drop_no_gateway": (9, 900)}, role="worker",
             policy_drops=lambda: known)
    text = generate_latest(reg).decode()
    assert ('egressgw_policy_dropped_packets_total{eip="203.0.113.140",family="4",namespace="default",'
            'policy="a",reason="no_gateway"} 7.0') in text
    assert "egressgw_policy_packets_total" not in text  # the traffic families are the gateway's
    assert 'egressgw_datapath_dropped_packets_total{reason="no_gateway",role="worker"} 9.0' in text


class _Shell:
    netns = None

    def __init__(self) -> None:
        self.inputs: list[str] = []

    def run(self, argv: list[str], input: str | None = None, check: bool = True) -> tuple[int, str, str]:
        self.inputs.append(input or "")
        return 0, "", ""


def test_fast_path_feeds_existing_drop_counters_and_falls_back_for_new_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[object] = []
    shell = _Shell()
    # the nft transactions go through apply.nft_exec: record their text instead
    monkeypatch.setattr(incremental, "run_nft", lambda text, netns: shell.run(["nft", "-f", "-"], input=text))

    def apply(plan: object, observe: bool = True) -> ApplyResult:
        applied.append(plan)
        return ApplyResult()

    applier = SimpleNamespace(apply=apply, netlink=SimpleNamespace(execute=lambda changes: ApplyResult()),
                              shell=shell, forget=lambda: None)
    inc = IncrementalWorker(applier, node="worker1", underlay=U4, settings=WorkerSettings())  # type: ignore[arg-type]

    def intent(sels: list[Sel]) -> Intent:
        return build_intent([LIVE, DEAD], sels)

    first = intent([Sel(pod_ip="100.64.1.10", gateway="dead", policy="a", eip="203.0.113.140")])
    inc.converge(first)
    a = drop_counter(_drop("a", "203.0.113.140"))
    assert set(inc.policy_drops) == {a}
    second = intent([Sel(pod_ip="100.64.1.10", gateway="dead", policy="a", eip="203.0.113.140"),
                     Sel(pod_ip="100.64.1.11", gateway="dead", policy="a", eip="203.0.113.140")])
    second = replace(second, steerings=(first.steerings[0], second.steerings[1]))
    inc.converge(second, full=False)
    assert len(applied) == 1  # the delta path
    assert f'add element inet egressgw pdpod4 {{ 100.64.1.11 : "{a}" }}' in shell.inputs[-1]
    third = replace(second, steerings=(second.steerings[0],))
    inc.converge(third, full=False)
    assert len(applied) == 1 and "delete element inet egressgw pdpod4 { 100.64.1.11 }" in shell.inputs[-1]
    newcomer = intent([Sel(pod_ip="100.64.1.12", gateway="dead", policy="new", eip="203.0.113.141")]).steerings[0]
    inc.converge(replace(third, steerings=(*third.steerings, newcomer)), full=False)
    assert len(applied) == 2  # a new (policy, EIP, family): its counter needs the full plan
    assert drop_counter(_drop("new", "203.0.113.141")) in inc.policy_drops
