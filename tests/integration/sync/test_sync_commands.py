"""`egressgw status` and `egressgw explain` against the real API server (no egressgw service running)."""

from __future__ import annotations

import json

import pytest

from appliance.cli import main
from k8s_sync.kubeapi import KubeApi
from k8s_sync.leases import MemberIdentity, MemberLease
from lab.kube_apiserver import ApiServer
from tests.kube_support import Kube

pytestmark = pytest.mark.apiserver


def setup_world(kube: Kube, ns: str, api: KubeApi) -> tuple[str, list[str]]:
    gw = kube.unique("cmdgw")
    label = f"egressgw.io/member-{gw}"[:63]
    nodes = [kube.unique("cmdnode") for _ in range(2)]
    for i, n in enumerate(nodes):
        kube.node(n, labels={label: "true"}, ips=(f"198.51.100.{21 + i}",))
        MemberLease(api, MemberIdentity(name=n), duration=60).renew_once()
    kube.gateway(gw, {"ippools": {"ipv4": ["203.0.113.176/30"], "ipv4DefaultEIP": "203.0.113.177"},
                      "nodeSelector": {"selector": {"matchLabels": {label: "true"}}}})
    kube.pod(ns, "web-0", labels={"app": "web"}, node="worker1", ips=("100.64.1.30",))
    kube.pod(ns, "db-0", labels={"app": "db"}, node="worker1", ips=("100.64.1.31",))
    kube.policy(ns, "web", {"egressGatewayName": gw, "destSubnet": ["203.0.113.0/28"],
                            "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}})
    kube.policy(ns, "web-explicit", {"egressGatewayName": gw, "egressIP": {"ipv4": "203.0.113.178"}, "priority": 5,
                                     "destSubnet": ["203.0.113.2/32"],
                                     "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}})
    kube.policy(ns, "broken", {"egressGatewayName": gw, "egressIP": {"ipv4": "203.0.113.178", "useNodeIP": True},
                               "appliedTo": {"podSelector": {"matchLabels": {"app": "db"}}}})
    return gw, nodes


def test_status_command(kube: Kube, kube_namespace: str, sync_api: KubeApi, apiserver: ApiServer,
                        capsys: pytest.CaptureFixture[str]) -> None:
    gw, nodes = setup_world(kube, kube_namespace, sync_api)
    assert main(["status", "--kubeconfig", str(apiserver.kubeconfig_path), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    g = next(x for x in doc["gateways"] if x["name"] == gw)
    assert g["ready"] and sorted(m["name"] for m in g["members"]) == sorted(nodes)
    assert all(m["healthy"] for m in g["members"])
    eips = {e["ip"]: e for e in g["eips"]}
    assert {"203.0.113.177", "203.0.113.178"} <= set(eips)
    for e in eips.values():
        assert {e["primary"], *e["backups"]} == set(nodes)
    mine = {p["name"]: p for p in doc["policies"] if p["namespace"] == kube_namespace}
    assert mine["web"]["state"] == "Ready" and mine["web"]["eip"] == {"ipv4": "203.0.113.177"}
    assert mine["web"]["selectedIPs"] == 1 and mine["web"]["primary"] in nodes
    assert mine["broken"]["state"] == "Invalid" and "spec.egressIP.useNodeIP" in mine["broken"]["message"]
    assert "100.100.0.0/16" in doc["clusterCidrs"]

    assert main(["status", "--kubeconfig", str(apiserver.kubeconfig_path)]) == 0
    table = capsys.readouterr().out
    assert "GATEWAYS" in table and "EIPS" in table and "POLICIES" in table
    assert any(gw in line and "yes" in line for line in table.splitlines())
    assert any(line.split()[:3] == ["EgressPolicy", kube_namespace, "broken"] and "Invalid" in line
               for line in table.splitlines())


def test_explain_command(kube: Kube, kube_namespace: str, sync_api: KubeApi, apiserver: ApiServer,
                         capsys: pytest.CaptureFixture[str]) -> None:
    gw, nodes = setup_world(kube, kube_namespace, sync_api)
    kc = str(apiserver.kubeconfig_path)
    assert main(["explain", "--kubeconfig", kc, "--namespace", kube_namespace, "--pod", "web-0",
                 "--dest", "203.0.113.2", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (ip,) = doc["ips"]
    assert ip["podIP"] == "100.64.1.30"
    chosen = ip["chosen"]
    assert chosen["policy"].endswith("/web-explicit") and chosen["eip"] == "203.0.113.178"
    assert chosen["gateway"] == gw and chosen["primary"] in nodes
    verdicts = {v["policy"].rsplit("/", 1)[1]: v["verdict"] for v in ip["policies"]
                if f"/{kube_namespace}/" in v["policy"]}
    assert verdicts["web-explicit"] == "Applies"
    assert verdicts["web"] in ("LowerPrecedence", "Applies")
    assert verdicts["broken"] == "Invalid"

    # toward another destination of the web policy's destSubnet the plain policy wins
    assert main(["explain", "--kubeconfig", kc, "-n", kube_namespace, "--pod", "web-0", "--dest",
                 "203.0.113.5", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["ips"][0]["chosen"]["eip"] == "203.0.113.177"
    # a cluster-internal destination is never steered
    assert main(["explain", "--kubeconfig", kc, "-n", kube_namespace, "--pod", "web-0", "--dest",
                 "100.100.0.10"]) == 0
    assert "cluster-internal" in capsys.readouterr().out
    # unknown pod
    assert main(["explain", "--kubeconfig", kc, "-n", kube_namespace, "--pod", "nope"]) == 3
    assert "not found" in capsys.readouterr().out
