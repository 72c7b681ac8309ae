"""The tracker's incremental path equals a full resolve, keeps unchanged steering objects, and falls back to a full
resolve whenever something besides pods changed."""

from __future__ import annotations

from dataclasses import replace

from appliance.core.snapshot import Snapshot
from appliance.policy.intent_tracking import IntentTracker, only_pods_differ, pod_changes
from appliance.policy.resolution import resolve
from tests.unit.resolution_builders import gateway, gw_node, node, ns, pod, policy


def base(n: int) -> Snapshot:
    return Snapshot(
        gateways=(gateway("egw"),),
        policies=(policy("p1", gateway="egw", app="web", eip4="203.0.113.130"),),
        namespaces=(ns("default"),),
        nodes=(gw_node("gw1", "198.51.100.11"), node("w1", "100.127.0.11", pod_cidrs=("100.64.1.0/24",))),
        pods=tuple(pod("default", f"web-{i}", f"100.64.1.{10 + i}", lbl={"app": "web"}) for i in range(n)),
    )


def test_pod_churn_is_incremental_and_equals_a_full_resolve() -> None:
    t = IntentTracker()
    s0 = base(5)
    first = t.next(s0)
    assert not first.incremental
    added = pod("default", "web-9", "100.64.1.99", lbl={"app": "web"})
    s1 = replace(s0, pods=(*s0.pods[1:], added))  # one deleted, one added
    nxt = t.next(s1)
    assert nxt.incremental and nxt.pods_changed == 2
    assert nxt.intent == resolve(s1, previous=first.intent)
    kept = {id(s) for s in first.intent.steerings}
    assert sum(id(s) in kept for s in nxt.intent.steerings) == 4  # unchanged steerings are the same objects


def test_other_changes_resolve_in_full() -> None:
    t = IntentTracker()
    s0 = base(3)
    t.next(s0)
    s1 = replace(s0, policies=(policy("p1", gateway="egw", app="web", eip4="203.0.113.131"),))
    assert not only_pods_differ(s0, s1)
    nxt = t.next(s1, previous=lambda: None)
    assert not nxt.incremental
    assert {str(s.eip) for s in nxt.intent.steerings} == {"203.0.113.131"}


def test_too_many_pod_changes_resolve_in_full() -> None:
    t = IntentTracker(max_pod_changes=2)
    t.next(base(1))
    assert not t.next(base(10)).incremental
    assert pod_changes(base(3), base(3)) == []
