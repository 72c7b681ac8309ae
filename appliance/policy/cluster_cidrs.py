"""Cluster-internal destinations (pure): what is never sent to a gateway, and the EgressClusterInfo status.

A policy with an empty destSubnet steers "everything except cluster-internal"; the planners subtract these CIDRs.
Sources, switched by the EgressClusterInfo singleton's `autoDetect`:
- `nodeIP` (default on): every node's InternalIP as a host route (/32, /128);
- `podCidrMode`: `auto` = the Calico IPPools when any exist, else the nodes' `spec.podCIDRs`; `k8s` = the nodes'
  `spec.podCIDRs`; `calico` = the Calico IPPools; `""` = none;
- `clusterIP` (default on): the Service CIDR(s) found by k8s_sync (`Snapshot.service_cidrs`);
- `extraCidr`: always added.
The result is collapsed per family and sorted, IPv4 first, so it compares and renders deterministically.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from appliance.core.model import IPAddress, IPNetwork, PodCidrMode
from appliance.core.snapshot import Snapshot
from appliance.policy.precedence import collapse


def host_network(ip: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


def pod_cidr_source(snapshot: Snapshot) -> str:
    """Where pod CIDRs come from under the current mode: "calico", "k8s" or "" (none)."""
    mode = snapshot.cluster_info.pod_cidr_mode
    if mode is PodCidrMode.AUTO:
        return "calico" if snapshot.calico_pools else "k8s"
    if mode is PodCidrMode.K8S:
        return "k8s"
    if mode is PodCidrMode.CALICO:
        return "calico"
    return ""


def pod_cidrs(snapshot: Snapshot) -> tuple[IPNetwork, ...]:
    source = pod_cidr_source(snapshot)
    if source == "calico":
        return _sorted(snapshot.calico_pools)
    if source == "k8s":
        return _sorted(net for node in snapshot.nodes for net in node.pod_cidrs)
    return ()


def node_ips(snapshot: Snapshot) -> tuple[IPNetwork, ...]:
    if not snapshot.cluster_info.detect_node_ip:
        return ()
    return _sorted(host_network(a) for node in snapshot.nodes for a in node.addresses)


def service_cidrs(snapshot: Snapshot) -> tuple[IPNetwork, ...]:
    return _sorted(snapshot.service_cidrs) if snapshot.cluster_info.detect_cluster_ip else ()


def cluster_cidrs(snapshot: Snapshot) -> tuple[IPNetwork, ...]:
    """Every cluster-internal destination, collapsed per family, IPv4 first."""
    nets = [*node_ips(snapshot), *pod_cidrs(snapshot), *service_cidrs(snapshot), *snapshot.cluster_info.extra_cidr]
    return collapse(_sorted(nets))


def _sorted(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(sorted(set(nets), key=lambda n: (n.version, int(n.network_address), n.prefixlen)))


def _by_family(items: Iterable[IPNetwork | IPAddress]) -> dict[str, list[str]]:
    items = list(items)
    return {
        "ipv4": [str(i) for i in items if i.version == 4],
        "ipv6": [str(i) for i in items if i.version == 6],
    }


def cluster_info_status(snapshot: Snapshot) -> dict[str, Any]:
    """The EgressClusterInfo `status` content (JSON-able), mirroring spidernet's shape.

    `nodeIP`: node -> {ipv4, ipv6} addresses; `clusterIP`: {ipv4, ipv6} service CIDRs; `podCIDR`: source ("calico"
    or "k8s") -> {ipv4, ipv6}; `extraCidr`: as in the spec. Disabled sources are empty.
    """
    node_map: dict[str, dict[str, list[str]]] = {}
    if snapshot.cluster_info.detect_node_ip:
        for node in sorted(snapshot.nodes, key=lambda n: n.name):
            addresses: list[IPAddress] = sorted(node.addresses, key=lambda a: (a.version, int(a)))
            node_map[node.name] = _by_family(addresses)
    source = pod_cidr_source(snapshot)
    pod_map = {source: _by_family(pod_cidrs(snapshot))} if source else {}
    return {
        "podCidrMode": str(snapshot.cluster_info.pod_cidr_mode),
        "nodeIP": node_map,
        "clusterIP": _by_family(service_cidrs(snapshot)),
        "podCIDR": pod_map,
        "extraCidr": [str(n) for n in snapshot.cluster_info.extra_cidr],
    }
