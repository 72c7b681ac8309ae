"""egressgw.io objects: raw Kubernetes dicts <-> the typed model, at the edge.

`parse_gateway`, `parse_policy` and `parse_cluster_info` turn one *schema-checked* object (see
`appliance.api.schema_check`) into its model, collecting every per-object semantic problem (malformed addresses, ranges,
selectors, contradictory fields) as `(field path, message)`; they return None when there was any. Cross-object
rules live in `appliance.api.validation`, which is what callers use. `to_manifest` (model -> dict) is the inverse, in
`appliance.api.rendering`.
Cluster objects (Node, Pod, Namespace, appliance Lease) are parsed in `appliance.api.cluster_objects`, re-exported here.
Pure: no Kubernetes client.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from appliance.api.cluster_objects import parse_appliance_lease, parse_namespace, parse_node, parse_pod
from appliance.api.rendering import label_selector_to_dict, to_manifest
from appliance.core.model import (
    AllocatorPolicy,
    AppliedTo,
    BgpSpec,
    EgressClusterInfo,
    EgressGateway,
    EgressIPSpec,
    EgressPolicy,
    FailoverSpec,
    IPAddress,
    IPNetwork,
    IPPool,
    IPRange,
    LabelSelector,
    NoGatewayAction,
    Operator,
    PodCidrMode,
    PolicyKind,
    PolicyRef,
    Requirement,
    TunnelFamily,
    TunnelSpec,
    TunnelType,
)

__all__ = [
    "Issues",
    "label_selector_to_dict",
    "parse_appliance_lease",
    "parse_cluster_info",
    "parse_gateway",
    "parse_label_selector",
    "parse_namespace",
    "parse_node",
    "parse_pod",
    "parse_policy",
    "to_manifest",
]

Issues = list[tuple[str, str]]  # (field path, message)

_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key {key!r}: the prefix must be a DNS subdomain"
    if not _LABEL_NAME.match(name):
        return f"label key {key!r}: the name must be 1-63 alphanumerics, '-', '_' or '.', alphanumeric at both ends"
    return None


def _label_value_problem(value: str) -> str | None:
    if value and not _LABEL_NAME.match(value):
        return f"label value {value!r} must be at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends"
    return None


def parse_label_selector(raw: Mapping[str, Any], path: str, issues: Issues) -> LabelSelector:
    labels: list[tuple[str, str]] = []
    for key, value in (raw.get("matchLabels") or {}).items():
        problem = _label_key_problem(key) or _label_value_problem(value)
        if problem:
            issues.append((f"{path}.matchLabels", problem))
        labels.append((key, value))
    reqs: list[Requirement] = []
    for i, expr in enumerate(raw.get("matchExpressions") or ()):
        here = f"{path}.matchExpressions[{i}]"
        op = Operator(expr["operator"])
        values = tuple(expr.get("values") or ())
        if (problem := _label_key_problem(expr["key"])) is not None:
            issues.append((f"{here}.key", problem))
        if op in (Operator.IN, Operator.NOT_IN) and not values:
            issues.append((f"{here}.values", f"operator {op} needs at least one value"))
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            issues.append((f"{here}.values", f"operator {op} takes no values"))
        for j, v in enumerate(values):
            if (problem := _label_value_problem(v)) is not None:
                issues.append((f"{here}.values[{j}]", problem))
        reqs.append(Requirement(key=expr["key"], operator=op, values=tuple(sorted(set(values)))))
    return LabelSelector(match_labels=tuple(sorted(labels)),
                         match_expressions=tuple(sorted(reqs, key=lambda r: (r.key, r.operator, r.values))))


# ----- addresses -----

def parse_ip(text: str, version: int, path: str, issues: Issues) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        issues.append((path, f"{text!r} is not an IPv{version} address"))
        return None
    if ip.version != version:
        issues.append((path, f"{text!r} is an IPv{ip.version} address, expected IPv{version}"))
        return None
    return ip


@functools.lru_cache(maxsize=4096)
def _cidr(text: str) -> IPNetwork | str:
    """The network, or why `text` is not a CIDR ({text} stands for the quoted input). Cached: the same few CIDRs
    recur across thousands of policies."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return "{text} is not a CIDR (address/prefix length)"
    if "/" not in text:
        return f"{{text}} has no prefix length (write {net})"
    if net.network_address != ipaddress.ip_interface(text.strip()).ip:
        return f"{{text}} has host bits set (did you mean {net}?)"
    return net


