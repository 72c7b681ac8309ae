"""The next Intent of a reconcile pass: incremental for pod churn, a delta for other changes, a full `resolve` when
the change is large.

Why: pods change far more often than anything else, and a pod event only touches that pod's steerings
(`appliance.policy.incremental`, tested equal to a full `resolve`). The incremental path also keeps every unchanged
`Steering` object, which is what lets the data path apply only the changed pods' routes and set elements
(`appliance.datapath.apply.incremental`). So a pass first finds the pods that changed since the snapshot the last
intent came from (`pod_changes`: C-speed comparisons of the sorted pod tuples, Python work only around the changes):
when nothing but pods differs (and not too many of them), they are folded into the last intent one by one; when
something else differs too (a policy, a namespace's labels, a gateway, a member), `IncrementalResolver.delta`
re-matches only the pods the change can affect; beyond `max_pod_changes` pods (or a pod with an IP outside every
detected cluster CIDR) the whole intent is resolved again. Another node's stray pod IP (`Snapshot.remote_strays`, an
agent's only view of other nodes' pods) changes only `Intent.cluster_cidrs`: it is recomputed and replaced
(steerings exclude cluster-internal destinations through that field, never by value).

Pure: no I/O; the reconcile loop owns one tracker.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.core.intent import Intent
from appliance.core.model import Pod
from appliance.core.snapshot import Snapshot
from appliance.policy.cluster_cidrs import cluster_cidrs, is_stray
from appliance.policy.incremental import IncrementalResolver

#: snapshot fields an incremental step may differ in (everything else forces a full resolve)
_POD_FIELDS = frozenset({"pods", "remote_strays", "revision"})
_OTHER_FIELDS = tuple(f.name for f in dataclasses.fields(Snapshot) if f.name not in _POD_FIELDS)


def only_pods_differ(old: Snapshot, new: Snapshot) -> bool:
    return all(getattr(old, name) == getattr(new, name) for name in _OTHER_FIELDS)


def _pod_key(p: Pod) -> tuple[str, str]:
    return (p.namespace, p.name)


#: ranges at most this long are compared pod by pod
_LEAF = 32


def _diff(a: Sequence[Pod], alo: int, ahi: int, b: Sequence[Pod], blo: int, bhi: int,
          found: dict[tuple[str, str], list[Pod | None]]) -> None:
    """Record in `found` (key -> [old, new]) the pods of a[alo:ahi] / b[blo:bhi] that are not in the other range.

    Equal ranges are skipped by one C-speed tuple comparison (unchanged pods are the same objects); unequal ones are
    split at a key of `a` (bisected in `b`), so the Python work is O(changes x log pods). Correct for any order (the
    caller merges a pod reported as gone from one range and new in another); fast when both are sorted by key, as
    the store's are."""
    if ahi - alo == bhi - blo and a[alo:ahi] == b[blo:bhi]:
        return
    if ahi - alo <= _LEAF or bhi - blo <= _LEAF:
        before = {(p.namespace, p.name): p for p in a[alo:ahi]}
        after = {(p.namespace, p.name): p for p in b[blo:bhi]}
        for key, gone in before.items():
            now = after.get(key)
            if now is None or (now is not gone and now != gone):
                found.setdefault(key, [None, None])[0] = gone
        for key, now in after.items():
            was = before.get(key)
            if was is None or (now is not was and now != was):
                found.setdefault(key, [None, None])[1] = now
        return
    mid = (alo + ahi) // 2
    j = min(max(bisect.bisect_left(b, _pod_key(a[mid]), blo, bhi, key=_pod_key), blo), bhi)
    _diff(a, alo, mid, b, blo, j, found)
    _diff(a, mid, ahi, b, j, bhi, found)


def pod_changes(old: Snapshot, new: Snapshot) -> list[tuple[Pod | None, Pod | None]]:
    """(old, new) per pod that was added (old None), deleted (new None) or changed, in key order."""
    if old.pods is new.pods:
        return []
    found: dict[tuple[str, str], list[Pod | None]] = {}
    _diff(old.pods, 0, len(old.pods), new.pods, 0, len(new.pods), found)
    out: list[tuple[Pod | None, Pod | None]] = []
    for key in sorted(found):
        a, b = found[key]
        if a is b or (a is not None and b is not None and a == b):
            continue
        out.append((a, b))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class NextIntent:
    intent: Intent
    #: True when computed from the last intent by pod events (the data path may apply only the difference)
    incremental: bool
    #: pods folded in (pod events, or the pod events of a delta; 0 for a full resolve)
    pods_changed: int = 0
    #: True when computed as a delta over the pod index (policies, namespaces or gateways changed; not a full resolve)
    delta: bool = False


class IntentTracker:
    """Remembers the snapshot and resolution of the last pass and computes the next intent."""

    def __init__(self, *, max_pod_changes: int = 256, max_pod_share: float = 0.1) -> None:
        #: beyond this many changed pods in one pass (or this share of all pods, whichever is more) a full resolve is
        #: as cheap (the incremental paths cost a fraction of a millisecond per pod, a full resolve ~0.1 ms per pod)
        self.max_pod_changes = max_pod_changes
        self.max_pod_share = max_pod_share
        self.snapshot: Snapshot | None = None
        self.resolver = IncrementalResolver()

    @property
    def intent(self) -> Intent | None:
        return self.resolver.intent

    def next(self, snapshot: Snapshot, *, previous: Callable[[], Intent | None] | None = None) -> NextIntent:
        """The intent of `snapshot`. `previous` supplies the shared `previous` for a resolution of policies (the
        store's written intent); without it the tracker's own last intent is used."""
        try:
            result = self._next(snapshot, previous)
        except BaseException:
            self.forget()  # the pod index may be half-updated: the next pass resolves in full
            raise
        self.snapshot = snapshot
        return result

    def _next(self, snapshot: Snapshot, previous: Callable[[], Intent | None] | None) -> NextIntent:
        old_snap, old_intent = self.snapshot, self.resolver.intent
        result: NextIntent | None = None
        if old_snap is not None and old_intent is not None:
            changes = pod_changes(old_snap, snapshot)
            # a pod with an IP outside every detected cluster CIDR changes the cluster CIDRs (an O(pods) step each):
            # one full resolve is cheaper than many such steps, and the data path re-plans in full anyway
            limit = max(self.max_pod_changes, int(self.max_pod_share * len(snapshot.pods)))
            if len(changes) <= limit and not any(
                    p is not None and is_stray(snapshot, p) for change in changes for p in change):
                if only_pods_differ(old_snap, snapshot):
                    intent = self.resolver.pods_changed(snapshot, changes)
                    if old_snap.remote_strays != snapshot.remote_strays:
                        intent = self.resolver.set_cluster_cidrs(cluster_cidrs(snapshot))
                    result = NextIntent(intent=intent, incremental=True, pods_changed=len(changes))
                else:
                    prev = previous() if previous is not None else old_intent
                    intent = self.resolver.delta(old_snap, snapshot, changes, previous=prev)
                    result = NextIntent(intent=intent, incremental=False, pods_changed=len(changes), delta=True)
        if result is None:
            prev = previous() if previous is not None else old_intent
            result = NextIntent(intent=self.resolver.full(snapshot, previous=prev), incremental=False)
        return result

    def forget(self) -> None:
        """Drop the memory (the next pass resolves in full)."""
        self.snapshot = None
        self.resolver.forget()
