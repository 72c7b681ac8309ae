"""EgressClusterInfo status against the real API server: I01 consistent with the cluster (node IPs, the Service CIDR
found by probing the allocator, pod CIDRs, extraCidr), I02-I05 edits followed (clusterIP / nodeIP switches,
podCidrMode, extraCidr), I06 Calico IPPools when that CRD is served, I07 pod IPs outside every pod CIDR warned."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from appliance.core.waiting import wait_until
from k8s_sync.cluster import ClusterSync
from k8s_sync.kubeapi import JSON, ApiError, KubeApi
from k8s_sync.resources import Role
from k8s_sync.service_cidr import detect_service_cidrs, parse_range_message
from k8s_sync.status_writer import StatusWriter
from tests.kube_support import Kube
from tests.status_support import StatusService

pytestmark = pytest.mark.apiserver

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CALICO_CRD: JSON = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "ippools.crd.projectcalico.org"},
    "spec": {"group": "crd.projectcalico.org", "scope": "Cluster",
             "names": {"plural": "ippools", "singular": "ippool", "kind": "IPPool", "listKind": "IPPoolList"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}


@pytest.fixture
def writing_sync(start_sync: Callable[..., ClusterSync], sync_api: KubeApi) -> Iterator[Callable[[], ClusterSync]]:
    services: list[StatusService] = []

    def start() -> ClusterSync:
        sync = start_sync(Role.GATEWAY)
        service = StatusService(sync.store, StatusWriter(sync_api, sync.store.raw_objects), resync=2.0)
        service.start()
        services.append(service)
        return sync

    try:
        yield start
    finally:
        for s in services:
            s.stop()


def info_status(kube: Kube, check: Callable[[JSON], bool], timeout: float = 15.0) -> JSON:
    last: list[JSON] = [{}]

    def probe() -> JSON | None:
        last[0] = kube.get("EgressClusterInfo", "default").get("status") or {}
        return last[0] if check(last[0]) else None

    try:
        result: JSON = wait_until(probe, timeout=timeout, what="EgressClusterInfo status")
    except AssertionError:
        raise AssertionError(f"cluster info status never matched; last: {last[0]}") from None
    return result


def test_service_cidr_is_detected_by_probing_the_allocator(sync_api: KubeApi) -> None:
    assert [str(n) for n in detect_service_cidrs(sync_api, namespace="default")] == ["100.100.0.0/16"]
    services = sync_api.get("/api/v1/namespaces/default/services")["items"]
    assert [s["metadata"]["name"] for s in services] == ["kubernetes"]  # the probe created nothing
    msg = "spec.clusterIPs: Invalid value: []string{\"0.0.0.1\"}: failed to allocated ip:0.0.0.1 with error:provided " \
          "IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"
    assert [str(n) for n in parse_range_message(msg)] == ["10.96.0.0/12"]


def test_cluster_info_status_follows_the_cluster_and_edits(writing_sync: Callable[[], ClusterSync],
                                                           kube: Kube) -> None:
    n1, n2 = kube.unique("ci-node"), kube.unique("ci-node")
    kube.node(n1, ips=("100.127.0.11", "2001:db8:127::11"), pod_cidrs=("100.64.1.0/24", "2001:db8:64:1::/64"))
    kube.node(n2, ips=("100.127.0.12",), pod_cidrs=("100.64.2.0/24",))
    kube.create({"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressClusterInfo", "metadata": {"name": "default"},
                 "spec": {"autoDetect": {"podCidrMode": "auto", "clusterIP": True, "nodeIP": True},
                          "extraCidr": ["198.51.100.0/24"]}})
    writing_sync()
    # I01: consistent with the cluster
    st = info_status(kube, lambda s: n2 in (s.get("nodeIP") or {}))
    assert st["nodeIP"][n1] == {"ipv4": ["100.127.0.11"], "ipv6": ["2001:db8:127::11"]}
    assert st["clusterIP"]["ipv4"] == ["100.100.0.0/16"]
    assert {"100.64.1.0/24", "100.64.2.0/24"} <= set(st["podCIDR"]["k8s"]["ipv4"])
    # whatever the API server kept of spec.podCIDRs (1.20 without the dual-stack gate keeps only the first)
    kept = kube.get("Node", n1)["spec"]["podCIDRs"]
    assert set(kept) <= set(st["podCIDR"]["k8s"]["ipv4"]) | set(st["podCIDR"]["k8s"]["ipv6"])
    assert st["extraCidr"] == ["198.51.100.0/24"]
    assert st["podCidrMode"] == "auto"
    # a node added later shows up
    n3 = kube.unique("ci-node")
    kube.node(n3, ips=("100.127.0.13",), pod_cidrs=("100.64.3.0/24",))
    info_status(kube, lambda s: n3 in (s.get("nodeIP") or {}) and "100.64.3.0/24" in s["podCIDR"]["k8s"]["ipv4"])
    # I02: clusterIP detection off
    kube.patch("EgressClusterInfo", "default", {"spec": {"autoDetect": {"clusterIP": False}}})
    info_status(kube, lambda s: not (s.get("clusterIP") or {}).get("ipv4"))
    # I03: nodeIP detection off
    kube.patch("EgressClusterInfo", "default", {"spec": {"autoDetect": {"nodeIP": False}}})
    info_status(kube, lambda s: not s.get("nodeIP"))
    # I04: podCidrMode k8s, then none
    kube.patch("EgressClusterInfo", "default", {"spec": {"autoDetect": {"podCidrMode": "k8s"}}})
    info_status(kube, lambda s: s.get("podCidrMode") == "k8s" and "k8s" in (s.get("podCIDR") or {}))
    # I05: extraCidr edited
    kube.patch("EgressClusterInfo", "default", {"spec": {"extraCidr": ["203.0.113.0/28", "2001:db8:ff::/64"]}})
    st = info_status(kube, lambda s: s.get("extraCidr") == ["203.0.113.0/28", "2001:db8:ff::/64"])
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in st["conditions"])


def test_calico_pools_are_read_when_the_crd_exists(writing_sync: Callable[[], ClusterSync], kube: Kube,
                                                   sync_api: KubeApi) -> None:
    """I06: with Calico's IPPool CRD served, podCidrMode auto takes the pools, and follows their edits."""
    sync_api.create(CRD_PATH, CALICO_CRD)
    try:
        wait_until(lambda: _served(sync_api), timeout=15, what="Calico CRD served")
        pools = "/apis/crd.projectcalico.org/v1/ippools"
        sync_api.create(pools, {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
                                "metadata": {"name": "default-v4"}, "spec": {"cidr": "100.96.0.0/16"}})
        kube.create({"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressClusterInfo",
                     "metadata": {"name": "default"}, "spec": {"autoDetect": {"podCidrMode": "auto"}}})
        sync = writing_sync()
        assert any(r.spec.key == "IPPool" for r in sync.reflectors)
        info_status(kube, lambda s: (s.get("podCIDR") or {}).get("calico", {}).get("ipv4") == ["100.96.0.0/16"])
        sync_api.create(pools, {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
                                "metadata": {"name": "default-v6"}, "spec": {"cidr": "2001:db8:96::/112"}})
        info_status(kube, lambda s: s["podCIDR"]["calico"].get("ipv6") == ["2001:db8:96::/112"])
    finally:
        sync_api.delete(f"{CRD_PATH}/ippools.crd.projectcalico.org")
        wait_until(lambda: not _served(sync_api), timeout=30, what="Calico CRD gone")


