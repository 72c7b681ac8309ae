"""Cluster-internal destination detection per EgressClusterInfo mode, and the EgressClusterInfo status content."""

from __future__ import annotations

import pytest

from appliance.core.model import EgressClusterInfo, PodCidrMode
from appliance.core.snapshot import Snapshot
from appliance.policy.cluster_cidrs import cluster_cidrs, cluster_info_status
from tests.unit.resolution_builders import net, node

NODES = (
    node("w1", "100.127.0.11", "2001:db8:127::11", pod_cidrs=("100.64.1.0/24", "2001:db8:64:1::/64")),
    node("w2", "100.127.0.12", pod_cidrs=("100.64.2.0/24",)),
)
CALICO = (net("100.80.0.0/16"),)
SERVICES = (net("100.100.0.0/16"),)


def snap(info: EgressClusterInfo, *, calico: bool = True) -> Snapshot:
    return Snapshot(nodes=NODES, cluster_info=info, calico_pools=CALICO if calico else (), service_cidrs=SERVICES)


def strs(nets: tuple) -> list[str]:  # type: ignore[type-arg]
    return [str(n) for n in nets]


@pytest.mark.parametrize(
    ("info", "calico", "expected"),
    [
        # auto with Calico pools present: the pools, not the nodes' podCIDRs
        (EgressClusterInfo(), True,
         ["100.80.0.0/16", "100.100.0.0/16", "100.127.0.11/32", "100.127.0.12/32", "2001:db8:127::11/128"]),
        # auto without Calico: the nodes' podCIDRs
        (EgressClusterInfo(), False,
         ["100.64.1.0/24", "100.64.2.0/24", "100.100.0.0/16", "100.127.0.11/32", "100.127.0.12/32",
          "2001:db8:64:1::/64", "2001:db8:127::11/128"]),
        (EgressClusterInfo(pod_cidr_mode=PodCidrMode.K8S, detect_node_ip=False, detect_cluster_ip=False), True,
         ["100.64.1.0/24", "100.64.2.0/24", "2001:db8:64:1::/64"]),
        (EgressClusterInfo(pod_cidr_mode=PodCidrMode.CALICO, detect_node_ip=False, detect_cluster_ip=False), False,
         []),
        (EgressClusterInfo(pod_cidr_mode=PodCidrMode.NONE, detect_node_ip=False,
                           extra_cidr=(net("100.64.0.0/10"), net("2001:db8:ff::/48"))), True,
         ["100.64.0.0/10", "2001:db8:ff::/48"]),  # extraCidr swallows the service CIDR (collapsed)
    ],
)
def test_cluster_cidrs_per_mode(info: EgressClusterInfo, calico: bool, expected: list[str]) -> None:
    assert strs(cluster_cidrs(snap(info, calico=calico))) == expected


def test_adjacent_networks_collapse() -> None:
    info = EgressClusterInfo(pod_cidr_mode=PodCidrMode.NONE, detect_node_ip=False, detect_cluster_ip=False,
                             extra_cidr=(net("100.64.1.0/25"), net("100.64.1.128/25")))
    assert strs(cluster_cidrs(snap(info))) == ["100.64.1.0/24"]


def test_cluster_info_status_content() -> None:
    status = cluster_info_status(snap(EgressClusterInfo(extra_cidr=(net("203.0.113.0/28"),))))
    assert status == {
        "podCidrMode": "auto",
        "nodeIP": {"w1": {"ipv4": ["100.127.0.11"], "ipv6": ["2001:db8:127::11"]},
                   "w2": {"ipv4": ["100.127.0.12"], "ipv6": []}},
        "clusterIP": {"ipv4": ["100.100.0.0/16"], "ipv6": []},
        "podCIDR": {"calico": {"ipv4": ["100.80.0.0/16"], "ipv6": []}},
        "extraCidr": ["203.0.113.0/28"],
    }
    off = cluster_info_status(snap(EgressClusterInfo(pod_cidr_mode=PodCidrMode.NONE, detect_node_ip=False,
                                                     detect_cluster_ip=False), calico=False))
    assert off == {"podCidrMode": "", "nodeIP": {}, "clusterIP": {"ipv4": [], "ipv6": []}, "podCIDR": {},
                   "extraCidr": []}
    k8s = cluster_info_status(snap(EgressClusterInfo(pod_cidr_mode=PodCidrMode.K8S), calico=True))
    assert k8s["podCIDR"] == {"k8s": {"ipv4": ["100.64.1.0/24", "100.64.2.0/24"], "ipv6": ["2001:db8:64:1::/64"]}}
