"""Incremental resolution (pure): pod events, and policy/namespace/gateway changes as deltas over the pod index.

Why: pods come and go far more often than policies or gateways change, and a pod only affects its own steerings and
the policies' `selected_ips` counts; gateways, EIP assignment and instances do not depend on pods, and the cluster
CIDRs only on pods with an IP outside every detected source (`cluster_cidrs_after_pod_event`: unchanged, the same
tuple, for every other pod, so the data path's fast path still applies). So given the Intent resolved from a
snapshot, the Intent after one pod event is computed by matching that pod against the Ready policies only. The
result equals a full `resolve(new_snapshot, previous=intent)` (a tested property); anything else (policies,
gateways, namespaces, nodes, cluster info) goes through `IncrementalResolver.delta`.

`IncrementalResolver` keeps a pod index (`selection.PodIndex`, updated per pod event) and the last `Resolution`:
- pod events fold into the last intent in O(log steerings + policies of the pod's namespace) each, plus C-speed
  copies of the steering tuple;
- any other change (a policy added, removed or edited, a namespace relabelled, a gateway or member change) is a
  delta: assignments and instances are recomputed (O(policies), no pod is looked at), then only the pods that the
  changed policies selected before (their steerings) or select now (through the index), and the pods of relabelled
  namespaces, are matched again; every other steering is kept (the same object, or a copy with its new rank when the
  dense policy ranks moved). When that touches a large share of the pods, one full resolution over the kept index is
  cheaper and is used instead.
The result equals a full `resolve(snapshot, previous=...)` after every step (tests/unit/test_incremental_resolver.py
applies random event sequences and compares).
"""

from __future__ import annotations

import bisect
from dataclasses import replace

from appliance.core.intent import Intent, PolicyOutcome, PolicyState, Steering
from appliance.core.model import EgressPolicy, IPAddress, IPNetwork, Pod, PolicyRef
from appliance.core.snapshot import Snapshot
from appliance.policy.cluster_cidrs import cluster_cidrs, cluster_cidrs_after_pod_event, is_stray
from appliance.policy.placement import endpoints_of, node_ip_member
from appliance.policy.precedence import disjoint, policy_key
from appliance.policy.resolution import Resolution, SteeringContext, finish, prepare, resolve_indexed
from appliance.policy.selection import PodIndex, ineligibility, ip_mismatch


def _sort_key(s: Steering) -> tuple[int, int, int, str, str]:
    return (s.pod_ip.version, int(s.pod_ip), s.rank, s.namespace, s.pod)


def _ip_key(s: Steering) -> tuple[int, int]:
    return (int(s.pod_ip.version), int(s.pod_ip))


def _with_counts(intent: Intent, steerings: list[Steering], delta: dict[PolicyRef, int]) -> Intent:
    outcomes = tuple(
        replace(o, selected_ips=o.selected_ips + delta[o.policy]) if o.policy in delta else o for o in intent.outcomes
    )
    return replace(intent, steerings=tuple(steerings), outcomes=outcomes)


def _remove(steerings: list[Steering], pod: Pod, delta: dict[PolicyRef, int]) -> list[Steering]:
    """Drop the steerings of `pod` (found through its IPs: steerings are sorted by pod IP); return them."""
    removed: list[Steering] = []
    for ip in pod.ips:
        k: tuple[int, int] = (int(ip.version), int(ip))
        lo = bisect.bisect_left(steerings, k, key=_ip_key)
        hi = bisect.bisect_right(steerings, k, key=_ip_key)
        keep = [s for s in steerings[lo:hi] if (s.namespace, s.pod) != pod.key]
        for s in steerings[lo:hi]:
            if (s.namespace, s.pod) == pod.key:
                delta[s.policy] = delta.get(s.policy, 0) - 1
                removed.append(s)
        if len(keep) != hi - lo:
            steerings[lo:hi] = keep
    return removed


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


Change = tuple[Pod | None, Pod | None]
#: snapshot fields the cluster-internal CIDRs depend on (besides pods with stray IPs)
_CIDR_FIELDS = ("nodes", "cluster_info", "service_cidrs", "calico_pools", "remote_strays")


