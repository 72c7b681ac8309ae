"""One node, both roles, end to end: an agent whose node becomes a member of an EgressGateway stands down (its nft
table and tunnel devices are removed, `agent.standing_down` is logged, its selected pod leaves with the node address
like any unsteered pod) and comes back when the node stops being a member (table back, the pod leaves with its EIP
again). The membership comes from a second gateway whose nodeSelector is a label the test puts on the worker's Node.
"""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client

from appliance.core.waiting import wait_until
from appliance.datapath.plan.nft_rendering import FAMILY, TABLE
from lab.scenarios import gateway_manifest, policy_manifest
from lab.system import System
from tests.e2e.conftest import DEFAULT_EIP_V4, Scenario
from tests.e2e.test_a_policies import CONVERGE_S, expect_source, node_ip

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

LABEL = "egressgw.io/e2e-stand-down"


def worker_table(system: System, worker: str) -> bool:
    return system.lab.exec(worker, ["nft", "list", "table", FAMILY, TABLE], check=False).returncode == 0


def agent_log(system: System, worker: str) -> str:
    return (system.lab.state_dir / "logs" / f"{worker}.egressgw-agent.log").read_text(errors="replace")


def label_node(system: System, node: str, value: str | None) -> None:
    client.CoreV1Api(system.api).patch_node(node, {"metadata": {"labels": {LABEL: value}}})


def test_n01_agent_on_a_node_that_becomes_a_gateway_member_stands_down_and_comes_back(
    system: System, scenario: Scenario
) -> None:
    worker = system.nodes["w1p1"].worker
    scenario.pod("web", "w1p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
    gw = f"standdown-{scenario.namespace}"[:63]
    scenario.apply(gateway_manifest(gw, pools_v4=("203.0.113.250-203.0.113.251",), pools_v6=(), default_v4=None,
                                    cluster_default=False, node_selector={LABEL: "true"}))
    before = agent_log(system, worker).count("agent.standing_down")
    label_node(system, worker, "true")
    try:
        wait_until(lambda: not worker_table(system, worker), timeout=CONVERGE_S,
                   what=f"{worker}'s agent to remove its nft table (standing down)")
        log = agent_log(system, worker)
        assert log.count("agent.standing_down") == before + 1 and f"gateway={gw}" in log
        expect_source(system, "w1p1", node_ip(system, "w1p1"))  # not steered while standing down
    finally:
        label_node(system, worker, None)
    wait_until(lambda: worker_table(system, worker), timeout=CONVERGE_S,
               what=f"{worker}'s agent to converge again (resumed)")
    assert "agent.resuming" in agent_log(system, worker)
    expect_source(system, "w1p1", DEFAULT_EIP_V4)


def test_n02_the_services_run_as_their_service_accounts_and_are_never_refused(system: System) -> None:
    """Every agent and gateway of the lab runs with its role's ServiceAccount token (deploy/rbac/), and none of
    them has logged a refusal: no 403 from a status write, Event, Lease, reflector or the Service-CIDR probe."""
    logs = system.lab.state_dir / "logs"
    for node in system.workers + system.gateways:
        role = "gateway" if node in system.gateways else "agent"
        cfg = yaml.safe_load((system.lab.node_dir(node) / f"{role}.yaml").read_text())
        assert cfg["kubeconfig"] == str(system.role_kubeconfig(role))
        user = yaml.safe_load(system.role_kubeconfig(role).read_text())["users"][0]["name"]
        assert user == f"system:serviceaccount:egressgw-system:egressgw-{role}"
        text = (logs / f"{node}.egressgw-{role}.log").read_text(errors="replace")
        refused = [line for line in text.splitlines()
                   if "Forbidden" in line or "status=403" in line or "probe_refused" in line]
        assert not refused, f"{node}: " + "\n".join(refused[:5])
        detected = [line for line in text.splitlines() if "event=service_cidr.detected" in line]
        assert detected and "cidrs=[]" not in detected[-1], f"{node}: the Service-CIDR probe found nothing"
