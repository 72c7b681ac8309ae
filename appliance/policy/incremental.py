"""Incremental resolution for pod churn (pure): a pod added, removed or changed, without a full `resolve`.

Why: pods come and go far more often than policies or gateways change, and a pod only affects its own steerings and
the policies' `selected_ips` counts; gateways, EIP assignment and instances do not depend on pods, and the cluster
CIDRs only on pods with an IP outside every detected source (`cluster_cidrs_after_pod_event`: unchanged, the same
tuple, for every other pod, so the data path's fast path still applies). So given the Intent resolved from a
snapshot, the Intent after one pod event is computed by matching that pod against the Ready policies only. The
result equals a full `resolve(new_snapshot, previous=intent)` (a tested property); anything else (policies,
gateways, namespaces, nodes, cluster info) still needs a full `resolve`.
"""

from __future__ import annotations

import bisect
from dataclasses import replace

from appliance.core.intent import Intent, PolicyOutcome, PolicyState, Steering
from appliance.core.model import EgressPolicy, IPAddress, Pod, PolicyRef
from appliance.core.snapshot import Snapshot
from appliance.policy.cluster_cidrs import cluster_cidrs_after_pod_event
from appliance.policy.placement import endpoints_of, node_ip_member
from appliance.policy.precedence import disjoint, policy_key
from appliance.policy.selection import ineligibility, ip_mismatch


def _sort_key(s: Steering) -> tuple[int, int, int, str, str]:
    return (s.pod_ip.version, int(s.pod_ip), s.rank, s.namespace, s.pod)


def _ip_key(s: Steering) -> tuple[int, int]:
    return (int(s.pod_ip.version), int(s.pod_ip))


def _with_counts(intent: Intent, steerings: list[Steering], delta: dict[PolicyRef, int]) -> Intent:
    outcomes = tuple(
        replace(o, selected_ips=o.selected_ips + delta[o.policy]) if o.policy in delta else o for o in intent.outcomes
    )
    return replace(intent, steerings=tuple(steerings), outcomes=outcomes)


def _remove(steerings: list[Steering], pod: Pod, delta: dict[PolicyRef, int]) -> None:
    """Drop the steerings of `pod` (found through its IPs: steerings are sorted by pod IP)."""
    for ip in pod.ips:
        k: tuple[int, int] = (int(ip.version), int(ip))
        lo = bisect.bisect_left(steerings, k, key=_ip_key)
        hi = bisect.bisect_right(steerings, k, key=_ip_key)
        keep = [s for s in steerings[lo:hi] if (s.namespace, s.pod) != pod.key]
        for s in steerings[lo:hi]:
            if (s.namespace, s.pod) == pod.key:
                delta[s.policy] = delta.get(s.policy, 0) - 1
        steerings[lo:hi] = keep


_RANKS: dict[str, tuple[object, frozenset[PolicyRef], dict[int, dict[PolicyRef, int]]]] = {}


def _ranks(policies: tuple[EgressPolicy, ...], ready: frozenset[PolicyRef]) -> dict[int, dict[PolicyRef, int]]:
    """Steering ranks of the Ready policies per family (as `resolve` computes them); cached for the last input."""
    cached = _RANKS.get("last")
    if cached is not None and cached[0] is policies and cached[1] == ready:
        return cached[2]
    chosen = sorted((p for p in policies if p.ref in ready), key=lambda p: p.ref)
    ranks: dict[int, dict[PolicyRef, int]] = {}
    for v in (4, 6):
        order = sorted(chosen, key=lambda p, v=v: (policy_key(p, v), p.ref))  # type: ignore[misc]
        ranks[v] = {p.ref: r for r, p in enumerate(order)}
    _RANKS["last"] = (policies, ready, ranks)
    return ranks


def _families(o: PolicyOutcome) -> set[int]:
    if o.use_node_ip:
        return {4, 6}
    return {v for v, eip in ((4, o.eip_v4), (6, o.eip_v6)) if eip is not None}


def pod_changed(snapshot: Snapshot, intent: Intent, old: Pod | None, new: Pod | None) -> Intent:
    """The intent after a pod event: added (old None), deleted (new None) or changed (labels, IPs, phase...).

    `snapshot` supplies policies, gateways and namespaces (the pod itself need not be in it yet).
    """
    steerings = list(intent.steerings)
    delta: dict[PolicyRef, int] = {}
    if old is not None:
        _remove(steerings, old, delta)
    if new is not None:
        _remove(steerings, new, delta)
        for s in _steer(snapshot, intent, new):
            delta[s.policy] = delta.get(s.policy, 0) + 1
            bisect.insort_right(steerings, s, key=_sort_key)
    result = _with_counts(intent, steerings, {k: v for k, v in delta.items() if v}) if delta else intent
    cidrs = cluster_cidrs_after_pod_event(snapshot, intent.cluster_cidrs, old, new)
    return result if cidrs is intent.cluster_cidrs else replace(result, cluster_cidrs=cidrs)


def pod_added(snapshot: Snapshot, intent: Intent, pod: Pod) -> Intent:
    return pod_changed(snapshot, intent, None, pod)


def _steer(snapshot: Snapshot, intent: Intent, pod: Pod) -> list[Steering]:
    """The steerings of one pod under the Ready policies of `intent`."""
    if ineligibility(pod) is not None:
        return []
    ready = {o.policy: o for o in intent.outcomes if o.state is PolicyState.READY}
    policies = sorted((p for p in snapshot.policies if p.ref in ready), key=lambda p: p.ref)
    gateways = {g.name: g for g in snapshot.gateways}
    ns_labels = next((dict(n.labels) for n in snapshot.namespaces if n.name == pod.namespace), {})
    pod_labels = dict(pod.labels)
    new: list[Steering] = []
    for ip in pod.ips:
        matched: list[EgressPolicy] = [
            p
            for p in policies
            if ip.version in _families(ready[p.ref])
            and ip_mismatch(p, pod.namespace, ns_labels, pod_labels, ip) is None
        ]
        if not matched:
            continue
        rank = _ranks(snapshot.policies, frozenset(ready))[ip.version]
        for pos, nets in disjoint(matched, ip.version):
            o = ready[matched[pos].ref]
            instance = intent.instance(o.gateway)
            eip: IPAddress | None = o.eip_v4 if ip.version == 4 else o.eip_v6
            endpoints: tuple[IPAddress, ...] = ()
            if o.use_node_ip:
                eip = None
                member = node_ip_member(instance, str(o.policy)) if instance is not None else None
                endpoints = (member.address,) if member is not None else ()
            elif eip is not None and o.gateway in gateways:
                endpoints = endpoints_of(gateways[o.gateway], eip)
            new.append(
                Steering(
                    pod_ip=ip,
                    namespace=pod.namespace,
                    pod=pod.name,
                    node=pod.node_name,
                    policy=o.policy,
                    gateway=o.gateway,
                    eip=eip,
                    destinations=nets,
                    endpoints=endpoints,
                    rank=rank[o.policy],
                )
            )
    return new