class IncrementalResolver:
    """The last resolution and a pod index kept current with it. Not thread-safe (one reconcile loop owns it)."""

    def __init__(self, *, full_share: float = 0.25, bulk_pods: int = 32) -> None:
        #: a delta touching more than this share of the indexed pods runs one full resolution instead
        self.full_share = full_share
        #: beyond this many pod events in one pass they are folded in with one pass over the steerings
        self.bulk_pods = bulk_pods
        self.index: PodIndex | None = None
        self.resolution: Resolution | None = None

    @property
    def intent(self) -> Intent | None:
        return self.resolution.intent if self.resolution is not None else None

    def full(self, snapshot: Snapshot, *, previous: Intent | None, index: PodIndex | None = None) -> Intent:
        """Resolve everything (a fresh pod index unless a current one is given)."""
        self.index = index if index is not None else PodIndex(snapshot.pods, snapshot.namespaces)
        self.resolution = resolve_indexed(snapshot, self.index, previous=previous)
        return self.resolution.intent

    def forget(self) -> None:
        self.index = self.resolution = None

    # ----- pod events -----

    def pods_changed(self, snapshot: Snapshot, changes: list[Change]) -> Intent:
        """The intent after pod events only (nothing else in `snapshot` differs from the last resolution's)."""
        res, index = self.resolution, self.index
        assert res is not None and index is not None
        ctx, intent = res.context, res.intent
        cidrs = intent.cluster_cidrs
        if len(changes) > self.bulk_pods:  # one pass over the steerings instead of a memmove per steering
            for old, new in changes:
                if old is not None:
                    index.remove(old.key)
                if new is not None:
                    index.add(new)
                cidrs = cluster_cidrs_after_pod_event(snapshot, cidrs, old, new)
            counts = {o.policy: o.selected_ips for o in intent.outcomes if o.policy in ctx.position}
            affected = {p.key for change in changes for p in change if p is not None}
            bulk = _rematch(index, ctx, intent.steerings, affected, {4: None, 6: None}, counts)
            outcomes = [replace(o, selected_ips=counts[o.policy]) if counts.get(o.policy, o.selected_ips)
                        != o.selected_ips else o for o in intent.outcomes]
            res.intent = replace(intent, steerings=tuple(bulk), outcomes=tuple(outcomes), cluster_cidrs=cidrs)
            return res.intent
        steerings = list(intent.steerings)
        delta: dict[PolicyRef, int] = {}
        for old, new in changes:
            removed: list[Steering] = []
            for p in (old, new):
                if p is not None:
                    removed.extend(_remove(steerings, p, delta))
            if old is not None:
                index.remove(old.key)
            if new is not None and (pos := index.add(new)) is not None:
                reuse = {s: s for s in removed}  # an unchanged steering stays the same object (the data path's delta)
                for s in ctx.steerings_of(index, (pos,)).get(pos, ()):
                    s = reuse.get(s, s)
                    delta[s.policy] = delta.get(s.policy, 0) + 1
                    bisect.insort_right(steerings, s, key=_sort_key)
            cidrs = cluster_cidrs_after_pod_event(snapshot, cidrs, old, new)
        outcomes = list(intent.outcomes)
        for ref, d in delta.items():
            if d:
                at = res.outcome_at[ref]
                outcomes[at] = replace(outcomes[at], selected_ips=outcomes[at].selected_ips + d)
        res.intent = replace(intent, steerings=tuple(steerings), outcomes=tuple(outcomes), cluster_cidrs=cidrs)
        return res.intent

    def set_cluster_cidrs(self, cidrs: tuple[IPNetwork, ...]) -> Intent:
        res = self.resolution
        assert res is not None
        if cidrs != res.intent.cluster_cidrs:
            res.intent = replace(res.intent, cluster_cidrs=cidrs)
        return res.intent

    # ----- everything else: a delta over the pod index -----

    def delta(self, before: Snapshot, snapshot: Snapshot, changes: list[Change], *,
              previous: Intent | None) -> Intent:
        """The intent of `snapshot`, given the last resolution (of `before`) and the pod events between the two.
        `previous` is what a full resolve would be given (it keeps `rr` EIPs where they were)."""
        res, index = self.resolution, self.index
        assert res is not None and index is not None
        for old, new in changes:
            if old is not None:
                index.remove(old.key)
            if new is not None:
                index.add(new)
        affected: set[tuple[str, str]] = {p.key for change in changes for p in change if p is not None}
        if before.namespaces != snapshot.namespaces:
            labels_before = {n.name: n.labels for n in before.namespaces}
            labels_now = {n.name: n.labels for n in snapshot.namespaces}
            index.set_namespaces(snapshot.namespaces)
            for name in labels_before.keys() | labels_now.keys():
                if labels_before.get(name) != labels_now.get(name):
                    affected.update(_key_at(index, i) for i in index.in_namespace(name))
        policies, assignments, ctx = prepare(snapshot, index, previous=previous)
        old_ctx = res.context
        was = {a.policy.ref: old_ctx.signature(i) for i, a in enumerate(old_ctx.chosen)}
        now = {a.policy.ref: ctx.signature(i) for i, a in enumerate(ctx.chosen)}
        changed = {ref for ref in was.keys() | now.keys() if was.get(ref) != now.get(ref)}
        for ref in changed:
            pos = ctx.position.get(ref)
            if pos is not None:
                affected.update(_key_at(index, i) for i, _ in index.select(ctx.chosen[pos].policy))
        old_steerings = res.intent.steerings
        gone = {ref for ref in changed if ref in was}  # only policies Ready before have steerings to undo
        if gone:  # names first: hashing a str is cached, hashing a PolicyRef is not
            names = {ref.name for ref in gone}
            affected.update((s.namespace, s.pod) for s in old_steerings
                            if s.policy.name in names and s.policy in gone)
        if len(affected) > self.full_share * max(len(index), 1):
            self.resolution = resolve_indexed(snapshot, index, previous=previous)
            return self.resolution.intent
        counts = {o.policy: o.selected_ips for o in res.intent.outcomes if o.policy in ctx.position}
        kept = _rematch(index, ctx, old_steerings, affected, _rank_maps(old_ctx, ctx, changed), counts)
        stray = any(p is not None and is_stray(snapshot, p) for change in changes for p in change)
        cidrs = res.intent.cluster_cidrs
        if stray or any(getattr(before, f) != getattr(snapshot, f) for f in _CIDR_FIELDS):
            cidrs = cluster_cidrs(snapshot)
        self.resolution = finish(snapshot, policies, assignments, ctx, kept, counts, cidrs)
        return self.resolution.intent


