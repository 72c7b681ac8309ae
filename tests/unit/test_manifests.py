"""Round trip typed model <-> Kubernetes object, and the cluster-object parsers (Node, Pod, Namespace, Lease)."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.api.manifests import parse_appliance_lease, parse_namespace, parse_node, parse_pod, to_manifest
from appliance.api.validation import validate_all
from appliance.core.model import (
    AppliedTo,
    EgressClusterInfo,
    EgressGateway,
    EgressIPSpec,
    EgressPolicy,
    IPPool,
    IPRange,
    LabelSelector,
    Operator,
    PodCidrMode,
    PolicyKind,
    PolicyRef,
    Requirement,
    TunnelSpec,
    TunnelType,
)

V = "egressgw.io/v1alpha1"

labels = st.dictionaries(st.sampled_from(["app", "tier", "egressgw.io/gateway", "team"]),
                         st.sampled_from(["a", "b", "true", "web-1"]), max_size=3)
expressions = st.lists(st.one_of(
    st.builds(lambda k, op, vs: {"key": k, "operator": op, "values": vs},
              st.sampled_from(["app", "tier"]), st.sampled_from(["In", "NotIn"]),
              st.lists(st.sampled_from(["x", "y", "z"]), min_size=1, max_size=3, unique=True)),
    st.builds(lambda k, op: {"key": k, "operator": op},
              st.sampled_from(["app", "tier"]), st.sampled_from(["Exists", "DoesNotExist"])),
), max_size=2)
selectors = st.builds(
    lambda ml, me: {**({"matchLabels": ml} if ml else {}), **({"matchExpressions": me} if me else {})},
    labels, expressions)


@st.composite
def pool_pairs(draw: st.DrawFn, limit: int) -> list[tuple[int, int]]:
    """Non-overlapping (first, last) offsets: singles and ranges."""
    points = sorted(draw(st.lists(st.integers(1, limit), min_size=0, max_size=8, unique=True)))
    out, i = [], 0
    while i < len(points):
        if i + 1 < len(points) and draw(st.booleans()):
            out.append((points[i], points[i + 1]))
            i += 2
        else:
            out.append((points[i], points[i]))
            i += 1
    return out


def render(pairs: list[tuple[int, int]], fmt: str) -> list[str]:
    return [fmt.format(a) if a == b else f"{fmt.format(a)}-{fmt.format(b)}" for a, b in pairs]


V4, V6 = "203.0.113.{}", "2001:db8:e1::{:x}"


@st.composite
def gateways(draw: st.DrawFn) -> dict[str, Any]:
    v4 = draw(pool_pairs(250))
    spec: dict[str, Any] = {"ippools": {"ipv4": render(v4, V4)}}
    if draw(st.booleans()):  # dual stack needs equal sizes: mirror the IPv4 entries
        spec["ippools"]["ipv6"] = render(v4, V6)
    elif not v4:
        spec["ippools"]["ipv6"] = render(draw(pool_pairs(65535)), V6)
    sel = draw(selectors)
    if sel:
        spec["nodeSelector"] = {"selector": sel}
    else:
        spec["appliancesOnly"] = True
    spec["clusterDefault"] = draw(st.booleans())
    spec["tunnel"] = {"type": draw(st.sampled_from(["vxlan", "wireguard"])), "vni": draw(st.integers(1, 2**24 - 1))}
    if draw(st.booleans()):
        spec["tunnel"]["mtu"] = draw(st.integers(1280, 9000))
    if draw(st.booleans()):
        spec["bgp"] = {"communities": ["64513:100"], "largeCommunities": ["64513:1:2"]}
    spec["failover"] = {"noGatewayAction": draw(st.sampled_from(["FailClosed", "FailOpen"])),
                        "failbackHoldSeconds": draw(st.integers(0, 600))}
    return {"apiVersion": V, "kind": "EgressGateway", "metadata": {"name": "gw"}, "spec": spec}


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    cluster = draw(st.booleans())
    eip: dict[str, Any] = {"allocatorPolicy": draw(st.sampled_from(["default", "rr"]))}
    choice = draw(st.sampled_from(["none", "v4", "v6", "both", "node"]))
    if choice in ("v4", "both"):
        eip["ipv4"] = f"203.0.113.{draw(st.integers(1, 254))}"
    if choice in ("v6", "both"):
        eip["ipv6"] = f"2001:db8:e1::{draw(st.integers(1, 9999)):x}"
    eip["useNodeIP"] = choice == "node"
    if draw(st.booleans()):
        applied: dict[str, Any] = {"podSubnet": draw(st.lists(st.sampled_from(
            ["100.64.1.0/24", "100.64.2.0/28", "2001:db8:64:1::/64"]), min_size=1, unique=True))}
    else:
        applied = {"podSelector": draw(selectors) if not cluster else draw(selectors.filter(bool))}
    if cluster and draw(st.booleans()):
        applied["namespaceSelector"] = draw(selectors)
    spec: dict[str, Any] = {"egressIP": eip, "appliedTo": applied,
                            "destSubnet": draw(st.lists(st.sampled_from(
                                ["203.0.113.0/28", "198.51.100.0/24", "2001:db8:203::/64", "0.0.0.0/0"]),
                                unique=True)),
                            "priority": draw(st.integers(0, 2**31 - 1))}
    if draw(st.booleans()):
        spec["egressGatewayName"] = "gw"
    meta: dict[str, Any] = {"name": "p", "generation": draw(st.integers(0, 9)),
                            "creationTimestamp": "2026-11-27T08:00:00Z"}
    if not cluster:
        meta["namespace"] = "shop"
    return {"apiVersion": V, "kind": "EgressClusterPolicy" if cluster else "EgressPolicy", "metadata": meta,
            "spec": spec}


def reparse(model: Any) -> Any:
    result = validate_all([to_manifest(model)])
    assert not result.problems, [str(p) for p in result.problems]
    if isinstance(model, EgressGateway):
        return result.gateways[0]
    if isinstance(model, EgressPolicy):
        return result.policies[0]
    return result.cluster_info


@settings(max_examples=150, deadline=None)
@given(gateways())
def test_gateway_round_trip(obj: dict[str, Any]) -> None:
    result = validate_all([obj])
    assert not result.problems, [str(p) for p in result.problems]
    (gw,) = result.gateways
    assert reparse(gw) == gw


@settings(max_examples=150, deadline=None)
@given(policies())
def test_policy_round_trip(obj: dict[str, Any]) -> None:
    result = validate_all([obj])
    assert not result.problems, [str(p) for p in result.problems]
    (p,) = result.policies
    assert reparse(p) == p


def test_explicit_models_round_trip() -> None:
    gw = EgressGateway(
        name="edge",
        ipv4_pool=IPPool(ranges=(IPRange(first=IPv4Address("203.0.113.128"), last=IPv4Address("203.0.113.143")),)),
        ipv4_default_eip=IPv4Address("203.0.113.130"),
        node_selector=None,
        tunnel=TunnelSpec(type=TunnelType.WIREGUARD, vni=9, port=51900, mtu=1400),
        generation=3,
    )
    assert reparse(gw) == gw
    policy = EgressPolicy(
        ref=PolicyRef(kind=PolicyKind.CLUSTER, namespace="", name="all-data"),
        egress_ip=EgressIPSpec(ipv6=IPv6Address("2001:db8:e1::5")),
        applied_to=AppliedTo(pod_selector=LabelSelector(match_expressions=(
            Requirement(key="tier", operator=Operator.NOT_IN, values=("batch",)),)),
            namespace_selector=LabelSelector(match_labels=(("team", "data"),))),
        dest_subnet=(ip_network("203.0.113.0/28"),),
        priority=5,
    )
    assert reparse(policy) == policy
    info = EgressClusterInfo(pod_cidr_mode=PodCidrMode.K8S, detect_cluster_ip=False,
                             extra_cidr=(ip_network("100.127.0.0/24"),))
    assert reparse(info) == info
    assert reparse(EgressClusterInfo()) == EgressClusterInfo()


def test_manifest_shape_uses_api_field_names() -> None:
    (gw,) = validate_all([{"apiVersion": V, "kind": "EgressGateway", "metadata": {"name": "g"}, "spec": {
        "ippools": {"ipv4": ["203.0.113.128/30"]},
        "nodeSelector": {"selector": {"matchLabels": {"egressgw.io/gateway": "true"}}}}}]).gateways
    m = to_manifest(gw)
    assert m["apiVersion"] == V and m["kind"] == "EgressGateway"
    # a CIDR gives its host addresses: the default EIP is the first host, never the network address
    assert m["spec"]["ippools"] == {"ipv4": ["203.0.113.129-203.0.113.130"], "ipv4DefaultEIP": "203.0.113.129"}
    assert m["spec"]["nodeSelector"] == {"selector": {"matchLabels": {"egressgw.io/gateway": "true"}}}


# ----- cluster objects -----

def test_parse_node() -> None:
    node = parse_node({
        "metadata": {"name": "gw1", "labels": {"egressgw.io/gateway": "true"},
                     "annotations": {"egressgw.io/wireguard-public-key": "abc="}},
        "spec": {"podCIDR": "100.64.9.0/24", "podCIDRs": ["100.64.1.0/24", "2001:db8:64:1::/64"]},
        "status": {"addresses": [{"type": "Hostname", "address": "gw1"},
                                 {"type": "InternalIP", "address": "198.51.100.11"},
                                 {"type": "ExternalIP", "address": "203.0.113.9"},
                                 {"type": "InternalIP", "address": "2001:db8:198::11"},
                                 {"type": "InternalIP", "address": "garbage"}]},
    })
    assert node.name == "gw1"
    assert node.addresses == (ip_address("198.51.100.11"), ip_address("2001:db8:198::11"))
    assert node.pod_cidrs == (ip_network("100.64.1.0/24"), ip_network("2001:db8:64:1::/64"))
    assert node.label_map == {"egressgw.io/gateway": "true"}
    assert node.wireguard_public_key == "abc="
    assert node.address(6) == ip_address("2001:db8:198::11")
    legacy = parse_node({"metadata": {"name": "w"}, "spec": {"podCIDR": "100.64.2.0/24"}, "status": {}})
    assert legacy.pod_cidrs == (ip_network("100.64.2.0/24"),) and legacy.wireguard_public_key is None


def test_parse_pod() -> None:
    pod = parse_pod({"metadata": {"name": "a", "namespace": "shop", "labels": {"app": "web"}},
                     "spec": {"nodeName": "worker1"},
                     "status": {"phase": "Running", "podIP": "100.64.1.10",
                                "podIPs": [{"ip": "100.64.1.10"}, {"ip": "2001:db8:64:1::10"}]}})
    assert pod.key == ("shop", "a") and pod.node_name == "worker1" and pod.phase == "Running"
    assert pod.ips == (ip_address("100.64.1.10"), ip_address("2001:db8:64:1::10"))
    assert not pod.host_network and pod.label_map == {"app": "web"}
    single = parse_pod({"metadata": {"name": "b", "namespace": "x"}, "spec": {"hostNetwork": True},
                        "status": {"podIP": "100.64.1.11"}})
    assert single.ips == (ip_address("100.64.1.11"),) and single.host_network
    pending = parse_pod({"metadata": {"name": "c", "namespace": "x"}, "spec": {}})
    assert pending.ips == () and pending.phase == "Pending" and pending.node_name == ""


def test_parse_namespace() -> None:
    ns = parse_namespace({"metadata": {"name": "tenant-a", "labels": {"egressgw.io/default-gateway": "gw"}}})
    assert ns.name == "tenant-a" and ns.label_map == {"egressgw.io/default-gateway": "gw"}


def lease(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "edge-1", "namespace": "egressgw", "labels": {"egressgw.io/gateway": "edge"},
                         "annotations": {"egressgw.io/underlay-address": "198.51.100.21",
                                         "egressgw.io/wireguard-public-key": "k="}},
            "spec": {"holderIdentity": "edge-1", **spec}}


def test_parse_appliance_lease_liveness() -> None:
    now = datetime(2026, 11, 27, 8, 0, 10, tzinfo=UTC)
    fresh = parse_appliance_lease(lease(renewTime="2026-11-27T08:00:05.123456Z", leaseDurationSeconds=10), now)
    assert fresh is not None and fresh.alive
    assert (fresh.name, fresh.gateway, fresh.address, fresh.wireguard_public_key) == \
        ("edge-1", "edge", ip_address("198.51.100.21"), "k=")
    stale = parse_appliance_lease(lease(renewTime="2026-11-27T08:00:00.000000Z", leaseDurationSeconds=10), now)
    assert stale is not None and not stale.alive
    acquired = parse_appliance_lease(lease(acquireTime="2026-11-27T08:00:09Z", leaseDurationSeconds=5), now)
    assert acquired is not None and acquired.alive
    never = parse_appliance_lease(lease(), now)
    assert never is not None and not never.alive


def test_parse_lease_that_is_not_an_appliance() -> None:
    now = datetime(2026, 11, 27, tzinfo=UTC)
    other = lease(renewTime="2026-11-27T00:00:00Z", leaseDurationSeconds=10)
    del other["metadata"]["labels"]
    assert parse_appliance_lease(other, now) is None
    no_address = lease()
    no_address["metadata"]["annotations"] = {}
    assert parse_appliance_lease(no_address, now) is None
