"""Cluster objects (Node, Pod, Namespace, appliance Lease): raw API dicts -> the model, at the edge.

These are not ours to validate: fields we cannot use (a malformed address, a missing label) are dropped rather than
reported, so one odd object never blocks the others. Pure: takes dicts in API JSON form (camelCase), imports no
Kubernetes client; the sync engineer's reflectors feed them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.core.model import (
    APPLIANCE_ADDRESS_ANNOTATION,
    APPLIANCE_LEASE_LABEL,
    DRAIN_ANNOTATION,
    WIREGUARD_KEY_ANNOTATION,
    Appliance,
    IPAddress,
    IPNetwork,
    Namespace,
    Node,
    Pod,
)


def _labels(meta: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items()))


def _ips(texts: Iterable[Any]) -> tuple[IPAddress, ...]:
    out: list[IPAddress] = []
    for text in texts:
        try:
            ip = ipaddress.ip_address(str(text))
        except ValueError:
            continue
        if ip not in out:
            out.append(ip)
    return tuple(out)


def _nets(texts: Iterable[Any]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for text in texts:
        try:
            net = ipaddress.ip_network(str(text), strict=False)
        except ValueError:
            continue
        if net not in out:
            out.append(net)
    return tuple(out)


def parse_namespace(raw: Mapping[str, Any]) -> Namespace:
    meta = raw.get("metadata") or {}
    return Namespace(name=str(meta.get("name", "")), labels=_labels(meta))


def parse_node(raw: Mapping[str, Any]) -> Node:
    """InternalIP addresses (in the order the node reports them), spec.podCIDRs (else spec.podCIDR), labels, the
    WireGuard public key annotation and the drain annotation."""
    meta, spec, status = raw.get("metadata") or {}, raw.get("spec") or {}, raw.get("status") or {}
    addresses = _ips(a.get("address") for a in status.get("addresses") or () if a.get("type") == "InternalIP")
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    annotations = meta.get("annotations") or {}
    key = annotations.get(WIREGUARD_KEY_ANNOTATION) or None
    return Node(name=str(meta.get("name", "")), labels=_labels(meta), addresses=addresses, pod_cidrs=_nets(cidrs),
                wireguard_public_key=key, drain_reason=_drain_reason(annotations))


def _drain_reason(annotations: Mapping[str, Any]) -> str | None:
    """The drain annotation's value (its presence is what counts: an empty value still drains)."""
    value = annotations.get(DRAIN_ANNOTATION)
    return None if value is None else str(value)


def parse_pod(raw: Mapping[str, Any]) -> Pod:
    """status.podIPs (else status.podIP), spec.nodeName, spec.hostNetwork, status.phase (Pending when absent)."""
    meta, spec, status = raw.get("metadata") or {}, raw.get("spec") or {}, raw.get("status") or {}
    texts = [p.get("ip") for p in status.get("podIPs") or ()] or ([status["podIP"]] if status.get("podIP") else [])
    return Pod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        labels=_labels(meta),
        node_name=str(spec.get("nodeName") or ""),
        ips=_ips(texts),
        host_network=bool(spec.get("hostNetwork")),
        phase=str(status.get("phase") or "Pending"),
    )


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time as the API writes it (`2026-11-27T07:58:46Z`, `...46.123456Z`); None if malformed."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_appliance_lease(raw: Mapping[str, Any], now: datetime) -> Appliance | None:
    """A gateway appliance from its coordination.k8s.io Lease, or None when the Lease is not an appliance's
    (no `egressgw.io/gateway` label) or names no usable underlay address. `alive` = renewTime (else acquireTime)
    + leaseDurationSeconds is after `now` (an aware datetime)."""
    meta, spec = raw.get("metadata") or {}, raw.get("spec") or {}
    gateway = (meta.get("labels") or {}).get(APPLIANCE_LEASE_LABEL)
    annotations = meta.get("annotations") or {}
    # one address, or several comma-separated (an appliance announces every uplink address; the instance's tunnel
    # family picks one, `appliance.core.model.underlay_address`)
    addresses = _ips(t.strip() for t in str(annotations.get(APPLIANCE_ADDRESS_ANNOTATION, "")).split(","))
    if not gateway or not addresses:
        return None
    renewed = parse_time(str(spec.get("renewTime") or spec.get("acquireTime") or ""))
    duration = spec.get("leaseDurationSeconds")
    alive = (renewed is not None and isinstance(duration, int | float)
             and renewed + timedelta(seconds=duration) > now)
    return Appliance(name=str(meta.get("name", "")), gateway=str(gateway), address=addresses[0], addresses=addresses,
                     wireguard_public_key=annotations.get(WIREGUARD_KEY_ANNOTATION) or None, alive=alive,
                     drain_reason=_drain_reason(annotations))
