"""`egressgw explain` (pure part): why a pod's traffic leaves the way it does.

Given the snapshot, its resolved Intent, a pod and optionally a destination, say for each pod IP which policy steers
it (and toward which destinations, gateway, EIP, primary member) and, for every other policy, why it does not:
invalid, pending, namespace / selector / podSubnet mismatch, family not steered, destination not in its destSubnet,
lower precedence (naming the winner), or a cluster-internal destination (never steered). It reuses the predicates of
`selection` and `precedence`, so explain and resolution cannot disagree. The k8s_sync shell fetches the snapshot and
prints `render_text(...)` or `json.dumps(to_dict(...))`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from appliance.core.intent import Intent, PolicyOutcome, PolicyState, Steering
from appliance.core.model import EgressPolicy, IPAddress, IPNetwork, PolicyRef
from appliance.core.snapshot import Snapshot
from appliance.policy.cluster_cidrs import internal_reason
from appliance.policy.placement import primary
from appliance.policy.precedence import destinations
from appliance.policy.selection import Ineligible, ineligibility, ip_mismatch


class Verdict(enum.StrEnum):
    APPLIES = "Applies"
    INVALID = "Invalid"
    PENDING = "Pending"
    NAMESPACE_MISMATCH = "NamespaceMismatch"
    SELECTOR_MISMATCH = "SelectorMismatch"
    POD_SUBNET_MISMATCH = "PodSubnetMismatch"
    NOTHING_APPLIED = "NoAppliedTo"
    FAMILY_NOT_STEERED = "FamilyNotSteered"
    DEST_NOT_MATCHED = "DestinationNotInDestSubnet"
    LOWER_PRECEDENCE = "LowerPrecedence"
    CLUSTER_INTERNAL = "ClusterInternalDestination"


_MISMATCH = {
    "NamespaceMismatch": Verdict.NAMESPACE_MISMATCH,
    "SelectorMismatch": Verdict.SELECTOR_MISMATCH,
    "PodSubnetMismatch": Verdict.POD_SUBNET_MISMATCH,
    "NothingApplied": Verdict.NOTHING_APPLIED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """How one steering leaves: policy, destinations won, gateway, EIP (None = useNodeIP), primary member."""

    policy: PolicyRef
    destinations: tuple[IPNetwork, ...]
    #: the policy's own destinations of this family (destSubnet, or everything); `destinations` is what it won
    requested: tuple[IPNetwork, ...]
    gateway: str
    eip: IPAddress | None
    endpoints: tuple[IPAddress, ...]
    primary: str | None
    ranking: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyVerdict:
    policy: PolicyRef
    verdict: Verdict
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IPExplanation:
    pod_ip: IPAddress
    routes: tuple[Route, ...]
    #: with a destination: the route it takes (None = not steered: leaves through the normal path)
    chosen: Route | None
    verdicts: tuple[PolicyVerdict, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    namespace: str
    pod: str
    found: bool
    node: str = ""
    ineligible: Ineligible | None = None
    dest: IPAddress | None = None
    dest_cluster_internal: bool = False
    #: which cluster-internal source covers `dest` (`cluster_cidrs.internal_reason`)
    dest_internal_reason: str = ""
    ips: tuple[IPExplanation, ...] = ()


def _route(intent: Intent, s: Steering, policy: EgressPolicy | None) -> Route:
    requested = destinations(policy, s.pod_ip.version) if policy is not None else s.destinations
    inst = intent.instance(s.gateway)
    if inst is None:
        return Route(policy=s.policy, destinations=s.destinations, requested=requested, gateway=s.gateway,
                     eip=s.eip, endpoints=s.endpoints, primary=None, ranking=())
    if s.eip is not None:
        ranking = inst.rank_of(s.eip)
        first = primary(inst, s.eip)
    else:  # useNodeIP: the endpoint is the chosen member's underlay address
        first = next((m.name for m in inst.members if s.endpoints and m.address == s.endpoints[0]), None)
        ranking = (first,) if first else ()
    return Route(policy=s.policy, destinations=s.destinations, requested=requested, gateway=s.gateway, eip=s.eip,
                 endpoints=s.endpoints, primary=first, ranking=ranking)


def _families(o: PolicyOutcome) -> set[int]:
    if o.use_node_ip:
        return {4, 6}
    return {v for v, e in ((4, o.eip_v4), (6, o.eip_v6)) if e is not None}


def _nets(nets: tuple[IPNetwork, ...]) -> str:
    return ", ".join(str(n) for n in nets) if nets else "-"


def _verdict(
    policy: EgressPolicy | None,
    outcome: PolicyOutcome,
    ip: IPAddress,
    labels: tuple[dict[str, str], dict[str, str]],
    namespace: str,
    mine: dict[PolicyRef, Steering],
    dest: IPAddress | None,
    winner: Steering | None,
    internal: str,
) -> PolicyVerdict:
    ref = outcome.policy
    if outcome.state is PolicyState.INVALID or policy is None:
        return PolicyVerdict(policy=ref, verdict=Verdict.INVALID, detail=outcome.message)
    mismatch = ip_mismatch(policy, namespace, labels[0], labels[1], ip)
    if mismatch is not None:
        return PolicyVerdict(policy=ref, verdict=_MISMATCH[mismatch.value])
    if outcome.state is PolicyState.PENDING:
        return PolicyVerdict(policy=ref, verdict=Verdict.PENDING, detail=f"{outcome.reason}: {outcome.message}")
    if ip.version not in _families(outcome):
        return PolicyVerdict(policy=ref, verdict=Verdict.FAMILY_NOT_STEERED, detail=outcome.message)
    own = destinations(policy, ip.version)
    if not own:
        return PolicyVerdict(policy=ref, verdict=Verdict.DEST_NOT_MATCHED, detail=f"no IPv{ip.version} destSubnet")
    steering = mine.get(ref)
    won = steering.destinations if steering is not None else ()
    if dest is None:
        if steering is None:
            return PolicyVerdict(policy=ref, verdict=Verdict.LOWER_PRECEDENCE,
                                 detail=f"all of {_nets(own)} taken by higher-precedence policies")
        return PolicyVerdict(policy=ref, verdict=Verdict.APPLIES, detail=f"destinations {_nets(won)}")
    if not any(dest in n for n in own):
        return PolicyVerdict(policy=ref, verdict=Verdict.DEST_NOT_MATCHED, detail=f"destSubnet {_nets(own)}")
    if any(dest in n for n in won):
        if internal:
            return PolicyVerdict(policy=ref, verdict=Verdict.CLUSTER_INTERNAL,
                                 detail=f"{dest} is cluster-internal ({internal}): never sent to a gateway")
        return PolicyVerdict(policy=ref, verdict=Verdict.APPLIES, detail=f"destinations {_nets(won)}")
    by = f" (taken by {winner.policy})" if winner is not None else ""
    return PolicyVerdict(policy=ref, verdict=Verdict.LOWER_PRECEDENCE, detail=f"{dest}{by}")


def explain(snapshot: Snapshot, intent: Intent, namespace: str, pod: str, dest: IPAddress | None) -> Explanation:
    """Explain the egress of pod `namespace/pod` (toward `dest` when given) under `intent`."""
    found = next((p for p in snapshot.pods if p.namespace == namespace and p.name == pod), None)
    if found is None:
        return Explanation(namespace=namespace, pod=pod, found=False, dest=dest)
    internal = dest is not None and any(dest in n for n in intent.cluster_cidrs if n.version == dest.version)
    why = (internal_reason(snapshot, dest) or "cluster CIDRs") if internal and dest is not None else ""
    base = Explanation(namespace=namespace, pod=pod, found=True, node=found.node_name,
                       ineligible=ineligibility(found), dest=dest, dest_cluster_internal=internal,
                       dest_internal_reason=why)
    if base.ineligible is not None:
        return base
    ns_labels = next((dict(n.labels) for n in snapshot.namespaces if n.name == namespace), {})
    labels = (ns_labels, dict(found.labels))
    policies = {p.ref: p for p in snapshot.policies}
    ips: list[IPExplanation] = []
    for ip in found.ips:
        mine = {s.policy: s for s in intent.steerings if s.pod_ip == ip and (s.namespace, s.pod) == found.key}
        winner = None
        if dest is not None and dest.version == ip.version:
            winner = next((s for s in mine.values() if any(dest in n for n in s.destinations)), None)
        wanted = dest if dest is not None and dest.version == ip.version else None
        verdicts = tuple(
            _verdict(policies.get(o.policy), o, ip, labels, namespace, mine, wanted, winner, why)
            for o in intent.outcomes
        )
        routes = tuple(_route(intent, s, policies.get(s.policy)) for s in sorted(mine.values(), key=lambda s: s.rank))
        chosen = _route(intent, winner, policies.get(winner.policy)) if winner is not None and not internal else None
        ips.append(IPExplanation(pod_ip=ip, routes=routes, chosen=chosen, verdicts=verdicts))
    return Explanation(namespace=namespace, pod=pod, found=True, node=found.node_name, dest=dest,
                       dest_cluster_internal=internal, dest_internal_reason=why, ips=tuple(ips))


def _route_dict(r: Route | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "policy": str(r.policy),
        "destinations": [str(n) for n in r.destinations],
        "requested": [str(n) for n in r.requested],
        "gateway": r.gateway,
        "eip": str(r.eip) if r.eip is not None else None,
        "useNodeIP": r.eip is None,
        "endpoints": [str(a) for a in r.endpoints],
        "primary": r.primary,
        "ranking": list(r.ranking),
    }


def to_dict(e: Explanation) -> dict[str, Any]:
    """JSON-able form (`egressgw explain -o json`)."""
    return {
        "namespace": e.namespace,
        "pod": e.pod,
        "found": e.found,
        "node": e.node,
        "ineligible": str(e.ineligible) if e.ineligible else None,
        "dest": str(e.dest) if e.dest is not None else None,
        "destClusterInternal": e.dest_cluster_internal,
        "destInternalReason": e.dest_internal_reason or None,
        "ips": [
            {
                "podIP": str(x.pod_ip),
                "chosen": _route_dict(x.chosen),
                "routes": [_route_dict(r) for r in x.routes],
                "policies": [{"policy": str(v.policy), "verdict": str(v.verdict), "detail": v.detail}
                             for v in x.verdicts],
            }
            for x in e.ips
        ],
    }


def _describe(r: Route) -> str:
    eip = f"EIP {r.eip}" if r.eip is not None else "useNodeIP"
    rank = f" (ranking {', '.join(r.ranking)})" if len(r.ranking) > 1 else ""
    return f"{r.policy} via gateway {r.gateway}, {eip}, primary {r.primary or 'none alive'}{rank}"


def render_text(e: Explanation) -> str:
    """A human-readable report with one table of policy verdicts per pod IP."""
    if not e.found:
        return f"pod {e.namespace}/{e.pod} not found\n"
    lines = [f"pod {e.namespace}/{e.pod} on node {e.node or '-'}"]
    if e.ineligible is not None:
        lines.append(f"not selectable by any policy: {e.ineligible}")
        return "\n".join(lines) + "\n"
    if e.dest is not None and e.dest_cluster_internal:
        lines.append(f"destination {e.dest} is cluster-internal ({e.dest_internal_reason}): never sent to a gateway")
    for x in e.ips:
        lines.append("")
        lines.append(f"pod IP {x.pod_ip}")
        if e.dest is not None and e.dest.version == x.pod_ip.version:
            lines.append(f"  to {e.dest}: " + (_describe(x.chosen) if x.chosen else "not steered (normal path)"))
        for r in x.routes:
            won = _nets(r.destinations)
            if r.destinations != r.requested and len(r.destinations) > 3:
                won = f"{_nets(r.requested)} except higher-precedence destinations ({len(r.destinations)} CIDRs)"
            lines.append(f"  {won} -> {_describe(r)}")
        width = max([len(str(v.policy)) for v in x.verdicts] + [6])
        lines.append(f"  {'POLICY':<{width}}  {'VERDICT':<26}  DETAIL")
        for v in x.verdicts:
            lines.append(f"  {v.policy!s:<{width}}  {v.verdict!s:<26}  {v.detail}".rstrip())
    return "\n".join(lines) + "\n"
