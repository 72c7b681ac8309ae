"""An agent learns other nodes' stray pod IPs from the real API server (issue 12 item 5): the dual-stack case where
the Nodes list only IPv4 podCIDRs. A covered pod elsewhere is dropped at ingest (no notification); another node's
IPv6 pod IP reaches the agent's snapshot and cluster CIDRs, and leaves when the pod goes; when a node (and its pod
CIDR) disappears, the watch relists and finds the pods that are strays now."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.core.waiting import wait_until
from appliance.policy.cluster_cidrs import cluster_cidrs
from k8s_sync.resources import Role
from k8s_sync.store import REMOTE_PODS
from tests.kube_support import Kube

pytestmark = pytest.mark.apiserver


def test_agent_sees_other_nodes_stray_pod_ips(start_sync: Any, kube: Kube, kube_namespace: str) -> None:
    mine, other = kube.unique("worker"), kube.unique("worker")
    kube.node(mine, ips=("100.127.70.1",), pod_cidrs=("100.70.1.0/24",))
    kube.node(other, ips=("100.127.70.2",), pod_cidrs=("100.70.2.0/24",))
    sync = start_sync(Role.AGENT, node_name=mine, relist_spread=0.2)
    reasons: list[str] = []
    sync.store.subscribe(reasons.append)

    def strays() -> list[str]:
        return [p.name for p in sync.store.snapshot().remote_strays if p.namespace == kube_namespace]

    def internal() -> set[str]:
        return {str(n) for n in cluster_cidrs(sync.store.snapshot())}

    seen = sync.store.remote_stats["events"]
    kube.pod(kube_namespace, "covered", node=other, ips=("100.70.2.10",))
    wait_until(lambda: sync.store.remote_stats["events"] >= seen + 2, timeout=10, what="covered pod's events seen")
    assert strays() == [] and not any(r.startswith(REMOTE_PODS) for r in reasons)

    kube.pod(kube_namespace, "dual", node=other, ips=("100.70.2.11", "2001:db8:70:2::11"))
    kube.pod(kube_namespace, "local", node=mine, ips=("100.70.1.11", "2001:db8:70:1::11"))
    wait_until(lambda: strays() == ["dual"], timeout=10, what="the other node's stray in the agent's snapshot")
    wait_until(lambda: "2001:db8:70:1::11/128" in internal(), timeout=10, what="own stray")
    assert "2001:db8:70:2::11/128" in internal() and "100.70.2.0/24" in internal()
    assert [p.name for p in sync.store.snapshot().pods if p.namespace == kube_namespace] == ["local"]

    kube.delete("Pod", "dual", kube_namespace)
    wait_until(lambda: strays() == [], timeout=10, what="the stray gone with its pod")
    assert "2001:db8:70:2::11/128" not in internal()

    # the other node goes: its pod CIDR is no longer detected, so the covered pod's IP is a stray now (relist)
    kube.delete("Node", other)
    wait_until(lambda: strays() == ["covered"], timeout=15, what="relist after the detected ranges shrank")
    assert "100.70.2.10/32" in internal() and sync.store.remote_stats["relists"] >= 1
