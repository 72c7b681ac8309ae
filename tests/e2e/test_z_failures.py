"""End-to-end scenarios that move gateways, the cluster info and the API server (run last on the shared lab).

G14 nodeSelector retargeting, I01/I05 cluster info and extraCidr, R08 pool exhaustion, R07 API server restart,
R05 primary gateway power-off, R06 all gateways down then back. Outages are measured and printed; the assertions
are on behaviour (EIP unchanged, traffic resumes, the stream keeps flowing where nothing may interrupt it), timing
figures belong to `egressgw bench failover` and `egressgw bench faults`.

"Keeps flowing" is judged against a control: the same 10 ms probe, from the same pod, run just before the event with
nothing happening. On a busy machine a probe can lose a datagram or two to scheduling alone; the event may lose no
more than the control's rate predicts, plus 1% of the probes. An interruption of the data path (fail-closed while
the API server restarts, a route flapping away) costs hundreds of probes and cannot hide in that margin.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from appliance.core.waiting import wait_until
from appliance.datapath.apply.applier import DataPathApplier
from lab.probe import ProbeReport
from lab.scenarios import (
    gateway_manifest,
    measure_failure,
    policy_manifest,
    router_next_hop,
    scenario_gateway,
    stable_primary,
)
from lab.system import System, restart_apiserver
from tests.e2e.conftest import DEFAULT_EIP_V4, Scenario
from tests.e2e.test_a_policies import CONVERGE_S, expect_source, node_ip

pytestmark = [pytest.mark.e2e, pytest.mark.lab]


def measure_against_control(system: System, lab_pod: str, act: Callable[[], None], *,
                            after: float) -> tuple[ProbeReport, ProbeReport]:
    """(control, event): the probe with nothing happening, then the same probe around `act`."""
    control = measure_failure(system, lab_pod, lambda: None, after=after)
    return control, measure_failure(system, lab_pod, act, after=after)


def assert_kept_flowing(control: ProbeReport, event: ProbeReport) -> None:
    expected = control.lost / max(control.sent, 1) * event.sent
    allowed = expected + max(3, event.sent // 100)
    assert event.sent > 0 and event.lost <= allowed, (
        f"lost {event.lost} of {event.sent} probes, more than the control's rate allows ({control.lost} of "
        f"{control.sent} -> {allowed:.0f}): {event}")
    assert event.received > 0 and event.outage_end is not None, event  # answers came back after the event


def drops_no_gateway(system: System, worker: str) -> int:
    """Packets the worker's fail-closed rule counted (our nft counter `drop_no_gateway`)."""
    counters = DataPathApplier(system.lab.netns(worker)).counters()
    return counters["drop_no_gateway"][0] if "drop_no_gateway" in counters else 0


