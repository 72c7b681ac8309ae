"""Data-path liveness end to end: the workers decide "tunnel or no gateway" from their endpoint probes, not from
the members' Leases alone.

L01 every gateway member cut from the API server (their BGP, BFD, tunnels and the workers' API access unaffected)
for longer than the Lease duration: the members' Leases expire, yet the selected pod keeps leaving with its EIP and
the worker never fails closed (its `drop_no_gateway` counter does not move; its status says the instance is carried
without a Lease).
L02 no member can carry the EIP (the router blackholes it; every Lease stays fresh): a FailClosed gateway's selected
pod is dropped at the worker, and the worker's `drop_no_gateway` counter proves the drop is ours, not a blackhole
elsewhere; back to the EIP once the route returns.
L03 the same with FailOpen: the pod leaves with its node's address (the CNI path), then with the EIP again.

Figures (lost probes, outage) are printed; timing goals belong to `egressgw bench faults`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest

from appliance.core.waiting import wait_until
from appliance.datapath.plan.nft_rendering import FAMILY, TABLE
from k8s_sync.kubeapi import KubeApi, make_api_client
from k8s_sync.leases import DEFAULT_NAMESPACE, LEASES, MEMBER_PREFIX, lease_alive
from lab.faults import api_cut
from lab.scenarios import policy_manifest, scenario_gateway
from lab.system import System
from tests.e2e.conftest import DEFAULT_EIP_V4, GATEWAY, Scenario
from tests.e2e.test_a_policies import CONVERGE_S, expect_source, node_ip
from tests.e2e.test_z_failures import assert_kept_flowing, measure_against_control

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

#: generous bound for a worker's probes to notice a change (3 misses x 0.3 s by default) plus a pass
LIVENESS_S = 20.0


def drop_no_gateway(system: System, worker: str) -> int:
    """Packets the worker dropped because their gateway instance has no gateway (our nft counter)."""
    res = system.lab.exec(worker, ["nft", "-j", "list", "counter", FAMILY, TABLE, "drop_no_gateway"])
    for item in json.loads(str(res.stdout))["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(f"no drop_no_gateway counter on {worker}: {res.stdout}")


def agent_status(system: System, worker: str) -> dict[str, object]:
    path = system.lab.node_dir(worker) / "egressgw" / "agent-status.json"
    doc: dict[str, object] = json.loads(path.read_text())
    return doc


def member_leases_expired(system: System) -> bool:
    api = KubeApi(make_api_client(str(system.kubeconfig)))
    now = time.time()
    for gw in system.gateways:
        lease = api.get(LEASES.path(DEFAULT_NAMESPACE, MEMBER_PREFIX + gw))
        expiry = lease_alive(lease)
        if expiry is not None and expiry > now:
            return False
    return True


def wait_endpoint_up(system: System, worker: str, endpoint: str) -> None:
    """The worker's probes have seen `endpoint` answer (an endpoint that never answered is left to the Leases)."""
    def up() -> bool:
        endpoints = agent_status(system, worker).get("endpoints") or []
        return any(e["endpoint"] == endpoint and e["state"] == "up" for e in endpoints)  # type: ignore[attr-defined]
    wait_until(up, timeout=LIVENESS_S, interval=0.2, what=f"{worker}'s probes of {endpoint} to be answered")


@contextlib.contextmanager
def eip_blackholed_at_router(system: System, eip: str) -> Iterator[None]:
    """No member can carry `eip`: the router drops everything toward it (a rule ahead of its BGP routes), while the
    members keep announcing it and renewing their Leases."""
    router = next(n for n, v in system.nodes.items() if v.role == "router")
    rule = ["ip", "-4", "rule", "add", "to", f"{eip}/32", "blackhole", "priority", "90"]
    system.lab.exec(router, rule)
    try:
        yield
    finally:
        system.lab.exec(router, ["ip", "-4", "rule", "del", *rule[4:]], check=False)


