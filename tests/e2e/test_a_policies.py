"""End-to-end policy scenarios (seed anchor P02-P22): real API server, agents, gateways, router and traffic.

Lab pods: w1p1, w1p2 behind worker1 (100.127.0.11), w2p1, w2p2 behind worker2 (100.127.0.12). The shared gateway
`egw-default` (cluster default, default EIPs 203.0.113.200 / 2001:db8:e1::200, pool .200-.209) is applied by the
fixture.
"""

from __future__ import annotations

import pytest

from appliance.core.waiting import wait_until
from lab.scenarios import gateway_manifest, measure_failure, policy_manifest
from lab.system import System
from tests.e2e.conftest import DEFAULT_EIP_V4, DEFAULT_EIP_V6, Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

CONVERGE_S = 45.0


def node_ip(system: System, lab_pod: str, version: int = 4) -> str:
    return str(system.nodes[system.nodes[lab_pod].worker].address(version))


def expect_source(system: System, lab_pod: str, want: str, *, version: int = 4) -> None:
    seen = system.wait_source(lab_pod, want, version=version, timeout=CONVERGE_S)
    assert seen == want, f"{lab_pod}: the external server saw {seen or 'nothing'}, expected {want}"


def test_p02_p08_cluster_default_gateway_and_default_eip(system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w1p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
    expect_source(system, "w1p1", DEFAULT_EIP_V6, version=6)
    # TCP too, and a pod that is not selected keeps its node address
    assert system.seen_source("w1p1", proto="tcp") == DEFAULT_EIP_V4
    expect_source(system, "w2p2", node_ip(system, "w2p2"))


def test_p03_namespace_default_gateway_beats_cluster_default(system: System, scenario: Scenario) -> None:
    scenario.apply(gateway_manifest("egw-tenant", pools_v4=("203.0.113.220-203.0.113.229",),
                                    pools_v6=("2001:db8:e1::220-2001:db8:e1::229",), default_v4="203.0.113.220",
                                    default_v6="2001:db8:e1::220", cluster_default=False))
    system.ensure_namespace(scenario.namespace, {"egressgw.io/default-gateway": "egw-tenant"})
    scenario.pod("web", "w2p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w2p1", "203.0.113.220")


def test_p09_rr_gives_each_policy_its_own_eip(system: System, scenario: Scenario) -> None:
    scenario.pod("a", "w1p1", {"app": "a"})
    scenario.pod("b", "w2p1", {"app": "b"})
    rr = {"allocatorPolicy": "rr"}
    scenario.apply(policy_manifest(scenario.namespace, "pa", match_labels={"app": "a"}, egress_ip=rr),
                   policy_manifest(scenario.namespace, "pb", match_labels={"app": "b"}, egress_ip=rr))

    def eips() -> tuple[str, str] | None:
        a = (system.get("EgressPolicy", "pa", scenario.namespace).get("status") or {}).get("eip", {}).get("ipv4")
        b = (system.get("EgressPolicy", "pb", scenario.namespace).get("status") or {}).get("eip", {}).get("ipv4")
        return (a, b) if a and b else None

    a, b = wait_until(eips, timeout=CONVERGE_S, what="rr EIPs in the policies' status", interval=0.2)
    assert a != b
    expect_source(system, "w1p1", a)
    expect_source(system, "w2p1", b)


def test_p11_p12_empty_dest_subnet_outside_vs_in_cluster(system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w1p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
    # an in-cluster destination (another pod, on the other worker) is never steered: it sees the pod IP
    server = system.nodes["w2p2"].address(4)
    system.lab.start_daemon("w2p2", "extserver-incluster",
                            system.python_module("lab.extserver", "--no-icmp"))
    try:
        got = ""
        for _ in range(30):
            got = system.seen_source("w1p1", server=str(server))
            if got:
                break
        assert got == str(system.nodes["w1p1"].address(4))
    finally:
        system.lab.stop_daemon("w2p2", "extserver-incluster")


def test_p13_dest_subnet_match_vs_not(system: System, scenario: Scenario) -> None:
    scenario.pod("in", "w1p1", {"app": "in"})
    scenario.pod("out", "w2p1", {"app": "out"})
    scenario.apply(
        policy_manifest(scenario.namespace, "match", match_labels={"app": "in"}, dest=("203.0.113.0/28",)),
        policy_manifest(scenario.namespace, "nomatch", match_labels={"app": "out"}, dest=("198.51.100.0/24",)),
    )
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
    expect_source(system, "w2p1", node_ip(system, "w2p1"))


def test_p14_selector_switch_between_workloads(system: System, scenario: Scenario) -> None:
    scenario.pod("x", "w1p2", {"app": "blue"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "blue"}))
    expect_source(system, "w1p2", DEFAULT_EIP_V4)
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "green"}))
    expect_source(system, "w1p2", node_ip(system, "w1p2"))
    system.label_pod(scenario.namespace, "x", {"app": "green"})
    expect_source(system, "w1p2", DEFAULT_EIP_V4)


