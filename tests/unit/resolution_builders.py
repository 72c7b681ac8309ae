"""Terse builders for the resolution/placement/explain unit tests (typed model objects from short arguments)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from appliance.core.model import (
    AllocatorPolicy,
    Appliance,
    AppliedTo,
    EgressGateway,
    EgressIPSpec,
    EgressPolicy,
    IPAddress,
    IPNetwork,
    IPPool,
    IPRange,
    LabelSelector,
    Namespace,
    Node,
    Pod,
    PolicyKind,
    PolicyRef,
)

V4_POOL = "203.0.113.128/25"
V6_POOL = "2001:db8:e1::/64"


def ip(s: str) -> IPAddress:
    return ipaddress.ip_address(s)


def net(s: str) -> IPNetwork:
    return ipaddress.ip_network(s)


def pool(*items: str) -> IPPool:
    ranges = []
    for item in items:
        if "-" in item:
            a, b = item.split("-")
            ranges.append(IPRange(first=ip(a), last=ip(b)))
        elif "/" in item:
            n = net(item)
            ranges.append(IPRange(first=n.network_address, last=n.broadcast_address))
        else:
            ranges.append(IPRange(first=ip(item), last=ip(item)))
    return IPPool(ranges=tuple(sorted(ranges, key=lambda r: int(r.first))))


def labels(d: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((d or {}).items()))


def sel(d: dict[str, str] | None = None) -> LabelSelector:
    return LabelSelector(match_labels=labels(d))


def eip_pair(v4: str | None, v6: str | None) -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]:
    """An (IPv4, IPv6) EIP pair from optional strings; each must be of its family."""
    a4 = ip(v4) if v4 else None
    a6 = ip(v6) if v6 else None
    assert a4 is None or isinstance(a4, ipaddress.IPv4Address)
    assert a6 is None or isinstance(a6, ipaddress.IPv6Address)
    return a4, a6


def ns(name: str, **lbl: str) -> Namespace:
    return Namespace(name=name, labels=labels({k.replace("__", "/").replace("_", "-"): v for k, v in lbl.items()}))


def ns_default(name: str, gateway: str) -> Namespace:
    return Namespace(name=name, labels=(("egressgw.io/default-gateway", gateway),))


def node(name: str, *ips: str, lbl: dict[str, str] | None = None, pod_cidrs: Iterable[str] = ()) -> Node:
    return Node(
        name=name,
        labels=labels(lbl),
        addresses=tuple(ip(a) for a in ips),
        pod_cidrs=tuple(net(c) for c in pod_cidrs),
    )


def gw_node(name: str, address: str) -> Node:
    return node(name, address, lbl={"role": "gateway"})


def pod(namespace: str, name: str, *ips: str, lbl: dict[str, str] | None = None, node_name: str = "w1") -> Pod:
    return Pod(namespace=namespace, name=name, labels=labels(lbl), node_name=node_name, ips=tuple(ip(a) for a in ips))


def gateway(
    name: str = "gw",
    *,
    v4: Iterable[str] = (V4_POOL,),
    v6: Iterable[str] = (),
    default4: str | None = None,
    default6: str | None = None,
    cluster_default: bool = False,
    selector: dict[str, str] | None = None,
) -> EgressGateway:
    d4, d6 = eip_pair(default4, default6)
    return EgressGateway(
        name=name,
        ipv4_pool=pool(*v4),
        ipv6_pool=pool(*v6),
        ipv4_default_eip=d4,
        ipv6_default_eip=d6,
        cluster_default=cluster_default,
        node_selector=sel(selector if selector is not None else {"role": "gateway"}),
    )


def policy(
    name: str,
    namespace: str = "default",
    *,
    cluster: bool = False,
    gateway: str = "",
    app: str | None = None,
    selector: dict[str, str] | None = None,
    subnet: Iterable[str] = (),
    ns_selector: dict[str, str] | None = None,
    dest: Iterable[str] = (),
    priority: int = 0,
    eip4: str | None = None,
    eip6: str | None = None,
    rr: bool = False,
    node_ip: bool = False,
    created: str = "",
) -> EgressPolicy:
    kind = PolicyKind.CLUSTER if cluster else PolicyKind.NAMESPACED
    ref = PolicyRef(kind=kind, namespace="" if cluster else namespace, name=name)
    pod_selector = sel(selector if selector is not None else {"app": app or name}) if not subnet or app else None
    e4, e6 = eip_pair(eip4, eip6)
    return EgressPolicy(
        ref=ref,
        egress_gateway_name=gateway,
        egress_ip=EgressIPSpec(
            ipv4=e4,
            ipv6=e6,
            use_node_ip=node_ip,
            allocator_policy=AllocatorPolicy.RR if rr else AllocatorPolicy.DEFAULT,
        ),
        applied_to=AppliedTo(
            pod_selector=pod_selector,
            pod_subnet=tuple(net(s) for s in subnet),
            namespace_selector=sel(ns_selector) if ns_selector is not None else None,
        ),
        dest_subnet=tuple(net(d) for d in dest),
        priority=priority,
        created=created,
    )


def appliance(name: str, gw: str, address: str, *, alive: bool = True) -> Appliance:
    return Appliance(name=name, gateway=gw, address=ip(address), alive=alive)
