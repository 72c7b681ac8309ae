"""The validation table: every rule of appliance.api.validation, valid and invalid, with the field path it names."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.api.validation import policy_object_ref, validate_all
from appliance.core.model import AllocatorPolicy, PolicyKind
from appliance.core.snapshot import ObjectRef, Reason

V = "egressgw.io/v1alpha1"


def gw(name: str = "gw", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ippools": {"ipv4": ["203.0.113.128/28"]},
                            "nodeSelector": {"selector": {"matchLabels": {"egressgw.io/gateway": "true"}}}}
    body.update(spec)
    return {"apiVersion": V, "kind": "EgressGateway", "metadata": {"name": name}, "spec": body}


def pol(name: str = "p", kind: str = "EgressPolicy", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}}
    body.update(spec)
    meta = {"name": name, "namespace": "shop"} if kind == "EgressPolicy" else {"name": name}
    return {"apiVersion": V, "kind": kind, "metadata": meta, "spec": body}


def expr(**e: Any) -> dict[str, Any]:
    return {"appliedTo": {"podSelector": {"matchExpressions": [e]}}}


def pools(**p: Any) -> dict[str, Any]:
    return {"ippools": p}


# (id, objects, expected problems as (name, field, reason)); an empty list means all valid
CASES: list[tuple[str, list[dict[str, Any]], list[tuple[str, str, Reason]]]] = [
    # ---- valid ----
    ("gateway-minimal", [gw()], []),
    ("gateway-dual-stack", [gw(**pools(ipv4=["203.0.113.128/30"], ipv6=["2001:db8:e1::1-2001:db8:e1::2"],
                                      ipv6DefaultEIP="2001:db8:e1::2"))], []),
    ("gateway-single-ips-and-ranges", [gw(**pools(ipv4=["203.0.113.130", "203.0.113.140-203.0.113.141"]))], []),
    ("gateway-appliances-only", [gw(appliancesOnly=True, nodeSelector=None)], []),
    ("gateway-no-pools", [gw(ippools={})], []),
    ("gateway-full", [gw(clusterDefault=True, tunnel={"type": "wireguard", "vni": 5, "port": 51821, "mtu": 1420},
                         bgp={"communities": ["64513:100"], "largeCommunities": ["64513:1:2"]},
                         failover={"noGatewayAction": "FailOpen", "failbackHoldSeconds": 2.5})], []),
    ("two-gateways-disjoint", [gw("a"), gw("b", **pools(ipv4=["203.0.113.144/28"]))], []),
    ("policy-minimal", [pol()], []),
    ("policy-missing-gateway-is-not-invalid", [pol(egressGatewayName="nowhere", egressIP={"ipv4": "198.51.100.7"})],
     []),
    ("policy-eip-in-pool", [gw(), pol(egressGatewayName="gw", egressIP={"ipv4": "203.0.113.131"})], []),
    ("policy-pod-subnet", [pol(appliedTo={"podSubnet": ["100.64.1.0/24", "2001:db8:64:1::/64"]})], []),
    ("policy-empty-pod-selector-means-namespace", [pol(appliedTo={"podSelector": {}})], []),
    ("policy-selector-operators", [pol(**expr(key="app", operator="In", values=["a", "b"])),
                                   pol("q", **expr(key="egressgw.io/x", operator="DoesNotExist"))], []),
    ("policy-dest-subnet-priority", [pol(destSubnet=["203.0.113.0/28", "2001:db8::/32"], priority=2**31 - 1)], []),
    ("policy-use-node-ip", [pol(egressIP={"useNodeIP": True, "allocatorPolicy": "rr"})], []),
    ("cluster-policy-namespace-selector-only", [pol(kind="EgressClusterPolicy",
                                                    appliedTo={"namespaceSelector": {"matchLabels": {"t": "x"}}})], []),
    ("cluster-info", [{"apiVersion": V, "kind": "EgressClusterInfo", "metadata": {"name": "default"},
                       "spec": {"autoDetect": {"podCidrMode": ""}, "extraCidr": ["100.127.0.0/24"]}}], []),
    ("other-groups-ignored", [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}], []),
    ("null-fields-are-absent", [pol(destSubnet=None, priority=None)], []),
    # ---- gateway pools ----
    ("malformed-ip", [gw(**pools(ipv4=["203.0.113.130", "203.0.113.256"]))],
     [("gw", "spec.ippools.ipv4[1]", Reason.INVALID)]),
    ("range-reversed", [gw(**pools(ipv4=["203.0.113.140-203.0.113.130"]))],
     [("gw", "spec.ippools.ipv4[0]", Reason.INVALID)]),
    ("range-mixed-families", [gw(**pools(ipv6=["2001:db8:e1::1-203.0.113.9"]))],
     [("gw", "spec.ippools.ipv6[0]", Reason.INVALID)]),
    ("range-garbage", [gw(**pools(ipv4=["a-b"]))], [("gw", "spec.ippools.ipv4[0]", Reason.INVALID)]),
    ("cidr-host-bits", [gw(**pools(ipv4=["203.0.113.129/25"]))], [("gw", "spec.ippools.ipv4[0]", Reason.INVALID)]),
    ("cidr-bad-prefix", [gw(**pools(ipv4=["203.0.113.0/33"]))], [("gw", "spec.ippools.ipv4[0]", Reason.INVALID)]),
    ("wrong-family", [gw(**pools(ipv6=["203.0.113.1"]))], [("gw", "spec.ippools.ipv6[0]", Reason.INVALID)]),
    ("overlap-within-pool", [gw(**pools(ipv4=["203.0.113.128/28", "203.0.113.130"]))],
     [("gw", "spec.ippools.ipv4[1]", Reason.INVALID)]),
    ("default-eip-outside", [gw(**pools(ipv4=["203.0.113.128/28"], ipv4DefaultEIP="203.0.113.200"))],
     [("gw", "spec.ippools.ipv4DefaultEIP", Reason.INVALID)]),
    ("default-eip-no-pool", [gw(**pools(ipv6DefaultEIP="2001:db8:e1::1"))],
     [("gw", "spec.ippools.ipv6DefaultEIP", Reason.INVALID)]),
    ("pool-count-mismatch", [gw(**pools(ipv4=["203.0.113.128/30"], ipv6=["2001:db8:e1::1"]))],
     [("gw", "spec.ippools.ipv6", Reason.INVALID)]),
    ("duplicate-ip-across-gateways", [gw("b", **pools(ipv4=["203.0.113.129"])), gw("a")],
     [("b", "spec.ippools.ipv4[0]", Reason.DUPLICATE_POOL_IP)]),
    ("duplicate-ip-younger-loses", [
        {**gw("a"), "metadata": {"name": "a", "creationTimestamp": "2026-01-02T00:00:00Z"}},
        {**gw("b", **pools(ipv4=["203.0.113.1", "203.0.113.140"])),
         "metadata": {"name": "b", "creationTimestamp": "2026-01-01T00:00:00Z"}}],
     [("a", "spec.ippools.ipv4[0]", Reason.DUPLICATE_POOL_IP)]),
    ("second-cluster-default", [gw("a", clusterDefault=True),
                                gw("b", clusterDefault=True, **pools(ipv4=["203.0.113.144/28"]))],
     [("b", "spec.clusterDefault", Reason.DUPLICATE_CLUSTER_DEFAULT)]),
    # ---- gateway members, tunnel, bgp ----
    ("empty-node-selector", [gw(nodeSelector={"selector": {}})],
     [("gw", "spec.nodeSelector.selector", Reason.INVALID)]),
    ("missing-node-selector", [gw(nodeSelector=None)], [("gw", "spec.nodeSelector", Reason.INVALID)]),
    ("node-selector-without-selector", [gw(nodeSelector={})], [("gw", "spec.nodeSelector.selector", Reason.INVALID)]),
    ("appliances-only-with-selector", [gw(appliancesOnly=True)], [("gw", "spec.appliancesOnly", Reason.INVALID)]),
    ("tunnel-type", [gw(tunnel={"type": "gre"})], [("gw", "spec.tunnel.type", Reason.INVALID)]),
    ("tunnel-vni-range", [gw(tunnel={"vni": 2**24})], [("gw", "spec.tunnel.vni", Reason.INVALID)]),
    ("tunnel-mtu-range", [gw(tunnel={"mtu": 1000})], [("gw", "spec.tunnel.mtu", Reason.INVALID)]),
    ("bad-community", [gw(bgp={"communities": ["64513"]})], [("gw", "spec.bgp.communities[0]", Reason.INVALID)]),
    ("bad-large-community", [gw(bgp={"largeCommunities": ["1:2:4294967296"]})],
     [("gw", "spec.bgp.largeCommunities[0]", Reason.INVALID)]),
    ("failover-action", [gw(failover={"noGatewayAction": "Drop"})],
     [("gw", "spec.failover.noGatewayAction", Reason.INVALID)]),
    # ---- policies ----
    ("policy-eip-outside-pool", [gw(), pol(egressGatewayName="gw", egressIP={"ipv4": "203.0.113.200"})],
     [("p", "spec.egressIP.ipv4", Reason.EIP_NOT_IN_POOL)]),
    ("policy-eip-no-v6-pool", [gw(), pol(egressGatewayName="gw", egressIP={"ipv6": "2001:db8:e1::1"})],
     [("p", "spec.egressIP.ipv6", Reason.EIP_NOT_IN_POOL)]),
    ("policy-malformed-eip", [pol(egressIP={"ipv4": "203.0.113"})], [("p", "spec.egressIP.ipv4", Reason.INVALID)]),
    ("policy-eip-wrong-family", [pol(egressIP={"ipv4": "2001:db8::1"})], [("p", "spec.egressIP.ipv4", Reason.INVALID)]),
    ("use-node-ip-with-eip", [pol(egressIP={"useNodeIP": True, "ipv6": "2001:db8:e1::1"})],
     [("p", "spec.egressIP.useNodeIP", Reason.INVALID)]),
    ("pod-selector-and-subnet", [pol(appliedTo={"podSelector": {"matchLabels": {"a": "b"}},
                                                "podSubnet": ["100.64.1.0/24"]})],
     [("p", "spec.appliedTo", Reason.INVALID)]),
    ("empty-applied-to", [pol(appliedTo={})], [("p", "spec.appliedTo", Reason.INVALID)]),
    ("missing-applied-to", [pol(appliedTo=None)], [("p", "spec.appliedTo", Reason.INVALID)]),
    ("cluster-policy-empty-selectors", [pol(kind="EgressClusterPolicy", appliedTo={"namespaceSelector": {}})],
     [("p", "spec.appliedTo", Reason.INVALID)]),
    ("cluster-policy-every-pod", [pol(kind="EgressClusterPolicy", appliedTo={"podSelector": {}})],
     [("p", "spec.appliedTo.podSelector", Reason.INVALID)]),
    ("bad-operator", [pol(**expr(key="a", operator="Equals", values=["x"]))],
     [("p", "spec.appliedTo.podSelector.matchExpressions[0].operator", Reason.INVALID)]),
    ("exists-with-values", [pol(**expr(key="a", operator="Exists", values=["x"]))],
     [("p", "spec.appliedTo.podSelector.matchExpressions[0].values", Reason.INVALID)]),
    ("notin-without-values", [pol(**expr(key="a", operator="NotIn"))],
     [("p", "spec.appliedTo.podSelector.matchExpressions[0].values", Reason.INVALID)]),
    ("expression-without-key", [pol(**expr(operator="Exists"))],
     [("p", "spec.appliedTo.podSelector.matchExpressions[0].key", Reason.INVALID)]),
    ("bad-label-value", [pol(appliedTo={"podSelector": {"matchLabels": {"app": "a b"}}})],
     [("p", "spec.appliedTo.podSelector.matchLabels", Reason.INVALID)]),
    ("bad-pod-subnet", [pol(appliedTo={"podSubnet": ["100.64.1.0/24", "100.64.1.1"]})],
     [("p", "spec.appliedTo.podSubnet[1]", Reason.INVALID)]),
    ("bad-dest-subnet", [pol(destSubnet=["203.0.113.0/28", "nowhere"])], [("p", "spec.destSubnet[1]", Reason.INVALID)]),
    ("dest-subnet-host-bits", [pol(destSubnet=["203.0.113.1/24"])], [("p", "spec.destSubnet[0]", Reason.INVALID)]),
    ("namespace-selector-on-namespaced", [pol(appliedTo={"podSelector": {}, "namespaceSelector": {}})],
     [("p", "spec.appliedTo.namespaceSelector", Reason.INVALID)]),
    ("unknown-allocator", [pol(egressIP={"allocatorPolicy": "random"})],
     [("p", "spec.egressIP.allocatorPolicy", Reason.INVALID)]),
    ("negative-priority", [pol(priority=-1)], [("p", "spec.priority", Reason.INVALID)]),
    ("overflowing-priority", [pol(priority=2**31)], [("p", "spec.priority", Reason.INVALID)]),
    ("bad-gateway-name", [pol(egressGatewayName="Not_A_Name")], [("p", "spec.egressGatewayName", Reason.INVALID)]),
    # ---- types, unknown fields, identity ----
    ("unknown-spec-field", [pol(egressIp={})], [("p", "spec.egressIp", Reason.INVALID)]),
    ("unknown-nested-field", [gw(ippools={"ipv4": [], "ipv4Default": "x"})],
     [("gw", "spec.ippools.ipv4Default", Reason.INVALID)]),
    ("unknown-top-level-field", [{**pol(), "data": {}}], [("p", "data", Reason.INVALID)]),
    ("wrong-type-list", [gw(**pools(ipv4="203.0.113.1"))], [("gw", "spec.ippools.ipv4", Reason.INVALID)]),
    ("wrong-type-item", [gw(**pools(ipv4=[7]))], [("gw", "spec.ippools.ipv4[0]", Reason.INVALID)]),
    ("wrong-type-bool", [gw(clusterDefault="yes")], [("gw", "spec.clusterDefault", Reason.INVALID)]),
    ("wrong-type-int-bool", [pol(priority=True)], [("p", "spec.priority", Reason.INVALID)]),
    ("wrong-type-spec", [{**gw(), "spec": []}], [("gw", "spec", Reason.INVALID)]),
    ("missing-name", [{"apiVersion": V, "kind": "EgressGateway", "metadata": {}, "spec": {}}],
     [("", "metadata.name", Reason.INVALID)]),
    ("bad-object-name", [gw("Gw_1")], [("Gw_1", "metadata.name", Reason.INVALID)]),
    ("unknown-kind", [{"apiVersion": V, "kind": "EgressTunnel", "metadata": {"name": "x"}}],
     [("x", "kind", Reason.INVALID)]),
    ("unknown-version", [{**gw(), "apiVersion": "egressgw.io/v1"}], [("gw", "apiVersion", Reason.INVALID)]),
    ("spidernet-version", [{**gw(), "apiVersion": "egressgateway.spidernet.io/v1beta1"}],
     [("gw", "apiVersion", Reason.INVALID)]),
    ("duplicate-object", [gw(), gw()], [("gw", "metadata.name", Reason.INVALID)]),
    ("cluster-info-name", [{"apiVersion": V, "kind": "EgressClusterInfo", "metadata": {"name": "x"}}],
     [("x", "metadata.name", Reason.INVALID)]),
    ("cluster-info-mode", [{"apiVersion": V, "kind": "EgressClusterInfo", "metadata": {"name": "default"},
                            "spec": {"autoDetect": {"podCidrMode": "cilium"}}}],
     [("default", "spec.autoDetect.podCidrMode", Reason.INVALID)]),
]


@pytest.mark.parametrize(("objects", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_validation_table(objects: list[dict[str, Any]], expected: list[tuple[str, str, Reason]]) -> None:
    result = validate_all(objects)
    got = sorted({(p.ref.name, p.field, p.reason) for p in result.problems})
    assert got == sorted(expected), [str(p) for p in result.problems]
    for p in result.problems:
        assert p.message, p
    valid_names = {g.name for g in result.gateways} | {p.ref.name for p in result.policies}
    invalid_names = {name for name, _, _ in expected}
    ours = [o for o in objects if o.get("apiVersion") == V and o.get("kind") != "EgressClusterInfo"]
    # every object without a problem is in the result; every object with one is not (a duplicate's first stays)
    for o in ours:
        name = o["metadata"].get("name", "")
        if name not in invalid_names:
            assert name in valid_names
    for name, field, _ in expected:
        if field != "metadata.name":
            assert name not in valid_names


def test_valid_objects_unaffected_by_invalid_ones() -> None:
    result = validate_all([gw("good"), gw("bad", **pools(ipv4=["x"])), pol("ok"), pol("broken", priority=-5)])
    assert [g.name for g in result.gateways] == ["good"]
    assert [p.ref.name for p in result.policies] == ["ok"]
    assert {p.ref.name for p in result.problems} == {"bad", "broken"}


def test_result_is_independent_of_input_order() -> None:
    objs = [gw("b", clusterDefault=True, **pools(ipv4=["203.0.113.129"])), gw("a", clusterDefault=True),
            gw("c", **pools(ipv4=["203.0.113.160/28"])), pol(), pol("x", destSubnet=["bad"])]
    first = validate_all(objs)
    assert validate_all(list(reversed(objs))) == first
    assert [g.name for g in first.gateways] == ["a", "c"]


def test_default_eip_defaults_to_first_pool_address() -> None:
    result = validate_all([gw(**pools(ipv4=["203.0.113.140-203.0.113.141", "203.0.113.130"],
                                      ipv6=["2001:db8:e1::/127", "2001:db8:e1::9"]))])
    (g,) = result.gateways
    assert g.ipv4_default_eip == IPv4Address("203.0.113.130")
    assert g.ipv6_default_eip == IPv6Address("2001:db8:e1::")
    assert g.ipv4_pool.size == 3


def test_parsed_policy_fields() -> None:
    result = validate_all([pol(egressGatewayName="gw", egressIP={"ipv4": "203.0.113.130", "allocatorPolicy": "rr"},
                               destSubnet=["2001:db8::/32", "203.0.113.0/28"], priority=7),
                           pol("c", kind="EgressClusterPolicy",
                               appliedTo={"namespaceSelector": {"matchLabels": {"team": "a"}}})])
    cp, p = result.policies
    assert p.ref.namespace == "shop" and p.ref.kind is PolicyKind.NAMESPACED
    assert p.egress_ip.ipv4 == IPv4Address("203.0.113.130")
    assert p.egress_ip.allocator_policy is AllocatorPolicy.RR
    assert p.dest_subnet == (ip_network("203.0.113.0/28"), ip_network("2001:db8::/32"))
    assert p.priority == 7
    # a namespaceSelector-only cluster policy selects every pod of those namespaces
    assert cp.ref.namespace == "" and cp.applied_to.pod_selector is not None and cp.applied_to.pod_selector.is_empty
    assert cp.applied_to.namespace_selector is not None
    assert cp.applied_to.namespace_selector.matches({"team": "a"})


def test_policy_without_namespace_is_in_default() -> None:
    obj = pol()
    del obj["metadata"]["namespace"]
    (p,) = validate_all([obj]).policies
    assert p.ref.namespace == "default"


IMMUTABLE = [
    ("spec.egressGatewayName", {"egressGatewayName": "other"}),
    ("spec.egressIP.ipv4", {"egressIP": {"ipv4": "203.0.113.131"}}),
    ("spec.egressIP.ipv6", {"egressIP": {"ipv4": "203.0.113.130", "ipv6": "2001:db8:e1::1"}}),
    ("spec.egressIP.ipv4,spec.egressIP.useNodeIP", {"egressIP": {"useNodeIP": True}}),
    ("spec.egressIP.allocatorPolicy", {"egressIP": {"ipv4": "203.0.113.130", "allocatorPolicy": "rr"}}),
]


@pytest.mark.parametrize(("field", "change"), IMMUTABLE, ids=[i[0] for i in IMMUTABLE])
def test_immutable_fields_keep_the_accepted_version(field: str, change: dict[str, Any]) -> None:
    original = pol(egressGatewayName="gw", egressIP={"ipv4": "203.0.113.130"})
    (old,) = validate_all([original]).policies
    updated = copy.deepcopy(original)
    updated["spec"].update(change)
    if "egressIP" in change and "ipv4" not in change["egressIP"]:
        updated["spec"]["egressIP"] = change["egressIP"]
    accepted = {policy_object_ref(old): old}
    result = validate_all([updated], accepted=accepted)
    assert [(p.field, p.reason) for p in result.problems] == [(f, Reason.IMMUTABLE_FIELD) for f in field.split(",")]
    assert result.policies == (old,)


def test_mutable_fields_change_freely() -> None:
    original = pol(egressGatewayName="gw", egressIP={"ipv4": "203.0.113.130"})
    (old,) = validate_all([original]).policies
    updated = copy.deepcopy(original)
    updated["spec"]["priority"] = 9
    updated["spec"]["destSubnet"] = ["203.0.113.0/28"]
    result = validate_all([updated], accepted={ObjectRef(kind="EgressPolicy", namespace="shop", name="p"): old})
    assert not result.problems
    assert result.policies[0].priority == 9


def test_non_mapping_document_is_reported() -> None:
    result = validate_all(["just a string"])  # type: ignore[list-item]
    assert [(p.ref.name, p.reason) for p in result.problems] == [("#0", Reason.INVALID)]


_MIXED = [gw("b", clusterDefault=True, **pools(ipv4=["203.0.113.129"])), gw("a", clusterDefault=True),
          gw("c", **pools(ipv4=["203.0.113.160/28"], ipv6=["2001:db8:e1::/124"])),
          gw("d", clusterDefault=True, **pools(ipv4=["203.0.113.176/28"])),
          pol(), pol("x", destSubnet=["bad"]), pol("y", egressGatewayName="c", egressIP={"ipv4": "203.0.113.1"}),
          pol("z", kind="EgressClusterPolicy", appliedTo={"namespaceSelector": {"matchLabels": {"a": "b"}}}),
          {"apiVersion": V, "kind": "EgressClusterInfo", "metadata": {"name": "default"}}]


@settings(max_examples=60, deadline=None)
@given(st.permutations(_MIXED))
def test_property_order_independent(objects: list[dict[str, Any]]) -> None:
    assert validate_all(objects) == validate_all(_MIXED)