def parse_cidr(text: str, path: str, issues: Issues, version: int | None = None) -> IPNetwork | None:
    net = _cidr(text)
    if isinstance(net, str):
        issues.append((path, net.replace("{text}", repr(text))))
        return None
    if version is not None and net.version != version:
        issues.append((path, f"{text!r} is an IPv{net.version} CIDR, expected IPv{version}"))
        return None
    return net


def cidr_hosts(net: IPNetwork) -> IPRange:
    """The EIPs a CIDR pool entry gives: its host addresses. Skipped: the network address (for IPv6 the
    subnet-router anycast address) and the IPv4 broadcast address - unless the prefix has at most 2 addresses
    (/31, /32, /127, /128: every address is a host). A network address is usable as an EIP only when listed as a
    single address or inside a range."""
    if net.num_addresses <= 2:
        return IPRange(first=net[0], last=net[-1])
    return IPRange(first=net[1], last=net[-2] if net.version == 4 else net[-1])


def parse_pool_entry(text: str, version: int, path: str, issues: Issues) -> IPRange | None:
    """A single address, an `a-b` range (inclusive, a <= b, one family) or a CIDR (its hosts: `cidr_hosts`)."""
    if "/" in text:
        net = parse_cidr(text, path, issues, version)
        return None if net is None else cidr_hosts(net)
    if "-" in text:
        a_text, _, b_text = text.partition("-")
        try:
            a, b = ipaddress.ip_address(a_text.strip()), ipaddress.ip_address(b_text.strip())
        except ValueError:
            issues.append((path, f"{text!r} is not a range of IPv{version} addresses (first-last)"))
            return None
        if a.version != b.version:
            issues.append((path, f"{text!r} mixes IPv{a.version} and IPv{b.version}"))
            return None
        if a.version != version:
            issues.append((path, f"{text!r} is an IPv{a.version} range, expected IPv{version}"))
            return None
        if int(a) > int(b):
            issues.append((path, f"{text!r}: the first address is greater than the last"))
            return None
        return IPRange(first=a, last=b)
    ip = parse_ip(text, version, path, issues)
    return None if ip is None else IPRange(first=ip, last=ip)


def parse_pool(entries: Sequence[str], version: int, path: str, issues: Issues) -> IPPool:
    indexed: list[tuple[int, IPRange]] = []
    for i, text in enumerate(entries):
        r = parse_pool_entry(text, version, f"{path}[{i}]", issues)
        if r is not None:
            indexed.append((i, r))
    indexed.sort(key=lambda x: (int(x[1].first), int(x[1].last)))
    reach: tuple[int, IPRange] | None = None  # the range reaching furthest so far
    for i, r in indexed:
        if reach is not None and int(r.first) <= int(reach[1].last):
            j, other = reach
            issues.append((f"{path}[{max(i, j)}]", f"{r if i > j else other} overlaps {path}[{min(i, j)}] "
                                                   f"({other if i > j else r})"))
        if reach is None or int(r.last) > int(reach[1].last):
            reach = (i, r)
    return IPPool(ranges=tuple(r for _, r in indexed))


def parse_cidrs(entries: Sequence[str], path: str, issues: Issues) -> tuple[IPNetwork, ...]:
    nets = {n for i, t in enumerate(entries) if (n := parse_cidr(t, f"{path}[{i}]", issues)) is not None}
    return tuple(sorted(nets, key=lambda n: (n.version, n)))


# ----- EgressGateway -----

def _community_problem(text: str, parts: int, limit: int) -> str | None:
    fields = text.split(":")
    if len(fields) != parts or not all(f.isdigit() and int(f) <= limit for f in fields):
        kind = "standard community ASN:VALUE" if parts == 2 else "large community ASN:DATA1:DATA2"
        return f"{text!r} is not a {kind} (each part 0..{limit})"
    return None


