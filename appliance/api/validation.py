"""THE validation of egressgw.io objects: one function, used by the service and by `egressgw validate`.

`validate_all(objects)` takes raw objects (any mix of kinds; objects of other API groups are ignored) and returns the
valid ones as typed models plus one `Problem` per defect, naming the field path. An invalid object is skipped; the
others are unaffected. Steps, per object: identify (apiVersion/kind/name), the structural schema shared with the CRDs
(types, enums, ranges and unknown fields - the 1.20 API server would prune those silently), the per-object semantic
rules (`appliance.api.manifests`); then across objects, in a deterministic order (older first, then by name): duplicate
objects, an address in two gateways' pools, a second clusterDefault gateway, a policy EIP outside the pools of the
gateway it names (a gateway that does not exist is *not* a problem here: resolution reports the policy Pending), and
changes to immutable policy fields against `accepted` (the previously accepted versions; the accepted version stays
in effect). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.api import manifests
from appliance.api.crd_schema import KINDS, object_schema
from appliance.api.schema_check import check
from appliance.core.model import API_VERSION, GROUP, EgressClusterInfo, EgressGateway, EgressPolicy, IPRange
from appliance.core.snapshot import ObjectRef, Problem, Reason

SPIDERNET_GROUP = "egressgateway.spidernet.io"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_HINTS = {
    ("EgressPolicy", "spec.appliedTo.namespaceSelector"):
        "namespaceSelector is only allowed in an EgressClusterPolicy (an EgressPolicy applies to its own namespace)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationResult:
    gateways: tuple[EgressGateway, ...] = ()
    policies: tuple[EgressPolicy, ...] = ()
    cluster_info: EgressClusterInfo | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def object_ref(obj: Mapping[str, Any]) -> ObjectRef:
    """The ref problems are reported on (EgressPolicy without a namespace: `default`, as kubectl would)."""
    kind = obj.get("kind")
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name")
    namespace = ""
    if kind == "EgressPolicy":
        ns = meta.get("namespace")
        namespace = ns if isinstance(ns, str) and ns else "default"
    return ObjectRef(kind=kind if isinstance(kind, str) and kind else "Unknown", namespace=namespace,
                     name=name if isinstance(name, str) else "")


def policy_object_ref(policy: EgressPolicy) -> ObjectRef:
    return ObjectRef(kind=str(policy.ref.kind), namespace=policy.ref.namespace, name=policy.ref.name)


def _order_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def _check_one(obj: Any, index: int, problems: list[Problem]) -> tuple[ObjectRef, Any] | None:
    """Identify and schema-check one object. Returns (ref, object) for an egressgw.io object that passed, else
    None (reported, or not ours)."""
    if not isinstance(obj, Mapping):
        problems.append(Problem(ref=ObjectRef(kind="Unknown", namespace="", name=f"#{index}"), field="",
                                reason=Reason.INVALID, message="not a Kubernetes object (a mapping)"))
        return None
    api_version = obj.get("apiVersion")
    ref = object_ref(obj)
    group = api_version.partition("/")[0] if isinstance(api_version, str) else ""
    if group == SPIDERNET_GROUP:
        problems.append(Problem(ref=ref, field="apiVersion", reason=Reason.INVALID,
                                message=f"{api_version} is spidernet-io's API: convert it with `egressgw migrate`"))
        return None
    if group != GROUP:
        if api_version is None and obj.get("kind") in KINDS:
            problems.append(Problem(ref=ref, field="apiVersion", reason=Reason.INVALID,
                                    message=f"required ({API_VERSION})"))
        return None  # another API group: not ours to validate
    issues: list[tuple[str, str]] = []
    if api_version != API_VERSION:
        issues.append(("apiVersion", f"unknown version {api_version!r} (this egressgw serves {API_VERSION})"))
    elif obj.get("kind") not in KINDS:
        issues.append(("kind", f"unknown kind {obj.get('kind')!r} (one of {', '.join(KINDS)})"))
    elif not ref.name:
        issues.append(("metadata.name", "required"))
    elif len(ref.name) > 253 or not _NAME.match(ref.name):
        issues.append(("metadata.name", f"{ref.name!r} is not a valid object name (lowercase DNS subdomain)"))
    else:
        issues.extend(check(obj, object_schema(ref.kind)))
    for field, message in issues:
        if message == "unknown field":
            message = _HINTS.get((ref.kind, field), "unknown field (not in the egressgw.io/v1alpha1 schema)")
        problems.append(Problem(ref=ref, field=field, reason=Reason.INVALID, message=message))
    return None if issues else (ref, obj)


def _overlap(raw_pools: Mapping[str, Any], version: int, taken: Sequence[tuple[IPRange, str]]) \
        -> tuple[str, str] | None:
    """(field, message) of the first pool entry of this gateway overlapping another gateway's pool."""
    for i, text in enumerate(raw_pools.get(f"ipv{version}") or ()):
        r = manifests.parse_pool_entry(text, version, "", [])
        if r is None:
            continue
        for other, owner in taken:
            if int(r.first) <= int(other.last) and int(other.first) <= int(r.last):
                first = max(int(r.first), int(other.first))
                ip = type(r.first)(first)
                return (f"spec.ippools.ipv{version}[{i}]",
                        f"{ip} is already in the pool of EgressGateway {owner} ({other})")
    return None