def test_g14_gateway_node_selector_retargeting(system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w1p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
    only = system.gateways[-1]
    try:
        system.apply([scenario_gateway(system.scenario, node_selector={"kubernetes.io/hostname": only})])
        wait_until(lambda: router_next_hop(system, DEFAULT_EIP_V4) == only, timeout=CONVERGE_S,
                   what=f"the router to send the EIP to {only}", interval=0.2)
        expect_source(system, "w1p1", DEFAULT_EIP_V4)
    finally:
        system.apply([scenario_gateway(system.scenario)])


def test_i01_i05_cluster_info_status_and_extra_cidr(system: System, scenario: Scenario) -> None:
    spec: dict[str, Any] = {"autoDetect": {"podCidrMode": "k8s", "clusterIP": True, "nodeIP": True}}
    info = {"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressClusterInfo", "metadata": {"name": "default"},
            "spec": spec}
    system.apply([info])

    def status_ok() -> bool:
        st = system.get("EgressClusterInfo", "default").get("status") or {}
        node_ips = {ip for v in (st.get("nodeIP") or {}).values() for ip in v.get("ipv4", [])}
        pod_cidrs = {c for v in (st.get("podCIDR") or {}).values() for c in v.get("ipv4", [])}
        return (node_ip(system, "w1p1") in node_ips and "100.64.1.0/24" in pod_cidrs
                and "100.100.0.0/16" in (st.get("clusterIP") or {}).get("ipv4", []))

    wait_until(status_ok, timeout=CONVERGE_S, what="EgressClusterInfo status (I01)", interval=0.2)
    scenario.pod("web", "w2p2", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w2p2", DEFAULT_EIP_V4)
    try:
        spec["extraCidr"] = ["203.0.113.0/28"]  # the external server becomes "cluster-internal"
        system.apply([info])
        expect_source(system, "w2p2", node_ip(system, "w2p2"))
    finally:
        spec.pop("extraCidr")
        system.apply([info])
    expect_source(system, "w2p2", DEFAULT_EIP_V4)


def test_r08_pool_exhaustion_surplus_policies_pending(system: System, scenario: Scenario) -> None:
    # three addresses: the default EIP (.240, kept for `default` policies) and two for rr
    scenario.apply(gateway_manifest("egw-small", pools_v4=("203.0.113.240-203.0.113.242",), pools_v6=(),
                                    default_v4="203.0.113.240", default_v6=None, cluster_default=False))
    names = [f"rr{i}" for i in range(4)]
    scenario.apply(*(policy_manifest(scenario.namespace, n, match_labels={"app": n}, gateway="egw-small",
                                     egress_ip={"allocatorPolicy": "rr"}) for n in names))

    def states() -> dict[str, str]:
        out = {}
        for n in names:
            st = system.get("EgressPolicy", n, scenario.namespace).get("status") or {}
            ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
            out[n] = (st.get("eip") or {}).get("ipv4") or ready.get("reason", "")
        return out

    # the status settles through intermediate states (no members yet, allocation in progress): wait for the end
    last: dict[str, str] = {}

    def settled() -> bool:
        nonlocal last
        last = states()
        # two allocated, and the other two decided (the writer may write the four policies in separate passes)
        decided = [v for v in last.values() if not v.startswith("203.") and v not in ("", "NotResolved")]
        return sum(v.startswith("203.") for v in last.values()) == 2 and len(decided) == 2
    with contextlib.suppress(TimeoutError):
        wait_until(settled, timeout=CONVERGE_S, what="two rr EIPs allocated, two policies decided", interval=0.2)
    got = last
    eips = [v for v in got.values() if v.startswith("203.")]
    assert sorted(eips) == ["203.0.113.241", "203.0.113.242"], got
    assert sorted(v for v in got.values() if not v.startswith("203.")) == ["PoolExhausted", "PoolExhausted"]


def test_r07_api_server_restart_does_not_interrupt_egress(system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w1p2", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w1p2", DEFAULT_EIP_V4)
    control, report = measure_against_control(system, "w1p2", lambda: restart_apiserver(system, down_for=5.0),
                                              after=3.0)
    print(f"\nR07 API server restart: sent={report.sent} lost={report.lost} (control: {control.lost}/{control.sent})")
    assert_kept_flowing(control, report)
    assert {s.source for s in report.sources} == {DEFAULT_EIP_V4}
    # and the control plane still works afterwards: a policy change takes effect
    system.delete("EgressPolicy", "p", scenario.namespace)
    expect_source(system, "w1p2", node_ip(system, "w1p2"))


def test_r05_primary_gateway_power_off(system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w2p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w2p1", DEFAULT_EIP_V4)
    primary = stable_primary(system, DEFAULT_EIP_V4)

    def power_off() -> None:
        system.lab.cut_link(primary, "eth1")
        system.lab.kill_node(primary)

    try:
        report = measure_failure(system, "w2p1", power_off, after=3.0)
        print(f"\nR05 power-off of {primary}: lost={report.lost} outage={report.longest_gap_ms:.0f} ms")
        wait_until(lambda: router_next_hop(system, DEFAULT_EIP_V4) not in ("", primary), timeout=30, interval=0.2,
                   what=f"the router to send the EIP to a member other than {primary}")
        assert report.sources and report.sources[-1].source == DEFAULT_EIP_V4
        assert {s.source for s in report.sources} == {DEFAULT_EIP_V4}, "the EIP changed during the failover"
    finally:
        system.lab.restore_link(primary, "eth1")
        system.start_gateway(primary)
    wait_until(lambda: router_next_hop(system, DEFAULT_EIP_V4) == primary, timeout=60,
               what=f"{primary} back as primary after its hold-down", interval=0.2)


def test_r06_all_gateways_down_then_back_fail_closed_no_flapping(system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w1p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
    worker = system.nodes["w1p1"].worker
    for gw in system.gateways:
        system.stop_service(gw)
    # fail-closed (the default): selected traffic must not leave with the node IP while no member is healthy. No
    # fixed wait: the agent's switch is observed, as its drop rule counting this pod's requests
    before = drops_no_gateway(system, worker)
    seen: list[str] = []

    def dropped_by_us() -> bool:
        seen.append(system.seen_source("w1p1", timeout=1.0))
        return drops_no_gateway(system, worker) > before

    wait_until(dropped_by_us, timeout=60, interval=0.2, what=f"{worker}'s fail-closed rule to drop w1p1's traffic",
               describe=lambda: seen[-3:])
    assert set(seen) <= {"", DEFAULT_EIP_V4}, f"traffic left with another source while the gateways went down: {seen}"
    counted = drops_no_gateway(system, worker)
    after = {system.seen_source("w1p1", timeout=1.0) for _ in range(3)}
    assert after == {""}, f"traffic left while every gateway was down: {after}"
    assert drops_no_gateway(system, worker) >= counted + 3, "the requests were not dropped by our fail-closed rule"
    first, *rest = system.gateways
    system.start_gateway(first)
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
    # the others come back: the EIP's route must not flap away from the member now carrying it during hold-down
    carrying = router_next_hop(system, DEFAULT_EIP_V4)

    def bring_back() -> None:
        for gw in rest:
            system.start_gateway(gw)

    control, report = measure_against_control(system, "w1p1", bring_back, after=2.0)
    assert_kept_flowing(control, report)
    assert router_next_hop(system, DEFAULT_EIP_V4) == carrying