def _rematch(index: PodIndex, ctx: SteeringContext, steerings: tuple[Steering, ...], affected: set[tuple[str, str]],
             remap: dict[int, list[int] | None], counts: dict[PolicyRef, int]) -> list[Steering]:
    """`steerings` with those of the `affected` pods computed again (from the index, under `ctx`) and the others'
    ranks renumbered by `remap`; `counts` (steerings per policy) updated. One pass over the steerings and one merge:
    what a bulk of changes costs, instead of a bisection and a memmove per steering."""
    removed: dict[tuple[str, str], list[Steering]] = {}
    kept: list[Steering] = []
    # steerings are sorted by family first: the IPv4 ones, then the IPv6 ones
    split = bisect.bisect_left(steerings, 6, key=lambda s: s.pod_ip.version)
    names = {k[1] for k in affected}
    for lo, hi, ranks in ((0, split, remap[4]), (split, len(steerings), remap[6])):
        part = steerings[lo:hi]
        if affected:
            for s in part:
                if s.pod in names and (key := (s.namespace, s.pod)) in affected:
                    removed.setdefault(key, []).append(s)
                    counts[s.policy] = counts.get(s.policy, 0) - 1
            part = tuple(s for s in part if not (s.pod in names and (s.namespace, s.pod) in affected))
        if ranks is None:
            kept.extend(part)
        else:
            kept.extend(s if ranks[s.rank] == s.rank else _with_rank(s, ranks[s.rank]) for s in part)
    added: list[Steering] = []
    positions = {pos: key for key in affected if (pos := index.position(key)) is not None}
    for pos, found in ctx.steerings_of(index, positions).items():
        reuse = {s: s for s in removed.get(positions[pos], ())}  # unchanged steerings stay the same objects
        for s in found:
            s = reuse.get(s, s)
            counts[s.policy] = counts.get(s.policy, 0) + 1
            added.append(s)
    return _merged(kept, added)


def _key_at(index: PodIndex, pos: int) -> tuple[str, str]:
    pod = index.pods[pos]
    assert pod is not None
    return pod.key


def _rank_maps(old: SteeringContext, new: SteeringContext, changed: set[PolicyRef]) -> dict[int, list[int] | None]:
    """Per family, old rank -> new rank of the policies Ready in both and not `changed` (a rank names one policy per
    family), or None when no such rank moved. The dense ranks move when a policy comes or goes before others; their
    relative order does not (unchanged policies keep their precedence keys and their order by ref), so steerings
    kept with remapped ranks stay sorted."""
    out: dict[int, list[int] | None] = {}
    for v in (4, 6):
        ranks = list(range(len(old.chosen)))
        moved = False
        for i, a in enumerate(old.chosen):
            pos = new.position.get(a.policy.ref)
            if pos is not None and a.policy.ref not in changed and new.ranks[v][pos] != old.ranks[v][i]:
                ranks[old.ranks[v][i]] = new.ranks[v][pos]
                moved = True
        out[v] = ranks if moved else None
    return out


def _with_rank(s: Steering, rank: int) -> Steering:
    """`s` with another rank (the constructor directly: `dataclasses.replace` costs several times more, and a policy
    added before many others re-ranks a steering per selected pod IP of theirs)."""
    return Steering(pod_ip=s.pod_ip, namespace=s.namespace, pod=s.pod, node=s.node, policy=s.policy,
                    gateway=s.gateway, eip=s.eip, destinations=s.destinations, endpoints=s.endpoints, rank=rank)


def _merged(kept: list[Steering], added: list[Steering]) -> list[Steering]:
    """`kept` (sorted) with `added` merged in, sorted: by bisection and slices when few are added, else one sort."""
    if not added:
        return kept
    if len(added) * 16 > len(kept):
        kept.extend(added)
        kept.sort(key=_sort_key)
        return kept
    added.sort(key=_sort_key)
    out: list[Steering] = []
    at = 0
    for s in added:
        i = bisect.bisect_right(kept, _sort_key(s), lo=at, key=_sort_key)
        out.extend(kept[at:i])
        out.append(s)
        at = i
    out.extend(kept[at:])
    return out
