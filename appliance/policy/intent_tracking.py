"""The next Intent of a reconcile pass: incremental for pod churn, a full `resolve` for everything else.

Why: pods change far more often than anything else, and a pod event only touches that pod's steerings
(`appliance.policy.incremental.pod_changed`, tested equal to a full `resolve`). The incremental path also keeps every
unchanged `Steering` object, which is what lets the data path apply only the changed pods' routes and set elements
(`appliance.datapath.apply.incremental`). So a pass first compares the new snapshot with the one the last intent came
from: when nothing but pods differs (and not too many of them), the pods that changed are folded into the last
intent one by one; otherwise the whole intent is resolved again. Another node's stray pod IP (`Snapshot.
remote_strays`, an agent's only view of other nodes' pods) changes only `Intent.cluster_cidrs`: it is recomputed and
replaced, no full resolve (steerings exclude cluster-internal destinations through that field, never by value).

Pure: no I/O; the reconcile loop owns one tracker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from appliance.core.intent import Intent
from appliance.core.model import Pod
from appliance.core.snapshot import Snapshot
from appliance.policy.cluster_cidrs import cluster_cidrs, is_stray
from appliance.policy.incremental import pod_changed
from appliance.policy.resolution import resolve

#: snapshot fields an incremental step may differ in (everything else forces a full resolve)
_POD_FIELDS = frozenset({"pods", "remote_strays", "revision"})
_OTHER_FIELDS = tuple(f.name for f in dataclasses.fields(Snapshot) if f.name not in _POD_FIELDS)


def only_pods_differ(old: Snapshot, new: Snapshot) -> bool:
    return all(getattr(old, name) == getattr(new, name) for name in _OTHER_FIELDS)


def pod_changes(old: Snapshot, new: Snapshot) -> list[tuple[Pod | None, Pod | None]]:
    """(old, new) per pod that was added (old None), deleted (new None) or changed, in key order."""
    if old.pods is new.pods or old.pods == new.pods:
        return []
    before = {p.key: p for p in old.pods}
    after = {p.key: p for p in new.pods}
    out: list[tuple[Pod | None, Pod | None]] = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a is b or a == b:
            continue
        out.append((a, b))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class NextIntent:
    intent: Intent
    #: True when computed from the last intent by pod events (the data path may apply only the difference)
    incremental: bool
    #: pods folded in incrementally (0 for a full resolve)
    pods_changed: int = 0


class IntentTracker:
    """Remembers the snapshot and intent of the last pass and computes the next intent."""

    def __init__(self, *, max_pod_changes: int = 256) -> None:
        #: beyond this many changed pods in one pass a full resolve is as cheap and simpler to reason about
        self.max_pod_changes = max_pod_changes
        self.snapshot: Snapshot | None = None
        self.intent: Intent | None = None

    def next(self, snapshot: Snapshot, *, previous: Callable[[], Intent | None] | None = None) -> NextIntent:
        """The intent of `snapshot`. `previous` supplies the shared `previous` for a full resolve (the store's
        written intent); without it the tracker's own last intent is used."""
        old_snap, old_intent = self.snapshot, self.intent
        result: NextIntent | None = None
        if old_snap is not None and old_intent is not None and only_pods_differ(old_snap, snapshot):
            changes = pod_changes(old_snap, snapshot)
            # a pod with an IP outside every detected cluster CIDR changes the cluster CIDRs (an O(pods) step each):
            # one full resolve is cheaper than many such steps, and the data path re-plans in full anyway
            if len(changes) <= self.max_pod_changes and not any(
                    p is not None and is_stray(snapshot, p) for change in changes for p in change):
                intent = old_intent
                for before, after in changes:
                    intent = pod_changed(snapshot, intent, before, after)
                if old_snap.remote_strays != snapshot.remote_strays:
                    intent = dataclasses.replace(intent, cluster_cidrs=cluster_cidrs(snapshot))
                result = NextIntent(intent=intent, incremental=True, pods_changed=len(changes))
        if result is None:
            prev = previous() if previous is not None else old_intent
            result = NextIntent(intent=resolve(snapshot, previous=prev), incremental=False)
        self.snapshot, self.intent = snapshot, result.intent
        return result

    def forget(self) -> None:
        """Drop the memory (the next pass resolves in full)."""
        self.snapshot = self.intent = None
