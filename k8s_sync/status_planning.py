"""Desired status of every egressgw object (pure): Snapshot + Intent + the objects as they are -> writes + events.

- Policies (EgressPolicy, EgressClusterPolicy): `eip {ipv4, ipv6}`, `gateway`, `primary` (the member carrying the
  EIP now; "a,b" when the IPv4 and IPv6 primaries differ), `selectedIPs`, and four conditions - `Ready`, `Invalid`,
  `Pending`, `Degraded` - each with a CamelCase reason and a message (for Invalid it names the field path; for
  Degraded, True while selected pod IPs are not carried by the gateway members, the most common skip reason and a
  bounded count per reason with a few example pod IPs, see `k8s_sync.not_carried`). Degraded is a condition, not a
  new status field: a status field unknown to an older version's schema would make that version refuse the policy
  during a rolling upgrade, while a new condition type is valid for every version.
- Gateways: `members [{name, kind, healthy, eips}]`, `eips [{ip, primary, backups}]`, `ipUsage`, conditions.
- EgressClusterInfo: the content of `appliance.policy.cluster_cidrs.cluster_info_status` plus conditions
  (`PodCIDRsIncomplete` when pod IPs fall outside every detected pod CIDR: `pod_ip_coverage`).

Every condition carries `observedGeneration`; its `lastTransitionTime` is kept from the object while its status
does not change, so re-planning an unchanged world yields exactly what is already there and nothing is written.
A write is a JSON merge patch of `status` (keys that disappear are set to null). Events are planned for decisions
that change: EIP assigned or changed, every state change (Ready / Pending / Invalid), and pod IPs becoming skipped.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.core.intent import GatewayInstance, Intent, PolicyOutcome, PolicyState
from appliance.core.model import IPAddress, PolicyKind, PolicyRef
from appliance.core.snapshot import ObjectRef, Problem, Reason, Snapshot
from appliance.datapath.plan.gateway import GatewaySkipReason
from appliance.policy.cluster_cidrs import cluster_info_status, pod_ip_coverage
from appliance.policy.placement import node_ip_member, primary
from k8s_sync.not_carried import SkipCount, not_carried

JSON = dict[str, Any]
INT64_MAX = 2**63 - 1
POLICY_KINDS = (PolicyKind.NAMESPACED.value, PolicyKind.CLUSTER.value)
STATUS_KINDS = ("EgressGateway", *POLICY_KINDS, "EgressClusterInfo")


class ConditionType(enum.StrEnum):
    READY = "Ready"
    INVALID = "Invalid"
    PENDING = "Pending"
    DEGRADED = "Degraded"
    POD_CIDRS_INCOMPLETE = "PodCIDRsIncomplete"


#: the condition types written per kind, in this order (docs/api.md lists them; tests/unit/test_api_docs.py checks)
CONDITION_TYPES: Mapping[str, tuple[ConditionType, ...]] = {
    **{kind: (ConditionType.READY, ConditionType.INVALID, ConditionType.PENDING, ConditionType.DEGRADED)
       for kind in POLICY_KINDS},
    "EgressGateway": (ConditionType.READY, ConditionType.INVALID),
    "EgressClusterInfo": (ConditionType.READY, ConditionType.INVALID, ConditionType.POD_CIDRS_INCOMPLETE),
}


class StatusReason(enum.StrEnum):
    """Reasons status planning writes of its own. The others: `Reason` (validation and resolution), the gateway
    planner's skip reasons (Degraded) and the pod CIDR coverage (`appliance.policy.cluster_cidrs.pod_ip_coverage`)."""

    READY = "Ready"  # Ready True
    NOT_RESOLVED = "NotResolved"  # Ready/Pending before the first resolution pass decided about a policy
    VALID = "Valid"  # Invalid False
    NOT_PENDING = "NotPending"  # Pending False
    ALL_CARRIED = "AllCarried"  # Degraded False: every selected pod IP is carried
    NOT_READY = "NotReady"  # Degraded False: the policy is not Ready (nothing to carry)


#: the reasons a Degraded condition can carry: what the gateway planner skips a pod IP for (NotVxlan is not
#: a per-pod skip)
DEGRADED_REASONS = tuple(r for r in GatewaySkipReason if r.value != "NotVxlan")