def test_l01_every_member_cut_from_the_api_server_keeps_carrying(system: System, scenario: Scenario) -> None:
    pod = "w1p1"
    worker = system.nodes[pod].worker
    scenario.pod("web", pod, {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, pod, DEFAULT_EIP_V4)
    wait_until(lambda: not member_leases_expired(system), timeout=CONVERGE_S, what="fresh member Leases")
    drops_before = drop_no_gateway(system, worker)
    carried: list[object] = []

    def cut_every_member() -> None:
        with api_cut(system, *system.gateways):
            wait_until(lambda: member_leases_expired(system), timeout=60, interval=0.5,
                       what="every member's Lease to expire while the members are cut from the API server")
            # the workers' snapshots now say "no alive member"; give their passes time to act on it
            wait_until(lambda: agent_status(system, worker).get("carried_without_lease") == [GATEWAY],
                       timeout=LIVENESS_S, interval=0.5, what="the worker to carry the instance without a Lease")
            carried.extend(agent_status(system, worker)["carried_without_lease"])  # type: ignore[arg-type]
            time.sleep(5)  # keep the partition well past the expiry

    # Proves: with every member's Lease expired the worker keeps steering to them (they answer its probes), never
    # fails closed (its drop counter does not move), and the flow keeps going with the EIP: no more loss than a
    # control window measured just before in the same run (a 10 ms probe on a loaded machine loses a few now and
    # then; a real interruption loses hundreds), with answers still coming after the partition.
    control, report = measure_against_control(system, pod, cut_every_member, after=3.0)
    print(f"\nL01 every member cut from the API server: sent={report.sent} lost={report.lost} "
          f"outage={report.longest_gap_ms:.0f} ms (control: {control.lost}/{control.sent})")
    assert carried == [GATEWAY]
    assert drop_no_gateway(system, worker) == drops_before, "the worker failed closed while the gateways carried"
    assert {s.source for s in report.sources} == {DEFAULT_EIP_V4}
    assert_kept_flowing(control, report)
    # the members renew again after the cut: the Leases become fresh, and the worker stops overriding them
    wait_until(lambda: not member_leases_expired(system), timeout=CONVERGE_S, interval=0.5,
               what="the members' Leases to be renewed once they reach the API server again")
    wait_until(lambda: agent_status(system, worker).get("carried_without_lease") == [], timeout=LIVENESS_S,
               interval=0.5, what="the worker to follow the Leases again")


def test_l02_fail_closed_drops_at_the_worker_when_no_member_can_carry(system: System, scenario: Scenario) -> None:
    pod = "w2p1"
    worker = system.nodes[pod].worker
    scenario.pod("web", pod, {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, pod, DEFAULT_EIP_V4)
    wait_endpoint_up(system, worker, DEFAULT_EIP_V4)
    before = drop_no_gateway(system, worker)
    with eip_blackholed_at_router(system, DEFAULT_EIP_V4):
        wait_until(lambda: any(d.get("endpoint") == DEFAULT_EIP_V4  # type: ignore[union-attr]
                               for d in agent_status(system, worker)["down_by_probe"]),  # type: ignore[attr-defined]
                   timeout=LIVENESS_S, interval=0.2, what="the worker to judge the EIP down")
        seen = {system.seen_source(pod, timeout=1.0) for _ in range(3)}
        assert seen == {""}, f"selected traffic left while no member could carry the EIP: {seen}"
        dropped = drop_no_gateway(system, worker) - before
        assert dropped >= 3, f"the worker's drop_no_gateway counter rose by {dropped}: the drop was not ours"
    expect_source(system, pod, DEFAULT_EIP_V4)
    print(f"\nL02 fail closed: drop_no_gateway +{dropped} on {worker}")


def test_l03_fail_open_leaves_with_the_node_ip_when_no_member_can_carry(system: System, scenario: Scenario) -> None:
    pod = "w1p2"
    worker = system.nodes[pod].worker
    scenario.pod("web", pod, {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, pod, DEFAULT_EIP_V4)
    system.apply([scenario_gateway(system.scenario, no_gateway_action="FailOpen")])
    try:
        wait_endpoint_up(system, worker, DEFAULT_EIP_V4)
        before = drop_no_gateway(system, worker)
        with eip_blackholed_at_router(system, DEFAULT_EIP_V4):
            expect_source(system, pod, node_ip(system, pod))
            assert drop_no_gateway(system, worker) == before
        expect_source(system, pod, DEFAULT_EIP_V4)
    finally:
        system.apply([scenario_gateway(system.scenario)])