def _served(api: KubeApi) -> bool:
    try:
        found = api.get("/apis/crd.projectcalico.org/v1")
    except ApiError:
        return False
    return any(r.get("name") == "ippools" for r in found.get("resources") or ())




def _uncovered_v6(status: JSON) -> int:
    """IPv6 pod IPs outside every detected source, from the PodCIDRsIncomplete condition (0 when it is False)."""
    cond = next((c for c in status.get("conditions") or () if c.get("type") == "PodCIDRsIncomplete"), None)
    if cond is None or cond.get("status") != "True":
        return 0
    m = re.match(r"(\d+) pod IPs \((\d+) IPv4, (\d+) IPv6\)", cond.get("message") or "")
    assert m is not None and cond["reason"] == "PodIPsOutsidePodCIDRs", cond
    return int(m.group(3))


def test_pod_ips_outside_every_pod_cidr_are_reported(writing_sync: Callable[[], ClusterSync], kube: Kube) -> None:
    """I07: a node whose podCIDRs list only IPv4 (what the dual-stack lab's API server keeps) and a dual-stack pod on
    it: the status warns with counts and the pod as an example; extraCidr covering the IPv6 pod network clears it.
    Counted relative to the start (pods of earlier tests in this API server may be strays too)."""
    node = kube.unique("ci-node")
    kube.node(node, ips=("100.127.0.21",), pod_cidrs=("100.64.21.0/24",))
    kube.create({"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressClusterInfo", "metadata": {"name": "default"},
                 "spec": {"autoDetect": {"podCidrMode": "k8s"}}})
    ns = kube.unique("ci-ns")
    kube.namespace(ns)
    writing_sync()
    start = info_status(kube, lambda s: node in (s.get("nodeIP") or {}) and any(
        c.get("type") == "PodCIDRsIncomplete" for c in s.get("conditions") or ()))
    before = _uncovered_v6(start)
    kube.pod(ns, "dual", node=node, ips=("100.64.21.10", "2001:db8:64:21::10"))
    st = info_status(kube, lambda s: _uncovered_v6(s) == before + 1)
    [cond] = [c for c in st["conditions"] if c["type"] == "PodCIDRsIncomplete"]
    assert cond["status"] == "True" and "outside every detected pod CIDR (source: k8s)" in cond["message"]
    assert "extraCidr" in cond["message"]
    if before == 0:
        assert f"2001:db8:64:21::10 ({ns}/dual)" in cond["message"]
    # the operator covers the IPv6 pod network: this pod is no longer a stray
    kube.patch("EgressClusterInfo", "default", {"spec": {"extraCidr": ["2001:db8:64:21::/64"]}})
    done = info_status(kube, lambda s: _uncovered_v6(s) == before)
    [after] = [c for c in done["conditions"] if c["type"] == "PodCIDRsIncomplete"]
    assert "2001:db8:64:21::10" not in after.get("message", "")
    # the condition clears only when no pod of the shared API server (other tests' included) is a stray any more
    if after["status"] == "False":
        assert after["reason"] == "AllPodIPsCovered"