def condition_reasons() -> frozenset[str]:
    """Every reason the conditions planned here can carry, except the pod CIDR coverage's (cluster_cidrs owns those).
    docs/api.md lists exactly these (tests/unit/test_api_docs.py)."""
    return frozenset({*StatusReason, *Reason, *DEGRADED_REASONS})


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class EventReason(enum.StrEnum):
    EIP_ASSIGNED = "EIPAssigned"
    EIP_CHANGED = "EIPChanged"
    POLICY_READY = "PolicyReady"
    POLICY_PENDING = "PolicyPending"
    POLICY_INVALID = "PolicyInvalid"
    GATEWAY_INVALID = "GatewayInvalid"
    GATEWAY_READY = "GatewayReady"
    PODS_NOT_CARRIED = "PodsNotCarried"


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusWrite:
    """Merge-patch `patch` into the status of one object (read at `resource_version`); `status` is the result."""

    ref: ObjectRef
    patch: JSON
    status: JSON
    resource_version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EventSpec:
    ref: ObjectRef
    uid: str
    type: EventType
    reason: EventReason
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusPlan:
    writes: tuple[StatusWrite, ...] = ()
    events: tuple[EventSpec, ...] = ()


def object_ref(obj: Mapping[str, Any]) -> ObjectRef:
    meta = obj.get("metadata") or {}
    return ObjectRef(kind=str(obj.get("kind") or ""), namespace=str(meta.get("namespace") or ""),
                     name=str(meta.get("name") or ""))


def condition(ctype: str, status: bool, reason: str, message: str, *, generation: int, now: str,
              previous: Sequence[Mapping[str, Any]]) -> JSON:
    """One condition; `lastTransitionTime` is kept from `previous` while the status is the same."""
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == value else None
    return {"type": str(ctype), "status": value, "reason": str(reason), "message": message,
            "lastTransitionTime": since or now, "observedGeneration": generation}