def parse_gateway(obj: Mapping[str, Any], issues: Issues) -> EgressGateway | None:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    before = len(issues)
    pools = spec.get("ippools") or {}
    v4 = parse_pool(pools.get("ipv4") or (), 4, "spec.ippools.ipv4", issues)
    v6 = parse_pool(pools.get("ipv6") or (), 6, "spec.ippools.ipv6", issues)
    if v4.size and v6.size and v4.size != v6.size:
        issues.append(("spec.ippools.ipv6", f"the IPv6 pool has {v6.size} addresses but the IPv4 pool {v4.size}; "
                                            "when both are given they pair up and must be the same size"))
    defaults = []
    for version, pool in ((4, v4), (6, v6)):
        key = f"ipv{version}DefaultEIP"
        ip = None
        if pools.get(key):
            ip = parse_ip(pools[key], version, f"spec.ippools.{key}", issues)
            if ip is not None and ip not in pool:
                issues.append((f"spec.ippools.{key}", f"{ip} is not in spec.ippools.ipv{version}"))
        elif pool.size:
            ip = pool.nth(0)
        defaults.append(ip)
    selector = None
    appliances_only = bool(spec.get("appliancesOnly"))
    if spec.get("nodeSelector") is not None:
        selector = parse_label_selector(spec["nodeSelector"]["selector"], "spec.nodeSelector.selector", issues)
        if selector.is_empty:
            issues.append(("spec.nodeSelector.selector", "empty selector: it would make every node a gateway member"))
        if appliances_only:
            issues.append(("spec.appliancesOnly", "appliancesOnly is true but spec.nodeSelector is set"))
    elif not appliances_only:
        issues.append(("spec.nodeSelector", "required (members are the nodes it selects), unless spec.appliancesOnly "
                                            "is true (members are only appliances registered with Leases)"))
    tunnel = spec.get("tunnel") or {}
    family = tunnel.get("family")
    if family in ("ipv4", "ipv6"):
        # workers tunnel to an EIP of the tunnel family: the EIP itself or its partner at the same pool index
        mine, other = (v4, v6) if family == "ipv4" else (v6, v4)
        if other.size and not mine.size:
            issues.append(("spec.tunnel.family", f"{family}: the tunnels end at {family[:2].upper()}{family[2:]} "
                                                 f"EIPs, but spec.ippools.{family} is empty; give it as many "
                                                 "addresses as the other pool (they pair up)"))
    bgp = spec.get("bgp") or {}
    for key, parts, limit in (("communities", 2, 65535), ("largeCommunities", 3, 2**32 - 1)):
        for i, text in enumerate(bgp.get(key) or ()):
            if (problem := _community_problem(text, parts, limit)) is not None:
                issues.append((f"spec.bgp.{key}[{i}]", problem))
    failover = spec.get("failover") or {}
    if len(issues) > before:
        return None
    return EgressGateway(
        name=meta["name"],
        ipv4_pool=v4,
        ipv6_pool=v6,
        ipv4_default_eip=defaults[0] if isinstance(defaults[0], IPv4Address) else None,
        ipv6_default_eip=defaults[1] if isinstance(defaults[1], IPv6Address) else None,
        node_selector=selector,
        cluster_default=bool(spec.get("clusterDefault")),
        tunnel=TunnelSpec(type=TunnelType(tunnel.get("type") or "vxlan"), vni=tunnel.get("vni") or 7700,
                          port=tunnel.get("port"), mtu=tunnel.get("mtu"),
                          family=TunnelFamily(tunnel["family"]) if tunnel.get("family") else None),
        bgp=BgpSpec(communities=tuple(bgp.get("communities") or ()),
                    large_communities=tuple(bgp.get("largeCommunities") or ())),
        failover=FailoverSpec(
            no_gateway_action=NoGatewayAction(failover.get("noGatewayAction") or "FailClosed"),
            failback_hold_seconds=float(failover.get("failbackHoldSeconds", 30.0))),
        generation=int(meta.get("generation") or 0),
        uid=str(meta.get("uid") or ""),
    )


# ----- EgressPolicy / EgressClusterPolicy -----

