"""The gateway service wired with the real cluster sync, member lease, leader election and status writer against the
real kube-apiserver (the data path is a recorder; no BGP): nothing before sync, the intent reaches the data path,
a new pod triggers a coalesced pass, status is written by the leader, and a drain deletes the member lease."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from appliance.cli.gateway import build_gateway_service
from appliance.core.intent import Intent
from appliance.core.snapshot import Snapshot
from appliance.core.waiting import wait_until
from appliance.gateway.member_state import StateDir
from appliance.gateway.service import DataPathResult, GatewayService
from appliance.runtime.config import GatewayConfig, parse_gateway_config
from appliance.runtime.reconciling import PassOutcome
from bgp.health import Check
from k8s_sync.kubeapi import ApiError, KubeApi
from tests.kube_support import Kube

pytestmark = pytest.mark.apiserver


class RecordingDataPath:
    def __init__(self) -> None:
        self.intents: list[Intent] = []
        self.snapshots: list[Snapshot] = []
        self.removed = 0

    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> DataPathResult:
        self.snapshots.append(snapshot)
        self.intents.append(intent)
        eips = frozenset(e for i in intent.instances for e in i.eips)
        return DataPathResult(outcome=PassOutcome(), eips_in_place=eips)

    def checks(self) -> Mapping[Check, bool]:
        return {Check.NFT_TABLE: True, Check.TUNNEL_DEVICE: True}

    def remove_all(self) -> tuple[str, ...]:
        self.removed += 1
        return ()


@pytest.fixture
def running(role_kubeconfigs: dict[str, Path], kube: Kube,
            tmp_path: Path) -> Iterator[tuple[GatewayService, RecordingDataPath]]:
    label = f"egressgw.io/member-{kube.suffix}"
    node = kube.unique("gwsvc")
    kube.node(node, labels={label: "true"}, ips=("198.51.100.11",))
    cfg: GatewayConfig = parse_gateway_config(
        {
            "node_name": node,
            "kubeconfig": str(role_kubeconfigs["gateway"]),  # the shipped RBAC's ServiceAccount, not admin
            "uplink": {"interface": "lo", "addresses": ["198.51.100.11"]},
            "metrics": {"enabled": False},
            "state_dir": str(tmp_path / "state"),
            "health": {"interval_s": 0.1, "rise": 1, "fall": 1},
            "reconcile": {"debounce_ms": 20},
        },
        source=tmp_path / "gateway.yaml",
        env={},
    )
    dp = RecordingDataPath()
    state = StateDir(cfg.state_dir)
    state.acquire()
    svc = build_gateway_service(cfg, state=state, datapath_factory=lambda c, u: dp, registry=CollectorRegistry())
    assert isinstance(svc.deps.host_checks(), dict)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(svc.run()), daemon=True)
    svc.label = label  # type: ignore[attr-defined]
    t.start()
    try:
        yield svc, dp
    finally:
        svc.request_drain("test teardown")
        t.join(20)
        state.release()
    assert result == [0]


def test_intent_reaches_the_data_path_and_status_is_written(
    running: tuple[GatewayService, RecordingDataPath], kube: Kube, kube_namespace: str, service_api: KubeApi
) -> None:
    svc, dp = running
    label: str = svc.label  # type: ignore[attr-defined]
    gw = kube.unique("gw")
    kube.gateway(
        gw,
        {
            "ippools": {"ipv4": ["203.0.113.128/29"], "ipv4DefaultEIP": "203.0.113.129"},
            "nodeSelector": {"selector": {"matchLabels": {label: "true"}}},
        },
    )
    kube.pod(kube_namespace, "web-0", labels={"app": "web"}, node="worker1", ips=("100.64.1.10",))
    kube.policy(
        kube_namespace, "p", {"egressGatewayName": gw, "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}}
    )

    def steered(ip: str) -> bool:
        return bool(dp.intents) and any(str(s.pod_ip) == ip for s in dp.intents[-1].steerings)

    wait_until(lambda: steered("100.64.1.10"), timeout=15, what="the first pod in the intent")
    assert all(s.revision > 0 for s in dp.snapshots)  # never planned from an unsynced store
    inst = dp.intents[-1].instance(gw)
    assert inst is not None and [str(e) for e in inst.eips] == ["203.0.113.129"]

    passes = svc.reconciler.passes
    kube.pod(kube_namespace, "web-1", labels={"app": "web"}, node="worker1", ips=("100.64.1.11",))
    wait_until(lambda: steered("100.64.1.11"), timeout=10, what="the second pod")
    assert svc.reconciler.passes - passes <= 3  # create + status patch coalesced into few passes

    wait_until(lambda: svc.health.healthy, timeout=10, what="member healthy")
    lease = f"/apis/coordination.k8s.io/v1/namespaces/egressgw-system/leases/egressgw-member-{svc.cfg.node_name}"
    wait_until(lambda: service_api.get(lease), timeout=10, what="member lease")

    def policy_ready() -> bool:
        obj = kube.get("EgressPolicy", "p", kube_namespace)
        conds = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    wait_until(policy_ready, timeout=15, what="policy status Ready written by the leader")
    doc = StateDir(svc.cfg.state_dir).read_status()
    assert doc is not None and doc["health"]["status"] == "Healthy"

    svc.request_drain("test")
    wait_until(lambda: svc.phase == "stopped", timeout=20, what="service stopped after the drain")
    assert dp.removed == 1

    def lease_gone() -> bool:
        try:
            service_api.get(lease)
        except ApiError as e:
            return e.status == 404
        return False

    wait_until(lease_gone, timeout=10, what="member lease deleted by the drain")