def _immutable_changes(new: EgressPolicy, old: EgressPolicy) -> list[tuple[str, str]]:
    pairs = (
        ("spec.egressGatewayName", old.egress_gateway_name, new.egress_gateway_name),
        ("spec.egressIP.ipv4", old.egress_ip.ipv4, new.egress_ip.ipv4),
        ("spec.egressIP.ipv6", old.egress_ip.ipv6, new.egress_ip.ipv6),
        ("spec.egressIP.useNodeIP", old.egress_ip.use_node_ip, new.egress_ip.use_node_ip),
        ("spec.egressIP.allocatorPolicy", old.egress_ip.allocator_policy, new.egress_ip.allocator_policy),
    )
    return [(field, f"immutable: was {_show(a)}, now {_show(b)} (delete and re-create the policy to change it; "
                    "the previous version stays in effect)")
            for field, a, b in pairs if a != b]


def _show(value: object) -> str:
    return "unset" if value is None or value == "" else str(value).lower() if isinstance(value, bool) else str(value)


def validate_all(objects: Sequence[Mapping[str, Any]], *,
                 accepted: Mapping[ObjectRef, EgressPolicy] | None = None) -> ValidationResult:
    """Validate every object, alone and against the others. Deterministic, independent of input order."""
    problems: list[Problem] = []
    checked: list[tuple[ObjectRef, Any]] = []
    seen: set[ObjectRef] = set()
    indexed = sorted(enumerate(objects), key=lambda x: (_order_key(x[1]) if isinstance(x[1], Mapping) else ("", ""),
                                                        x[0]))
    for index, obj in indexed:
        item = _check_one(obj, index, problems)
        if item is None:
            continue
        if item[0] in seen:
            problems.append(Problem(ref=item[0], field="metadata.name", reason=Reason.INVALID,
                                    message="duplicate object: only the first one is used"))
            continue
        seen.add(item[0])
        checked.append(item)

    def report(ref: ObjectRef, issues: list[tuple[str, str]], reason: Reason = Reason.INVALID) -> None:
        problems.extend(Problem(ref=ref, field=f, reason=reason, message=m) for f, m in issues)

    gateways: list[EgressGateway] = []
    taken: dict[int, list[tuple[IPRange, str]]] = {4: [], 6: []}
    cluster_default: str | None = None
    for ref, obj in (c for c in checked if c[0].kind == "EgressGateway"):
        issues: list[tuple[str, str]] = []
        gw = manifests.parse_gateway(obj, issues)
        report(ref, issues)
        if gw is None:
            continue
        raw_pools = obj["spec"].get("ippools") or {}
        clash = _overlap(raw_pools, 4, taken[4]) or _overlap(raw_pools, 6, taken[6])
        if clash:
            report(ref, [clash], Reason.DUPLICATE_POOL_IP)
            continue
        if gw.cluster_default and cluster_default is not None:
            report(ref, [("spec.clusterDefault", f"EgressGateway {cluster_default} is already the cluster default")],
                   Reason.DUPLICATE_CLUSTER_DEFAULT)
            continue
        if gw.cluster_default:
            cluster_default = gw.name
        for version in (4, 6):
            taken[version].extend((r, gw.name) for r in gw.pool(version).ranges)
        gateways.append(gw)
    by_name = {g.name: g for g in gateways}

    policies: list[EgressPolicy] = []
    for ref, obj in (c for c in checked if c[0].kind in ("EgressPolicy", "EgressClusterPolicy")):
        issues = []
        policy = manifests.parse_policy(obj, issues)
        report(ref, issues)
        old = (accepted or {}).get(ref)
        if old is not None and policy is not None and (changes := _immutable_changes(policy, old)):
            report(ref, changes, Reason.IMMUTABLE_FIELD)
            policy = old
        if policy is None:
            continue
        gw = by_name.get(policy.egress_gateway_name) if policy.egress_gateway_name else None
        outside = [(f"spec.egressIP.ipv{ip.version}", f"{ip} is not in the ipv{ip.version} pool of EgressGateway "
                                                      f"{gw.name}")
                   for ip in (policy.egress_ip.ipv4, policy.egress_ip.ipv6)
                   if gw is not None and ip is not None and ip not in gw.pool(ip.version)]
        if outside:
            report(ref, outside, Reason.EIP_NOT_IN_POOL)
            continue
        policies.append(policy)

    cluster_info = None
    for ref, obj in (c for c in checked if c[0].kind == "EgressClusterInfo"):
        issues = []
        info = manifests.parse_cluster_info(obj, issues)
        report(ref, issues)
        cluster_info = info if info is not None else cluster_info

    return ValidationResult(
        gateways=tuple(sorted(gateways, key=lambda g: g.name)),
        policies=tuple(sorted(policies, key=lambda p: p.ref)),
        cluster_info=cluster_info,
        problems=tuple(sorted(set(problems))),
    )
