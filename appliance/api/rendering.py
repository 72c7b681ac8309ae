"""The typed model -> egressgw.io Kubernetes objects (API JSON form): the inverse of `appliance.api.manifests`.

Parsing `to_manifest(m)` with `appliance.api.validation.validate_all` gives `m` back (tested with Hypothesis). Used by
`egressgw migrate`, tests and anything that writes our objects. Pure.
"""

from __future__ import annotations

from typing import Any

from appliance.core.model import API_VERSION, EgressClusterInfo, EgressGateway, EgressPolicy, LabelSelector


def label_selector_to_dict(sel: LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sel.match_labels:
        out["matchLabels"] = dict(sel.match_labels)
    if sel.match_expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": str(r.operator), **({"values": list(r.values)} if r.values else {})}
            for r in sel.match_expressions
        ]
    return out


def _meta(name: str, namespace: str = "", generation: int = 0, created: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if generation:
        meta["generation"] = generation
    if created:
        meta["creationTimestamp"] = created
    return meta


def _gateway_manifest(gw: EgressGateway) -> dict[str, Any]:
    pools: dict[str, Any] = {}
    for version, pool in ((4, gw.ipv4_pool), (6, gw.ipv6_pool)):
        if pool.ranges:
            pools[f"ipv{version}"] = [str(r) for r in pool.ranges]
        if (eip := gw.default_eip(version)) is not None:
            pools[f"ipv{version}DefaultEIP"] = str(eip)
    spec: dict[str, Any] = {"ippools": pools}
    if gw.node_selector is not None:
        spec["nodeSelector"] = {"selector": label_selector_to_dict(gw.node_selector)}
    else:
        spec["appliancesOnly"] = True
    if gw.cluster_default:
        spec["clusterDefault"] = True
    t = gw.tunnel
    spec["tunnel"] = {"type": str(t.type), "vni": t.vni, **({"port": t.port} if t.port is not None else {}),
                      **({"mtu": t.mtu} if t.mtu is not None else {})}
    if gw.bgp.communities or gw.bgp.large_communities:
        spec["bgp"] = {"communities": list(gw.bgp.communities), "largeCommunities": list(gw.bgp.large_communities)}
    spec["failover"] = {"noGatewayAction": str(gw.failover.no_gateway_action),
                        "failbackHoldSeconds": gw.failover.failback_hold_seconds}
    return {"apiVersion": API_VERSION, "kind": "EgressGateway", "metadata": _meta(gw.name, generation=gw.generation),
            "spec": spec}


def _policy_manifest(p: EgressPolicy) -> dict[str, Any]:
    eip: dict[str, Any] = {"useNodeIP": p.egress_ip.use_node_ip, "allocatorPolicy": str(p.egress_ip.allocator_policy)}
    if p.egress_ip.ipv4 is not None:
        eip["ipv4"] = str(p.egress_ip.ipv4)
    if p.egress_ip.ipv6 is not None:
        eip["ipv6"] = str(p.egress_ip.ipv6)
    applied: dict[str, Any] = {}
    if p.applied_to.pod_selector is not None:
        applied["podSelector"] = label_selector_to_dict(p.applied_to.pod_selector)
    if p.applied_to.pod_subnet:
        applied["podSubnet"] = [str(n) for n in p.applied_to.pod_subnet]
    if p.applied_to.namespace_selector is not None:
        applied["namespaceSelector"] = label_selector_to_dict(p.applied_to.namespace_selector)
    spec: dict[str, Any] = {"egressIP": eip, "appliedTo": applied}
    if p.egress_gateway_name:
        spec["egressGatewayName"] = p.egress_gateway_name
    if p.dest_subnet:
        spec["destSubnet"] = [str(n) for n in p.dest_subnet]
    if p.priority:
        spec["priority"] = p.priority
    return {"apiVersion": API_VERSION, "kind": str(p.ref.kind),
            "metadata": _meta(p.ref.name, p.ref.namespace, p.generation, p.created), "spec": spec}


def _cluster_info_manifest(ci: EgressClusterInfo) -> dict[str, Any]:
    spec: dict[str, Any] = {"autoDetect": {"podCidrMode": str(ci.pod_cidr_mode), "clusterIP": ci.detect_cluster_ip,
                                           "nodeIP": ci.detect_node_ip}}
    if ci.extra_cidr:
        spec["extraCidr"] = [str(n) for n in ci.extra_cidr]
    return {"apiVersion": API_VERSION, "kind": "EgressClusterInfo", "metadata": {"name": "default"}, "spec": spec}


def to_manifest(model: EgressGateway | EgressPolicy | EgressClusterInfo) -> dict[str, Any]:
    """The Kubernetes object (API JSON form) for a model object; parsing it gives the model back."""
    if isinstance(model, EgressGateway):
        return _gateway_manifest(model)
    if isinstance(model, EgressPolicy):
        return _policy_manifest(model)
    return _cluster_info_manifest(model)
