"""THE validation of egressgw.io objects: one function, used by the service and by `egressgw validate`.

`validate_all(objects)` takes raw objects (any mix of kinds; objects of other API groups are ignored) and returns the
valid ones as typed models plus one `Problem` per defect, naming the field path. An invalid object is skipped; the
others are unaffected. Steps, per object: identify (apiVersion/kind/name), the structural schema shared with the CRDs
(types, enums, ranges and unknown fields - the 1.20 API server would prune those silently), fields the API server
did prune (`pruned_fields`: found through kubectl's last-applied-configuration annotation), the per-object semantic
rules (`appliance.api.manifests`); then across objects, in a deterministic order (older first, then by name):
duplicate objects, an address in two gateways' pools, a second clusterDefault gateway, a policy's explicit EIP outside
the pool of the gateway it names or, when `gateways_complete` (the objects are the whole cluster, as in the service),
outside every valid gateway's pool (a gateway that does not exist is *not* a problem by itself: resolution reports
the policy Pending), and changes to immutable policy fields against `accepted` (the previously accepted versions; the
accepted version stays in effect). Pure.
"""

from __future__ import annotations

import json
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

#: what `kubectl apply` records of the manifest it sent: the only trace of fields the API server pruned
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
UNKNOWN_FIELD = "unknown field"


def pruned_fields(obj: Mapping[str, Any], schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) per field the user wrote but the API server dropped: unknown to the schema, present in the
    object's `kubectl.kubernetes.io/last-applied-configuration`, absent from the object itself. The 1.20 API server
    prunes unknown fields silently, so a typo (`egressIp`) or a field of another kind (`namespaceSelector` on an
    EgressPolicy) would otherwise leave a policy doing something else than what was written. Objects written without
    `kubectl apply` carry no such record: nothing can be detected for them."""
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    text = annotations.get(LAST_APPLIED) if isinstance(annotations, Mapping) else None
    if not isinstance(text, str):
        return []
    try:
        applied = json.loads(text)
    except ValueError:
        return []
    if not isinstance(applied, Mapping) or (applied.get("apiVersion"), applied.get("kind")) != (
            obj.get("apiVersion"), obj.get("kind")):
        return []  # a record of something else (the object was re-created from another manifest): not evidence
    kept = {f for f, m in check(obj, schema) if m == UNKNOWN_FIELD}
    return [(f, f"dropped by the API server: {_HINTS.get((str(obj.get('kind')), f), 'not in the schema')} "
                f"(it is in {LAST_APPLIED}, not in the stored object): remove it or fix its name")
            for f, m in check(applied, schema)
            if m == UNKNOWN_FIELD and f not in kept and not f.startswith("status")]


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
        issues.extend(pruned_fields(obj, object_schema(ref.kind)))
    for field, message in issues:
        if message == UNKNOWN_FIELD:
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


def _eips_outside(policy: EgressPolicy, gw: EgressGateway | None, gateways: Sequence[EgressGateway],
                  gateways_complete: bool) -> list[tuple[str, str]]:
    """(field, message) per explicit EIP that no pool can hold: not in the named gateway's pool, or (when every
    gateway is known) in no gateway's pool at all. A spec error: the policy is Invalid and the EIP never allocated."""
    out: list[tuple[str, str]] = []
    for ip in (policy.egress_ip.ipv4, policy.egress_ip.ipv6):
        if ip is None:
            continue
        field = f"spec.egressIP.ipv{ip.version}"
        if gw is not None:
            if ip not in gw.pool(ip.version):
                out.append((field, f"{ip} is not in the ipv{ip.version} pool of EgressGateway {gw.name}"))
        elif gateways_complete and not any(ip in g.pool(ip.version) for g in gateways):
            named = (f" (EgressGateway {policy.egress_gateway_name} does not exist or is invalid)"
                     if policy.egress_gateway_name else "")
            out.append((field, f"{ip} is not in the ipv{ip.version} pool of any EgressGateway{named}"))
    return out


def validate_all(objects: Sequence[Mapping[str, Any]], *,
                 accepted: Mapping[ObjectRef, EgressPolicy] | None = None,
                 gateways_complete: bool = False) -> ValidationResult:
    """Validate every object, alone and against the others. Deterministic, independent of input order.

    `gateways_complete`: `objects` hold every gateway there is (the service's view of the cluster), so an explicit EIP
    in no gateway's pool is refused even when the policy names no gateway or a missing one. Off for files checked on
    their own (`egressgw validate policy.yaml` knows nothing of the cluster's gateways)."""
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
        if outside := _eips_outside(policy, gw, gateways, gateways_complete):
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