def test_p15_use_node_ip(system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w2p2", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"},
                                   egress_ip={"useNodeIP": True}))
    uplinks = {str(system.nodes[g].address(4)) for g in system.gateways}
    seen = wait_until(lambda: (s := system.seen_source("w2p2")) in uplinks and s, timeout=CONVERGE_S,
                      what="a gateway member's uplink address", interval=0.2)
    assert seen in uplinks


def test_p20_policy_deleted_restores_normal_egress(system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w2p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w2p1", DEFAULT_EIP_V4)
    system.delete("EgressPolicy", "p", scenario.namespace)
    expect_source(system, "w2p1", node_ip(system, "w2p1"))


def test_p21_namespace_isolation(system: System, scenario: Scenario) -> None:
    other = scenario.namespace + "-other"
    system.ensure_namespace(other)
    scenario.pod("web", "w1p2", {"app": "web"}, namespace=other)
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    # the policy only selects pods of its own namespace
    expect_source(system, "w1p2", node_ip(system, "w1p2"))
    got = system.get("EgressPolicy", "p", scenario.namespace).get("status") or {}
    assert got.get("selectedIPs", 0) == 0


def test_p22_explicit_eip(system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w2p2", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"},
                                   egress_ip={"ipv4": "203.0.113.205", "ipv6": "2001:db8:e1::205"}))
    expect_source(system, "w2p2", "203.0.113.205")
    expect_source(system, "w2p2", "2001:db8:e1::205", version=6)


def test_ipv6_only_policy(system: System, scenario: Scenario) -> None:
    """A policy steering only IPv6 destinations: IPv6 leaves with the v6 EIP, IPv4 is untouched."""
    scenario.pod("web", "w1p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"},
                                   dest=("2001:db8:203::/64",)))
    expect_source(system, "w1p1", DEFAULT_EIP_V6, version=6)
    expect_source(system, "w1p1", node_ip(system, "w1p1"))


def test_s01_pod_churn_keeps_eips_right(system: System, scenario: Scenario) -> None:
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    for i in range(3):
        system.create_pod(scenario.namespace, f"web-{i}", "w2p1", {"app": "web"})
        expect_source(system, "w2p1", DEFAULT_EIP_V4)
        system.delete_pod(scenario.namespace, f"web-{i}")
        expect_source(system, "w2p1", node_ip(system, "w2p1"))
    # the pod moves: same selected workload, now on the other worker
    scenario.pod("web-moved", "w1p2", {"app": "web"})
    expect_source(system, "w1p2", DEFAULT_EIP_V4)


def test_p20_running_flow_never_leaks_the_pod_ip_when_its_policy_goes(system: System, scenario: Scenario) -> None:
    """A flow that is steered when its policy is deleted continues with the node IP (the CNI's masquerade), never
    with the raw pod IP: the agent flushes the conntrack entries of pod IPs whose steering changed."""
    scenario.pod("web", "w1p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
    report = measure_failure(system, "w1p1", lambda: system.delete("EgressPolicy", "p", scenario.namespace),
                             after=4.0)
    seen = [s.source for s in report.sources]
    assert str(system.nodes["w1p1"].address(4)) not in seen, f"the raw pod IP left the cluster: {seen}"
    assert seen[0] == DEFAULT_EIP_V4 and seen[-1] == node_ip(system, "w1p1"), seen