def prune(value: Any) -> Any:
    """Drop empty strings (recursively in dicts and lists of dicts): the API server stores "" in CRD status as null
    (and then refuses it as not a string), so an empty field is written as an absent one."""
    if isinstance(value, dict):
        return {k: prune(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> JSON:
    """The RFC 7386 merge patch turning `old` into `new` (lists are replaced whole)."""
    patch: JSON = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before or key not in old:
            patch[key] = value
    return patch


def _problems_by_ref(problems: Sequence[Problem]) -> dict[ObjectRef, list[Problem]]:
    out: dict[ObjectRef, list[Problem]] = {}
    for p in problems:
        out.setdefault(p.ref, []).append(p)
    return out


def _problem_text(problems: Sequence[Problem]) -> str:
    return "; ".join(f"{p.field}: {p.message}" for p in sorted(problems))


def _primary_of(inst: GatewayInstance | None, outcome: PolicyOutcome) -> str:
    if inst is None:
        return ""
    if outcome.use_node_ip:
        member = node_ip_member(inst, str(outcome.policy))
        return member.name if member is not None else ""
    names: list[str] = []
    for eip in (outcome.eip_v4, outcome.eip_v6):
        if eip is not None and (name := primary(inst, eip)) and name not in names:
            names.append(name)
    return ",".join(names)


def _skipped_text(skipped: Sequence[SkipCount]) -> str:
    """`3 selected pod IPs are not carried: UnknownWorker 2 (100.64.1.10, 100.64.1.11), PodIPOnTwoWorkers 1 (...)`."""
    total = sum(c.count for c in skipped)
    parts = [f"{c.reason} {c.count} ({', '.join(map(str, c.examples))}{', ...' if c.count > len(c.examples) else ''})"
             for c in skipped]
    return f"{total} selected pod IP{'s are' if total != 1 else ' is'} not carried: {', '.join(parts)}"


def policy_status(outcome: PolicyOutcome | None, problems: Sequence[Problem], intent: Intent, *,
                  generation: int, now: str, previous: Sequence[Mapping[str, Any]],
                  skipped: Sequence[SkipCount] = ()) -> JSON:
    """The status of one policy; `skipped`: its pod IPs the gateway members skip (reported only while Ready)."""
    state = outcome.state if outcome is not None else PolicyState.PENDING
    reason = str(outcome.reason) if outcome is not None and outcome.reason else ""
    if outcome is None:
        reason = StatusReason.NOT_RESOLVED
    message = outcome.message if outcome is not None else "not resolved yet"
    status: JSON = {}
    if outcome is not None and state is PolicyState.READY:
        eip = {k: str(v) for k, v in (("ipv4", outcome.eip_v4), ("ipv6", outcome.eip_v6)) if v is not None}
        status = {"eip": eip, "gateway": outcome.gateway,
                  "primary": _primary_of(intent.instance(outcome.gateway), outcome),
                  "selectedIPs": outcome.selected_ips}
        if not message:
            via = "the gateway members' node IPs" if outcome.use_node_ip else ", ".join(eip.values())
            message = f"selected pods leave through EgressGateway {outcome.gateway} as {via}"
    else:
        status = {"eip": {}, "gateway": outcome.gateway if outcome is not None else "", "primary": "",
                  "selectedIPs": 0}
    # an edit refused (immutable field) leaves the accepted version Ready, but the refusal is reported as Invalid
    refused = [p for p in problems if state is not PolicyState.INVALID]
    invalid = state is PolicyState.INVALID or bool(refused)
    invalid_reason = reason if state is PolicyState.INVALID else (str(sorted(refused)[0].reason) if refused else "")
    invalid_message = message if state is PolicyState.INVALID else _problem_text(refused)
    kw: Any = {"generation": generation, "now": now, "previous": previous}
    status["conditions"] = [
        condition(ConditionType.READY, state is PolicyState.READY,
                  reason or (StatusReason.READY if state is PolicyState.READY else StatusReason.NOT_RESOLVED),
                  message, **kw),
        condition(ConditionType.INVALID, invalid, invalid_reason or StatusReason.VALID,
                  invalid_message if invalid else "", **kw),
        condition(ConditionType.PENDING, state is PolicyState.PENDING,
                  (reason or StatusReason.NOT_RESOLVED) if state is PolicyState.PENDING else StatusReason.NOT_PENDING,
                  message if state is PolicyState.PENDING else "", **kw),
        _degraded(state, skipped, kw),
    ]
    return status


def _degraded(state: PolicyState, skipped: Sequence[SkipCount], kw: Any) -> JSON:
    """`Degraded`: True while a Ready policy has selected pod IPs the gateways skip; the reason is the most common
    skip reason, the message counts them per reason with a few example pod IPs."""
    if state is not PolicyState.READY:
        return condition(ConditionType.DEGRADED, False, StatusReason.NOT_READY, "", **kw)
    if not skipped:
        return condition(ConditionType.DEGRADED, False, StatusReason.ALL_CARRIED, "", **kw)
    return condition(ConditionType.DEGRADED, True, str(skipped[0].reason), _skipped_text(skipped), **kw)


def gateway_status(inst: GatewayInstance | None, problems: Sequence[Problem], snapshot: Snapshot,
                   outcomes: Sequence[PolicyOutcome], *, name: str, generation: int, now: str,
                   previous: Sequence[Mapping[str, Any]]) -> JSON:
    kw: Any = {"generation": generation, "now": now, "previous": previous}
    if inst is None:
        text = _problem_text(problems) or "not accepted"
        reason = str(sorted(problems)[0].reason) if problems else Reason.INVALID
        return {"members": [], "eips": [], "ipUsage": {},
                "conditions": [condition(ConditionType.READY, False, reason, text, **kw),
                               condition(ConditionType.INVALID, True, reason, text, **kw)]}
    node_names = {n.name for n in snapshot.nodes}
    primaries: dict[str, list[str]] = {}
    eips = []
    for eip, order in inst.ranking:
        first = primary(inst, eip) or ""
        if first:
            primaries.setdefault(first, []).append(str(eip))
        eips.append({"ip": str(eip), "primary": first, "backups": [m for m in order if m != first]})
    members = [{"name": m.name, "kind": "Node" if m.name in node_names else "Appliance",
                "healthy": m.name in inst.alive, "eips": primaries.get(m.name, [])}
               for m in sorted(inst.members)]
    used: dict[int, set[IPAddress]] = {4: set(), 6: set()}
    for o in outcomes:
        if o.gateway == name and o.state is PolicyState.READY:
            for ip in (o.eip_v4, o.eip_v6):
                if ip is not None:
                    used[ip.version].add(ip)
    usage = {}
    for v, pool in ((4, inst.ipv4_pool), (6, inst.ipv6_pool)):
        total = pool.size
        usage[f"ipv{v}Total"] = min(total, INT64_MAX)
        usage[f"ipv{v}Free"] = min(total - len(used[v]), INT64_MAX)
    alive = [m for m in inst.members if m.name in inst.alive]
    if not inst.members:
        ready = condition(ConditionType.READY, False, Reason.NO_MEMBERS, "no node matches spec.nodeSelector and no "
                          "appliance is registered", **kw)
    elif not alive:
        ready = condition(ConditionType.READY, False, Reason.NO_MEMBERS, f"none of {len(inst.members)} members is "
                          "alive", **kw)
    else:
        ready = condition(ConditionType.READY, True, StatusReason.READY, f"{len(alive)} of {len(inst.members)} "
                          "members alive", **kw)
    refused = _problem_text(problems)
    invalid = condition(ConditionType.INVALID, bool(problems),
                        str(sorted(problems)[0].reason) if problems else StatusReason.VALID,
                        refused, **kw)
    return {"members": members, "eips": eips, "ipUsage": usage, "conditions": [ready, invalid]}


def cluster_info_full_status(snapshot: Snapshot, problems: Sequence[Problem], *, generation: int, now: str,
                             previous: Sequence[Mapping[str, Any]]) -> JSON:
    kw: Any = {"generation": generation, "now": now, "previous": previous}
    status = cluster_info_status(snapshot)
    text = _problem_text(problems)
    status["conditions"] = [
        condition(ConditionType.READY, not problems, StatusReason.READY if not problems else Reason.INVALID,
                  text or "detected", **kw),
        condition(ConditionType.INVALID, bool(problems),
                  str(sorted(problems)[0].reason) if problems else StatusReason.VALID, text, **kw),
    ]
    coverage = pod_ip_coverage(snapshot)
    status["conditions"].append(condition(ConditionType.POD_CIDRS_INCOMPLETE, coverage.incomplete, coverage.reason,
                                          coverage.message, **kw))
    return status


def _policy_events(ref: ObjectRef, uid: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[EventSpec]:
    events = []
    state_of = {c.get("type"): c for c in new.get("conditions") or () if c.get("status") == "True"}
    old_true = {c.get("type") for c in old.get("conditions") or () if c.get("status") == "True"}
    for ctype, reason, etype in (("Ready", EventReason.POLICY_READY, EventType.NORMAL),
                                 ("Pending", EventReason.POLICY_PENDING, EventType.WARNING),
                                 ("Invalid", EventReason.POLICY_INVALID, EventType.WARNING),
                                 ("Degraded", EventReason.PODS_NOT_CARRIED, EventType.WARNING)):
        cond = state_of.get(ctype)
        if cond is not None and ctype not in old_true:
            events.append(EventSpec(ref=ref, uid=uid, type=etype, reason=reason,
                                    message=f"{cond.get('reason')}: {cond.get('message')}"[:1000]))
    old_eip, new_eip = old.get("eip") or {}, new.get("eip") or {}
    if new_eip and new_eip != old_eip:
        reason = EventReason.EIP_CHANGED if old_eip else EventReason.EIP_ASSIGNED
        text = ", ".join(new_eip[k] for k in sorted(new_eip))
        before = f" (was {', '.join(old_eip[k] for k in sorted(old_eip))})" if old_eip else ""
        events.append(EventSpec(ref=ref, uid=uid, type=EventType.NORMAL, reason=reason,
                                message=f"EIP {text} via EgressGateway {new.get('gateway')}{before}"))
    return events


def _gateway_events(ref: ObjectRef, uid: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[EventSpec]:
    def true(status: Mapping[str, Any], ctype: str) -> bool:
        return any(c.get("type") == ctype and c.get("status") == "True" for c in status.get("conditions") or ())

    if true(new, "Invalid") and not true(old, "Invalid"):
        msg = next(c.get("message", "") for c in new["conditions"] if c.get("type") == "Invalid")
        return [EventSpec(ref=ref, uid=uid, type=EventType.WARNING, reason=EventReason.GATEWAY_INVALID, message=msg)]
    if true(new, "Ready") and not true(old, "Ready"):
        msg = next(c.get("message", "") for c in new["conditions"] if c.get("type") == "Ready")
        return [EventSpec(ref=ref, uid=uid, type=EventType.NORMAL, reason=EventReason.GATEWAY_READY, message=msg)]
    return []


def plan_status(snapshot: Snapshot, intent: Intent, objects: Mapping[str, Sequence[Mapping[str, Any]]], *,
                now: str) -> StatusPlan:
    """Every status write (only changes) and event for the raw `objects` (by kind) as they are now."""
    problems = _problems_by_ref(snapshot.problems)
    outcomes = {o.policy: o for o in intent.outcomes}
    has_policies = any(objects.get(kind) for kind in POLICY_KINDS)
    skipped = not_carried(snapshot, intent) if has_policies else {}
    writes: list[StatusWrite] = []
    events: list[EventSpec] = []
    for kind in STATUS_KINDS:
        for obj in sorted(objects.get(kind, ()), key=lambda o: (o["metadata"].get("namespace", ""),
                                                                 o["metadata"]["name"])):
            meta = obj.get("metadata") or {}
            ref = ObjectRef(kind=kind, namespace=str(meta.get("namespace") or ""), name=str(meta["name"]))
            old: Mapping[str, Any] = obj.get("status") or {}
            kw: Any = {"generation": int(meta.get("generation") or 0), "now": now,
                       "previous": old.get("conditions") or ()}
            found = problems.get(ref, [])
            if kind in POLICY_KINDS:
                pref = PolicyRef(kind=PolicyKind(kind), namespace=ref.namespace, name=ref.name)
                new = policy_status(outcomes.get(pref), found, intent, skipped=skipped.get(pref, ()), **kw)
                planned = _policy_events(ref, str(meta.get("uid") or ""), old, new)
            elif kind == "EgressGateway":
                new = gateway_status(intent.instance(ref.name), found, snapshot, intent.outcomes, name=ref.name, **kw)
                planned = _gateway_events(ref, str(meta.get("uid") or ""), old, new)
            else:
                new = cluster_info_full_status(snapshot, found, **kw)
                planned = []
            new = prune(new)
            patch = merge_patch(old, new)
            if patch:
                writes.append(StatusWrite(ref=ref, patch=patch, status=new,
                                          resource_version=str(meta.get("resourceVersion") or "")))
                events.extend(planned)
    return StatusPlan(writes=tuple(writes), events=tuple(events))


def intent_from_status(policies: Sequence[Mapping[str, Any]]) -> Intent:
    """A stand-in previous Intent: the gateway and EIPs written in the status of Ready policies."""
    outcomes = []
    for obj in policies:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
        eip = status.get("eip") or {}
        if not ready or not status.get("gateway") or not eip:
            continue
        try:
            kind = PolicyKind(str(obj.get("kind")))
            v4: IPAddress | None = ipaddress.ip_address(eip["ipv4"]) if eip.get("ipv4") else None
            v6: IPAddress | None = ipaddress.ip_address(eip["ipv6"]) if eip.get("ipv6") else None
        except ValueError:
            continue
        ref = PolicyRef(kind=kind, namespace=str(meta.get("namespace") or "") if kind is PolicyKind.NAMESPACED
                        else "", name=str(meta.get("name") or ""))
        outcomes.append(PolicyOutcome(policy=ref, state=PolicyState.READY, gateway=str(status["gateway"]),
                                      eip_v4=v4, eip_v6=v6))
    return Intent(steerings=(), outcomes=tuple(sorted(outcomes, key=lambda o: o.policy)), instances=(),
                  cluster_cidrs=())