def parse_policy(obj: Mapping[str, Any], issues: Issues) -> EgressPolicy | None:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    kind = PolicyKind(obj["kind"])
    cluster = kind is PolicyKind.CLUSTER
    before = len(issues)
    gw = spec.get("egressGatewayName") or ""
    if gw and (len(gw) > 253 or not _DNS_SUBDOMAIN.match(gw)):
        issues.append(("spec.egressGatewayName", f"{gw!r} is not a valid object name (lowercase DNS subdomain)"))
    eip = spec.get("egressIP") or {}
    ipv4 = parse_ip(eip["ipv4"], 4, "spec.egressIP.ipv4", issues) if eip.get("ipv4") else None
    ipv6 = parse_ip(eip["ipv6"], 6, "spec.egressIP.ipv6", issues) if eip.get("ipv6") else None
    use_node_ip = bool(eip.get("useNodeIP"))
    if use_node_ip and (eip.get("ipv4") or eip.get("ipv6")):
        issues.append(("spec.egressIP.useNodeIP", "useNodeIP cannot be combined with an explicit ipv4/ipv6 EIP"))
    applied = spec.get("appliedTo") or {}
    pod_sel_raw, subnet_raw, ns_sel_raw = applied.get("podSelector"), applied.get("podSubnet"), \
        applied.get("namespaceSelector")
    pod_sel = parse_label_selector(pod_sel_raw, "spec.appliedTo.podSelector", issues) \
        if pod_sel_raw is not None else None
    ns_sel = parse_label_selector(ns_sel_raw, "spec.appliedTo.namespaceSelector", issues) \
        if ns_sel_raw is not None else None
    subnets = parse_cidrs(subnet_raw or (), "spec.appliedTo.podSubnet", issues)
    if pod_sel_raw is not None and subnet_raw:
        issues.append(("spec.appliedTo", "podSelector and podSubnet are mutually exclusive"))
    elif pod_sel_raw is None and not subnet_raw and (not cluster or ns_sel is None or ns_sel.is_empty):
        want = "podSelector, podSubnet or a non-empty namespaceSelector" if cluster else "podSelector or podSubnet"
        issues.append(("spec.appliedTo", f"selects no pods: set {want}"))
    elif cluster and pod_sel is not None and pod_sel.is_empty and (ns_sel is None or ns_sel.is_empty):
        issues.append(("spec.appliedTo.podSelector", "an empty podSelector without a namespaceSelector would select "
                                                     "every pod of the cluster"))
    dest = parse_cidrs(spec.get("destSubnet") or (), "spec.destSubnet", issues)
    if len(issues) > before:
        return None
    if pod_sel is None and not subnets:
        pod_sel = LabelSelector()  # cluster policy by namespaceSelector only: every pod of those namespaces
    namespace = "" if cluster else (meta.get("namespace") or "default")
    return EgressPolicy(
        ref=PolicyRef(kind=kind, namespace=namespace, name=meta["name"]),
        egress_gateway_name=gw,
        egress_ip=EgressIPSpec(ipv4=ipv4 if isinstance(ipv4, IPv4Address) else None,
                               ipv6=ipv6 if isinstance(ipv6, IPv6Address) else None, use_node_ip=use_node_ip,
                               allocator_policy=AllocatorPolicy(eip.get("allocatorPolicy") or "default")),
        applied_to=AppliedTo(pod_selector=pod_sel, pod_subnet=subnets, namespace_selector=ns_sel),
        dest_subnet=dest,
        priority=int(spec.get("priority") or 0),
        generation=int(meta.get("generation") or 0),
        created=str(meta.get("creationTimestamp") or ""),
    )


# ----- EgressClusterInfo -----

def parse_cluster_info(obj: Mapping[str, Any], issues: Issues) -> EgressClusterInfo | None:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    before = len(issues)
    if meta.get("name") != "default":
        issues.append(("metadata.name", "EgressClusterInfo is a singleton: its name must be 'default'"))
    auto = spec.get("autoDetect") or {}
    extra = parse_cidrs(spec.get("extraCidr") or (), "spec.extraCidr", issues)
    if len(issues) > before:
        return None
    mode = auto.get("podCidrMode")
    return EgressClusterInfo(
        pod_cidr_mode=PodCidrMode(mode) if mode is not None else PodCidrMode.AUTO,
        detect_cluster_ip=auto.get("clusterIP", True) is not False,
        detect_node_ip=auto.get("nodeIP", True) is not False,
        extra_cidr=extra,
    )
