"""The incremental resolution (pod events, and policy / namespace / gateway / member changes as deltas over the pod
index) equals a full `resolve` after every step of random event sequences (seeded, pure, fast)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from appliance.core.intent import Intent
from appliance.core.model import EgressPolicy, Namespace, Operator, Pod, Requirement
from appliance.core.snapshot import Snapshot
from appliance.policy.intent_tracking import IntentTracker, pod_changes
from appliance.policy.resolution import resolve
from tests.unit.resolution_builders import appliance, gateway, gw_node, net, node, ns, pod, policy

NAMESPACES = ("ns-a", "ns-b", "ns-c", "ns-d")
APPS = ("web", "db", "api")
TEAMS = ("red", "blue")
DESTS = ((), ("198.51.100.0/24",), ("198.51.100.0/25", "2001:db8:198::/48"), ("203.0.113.0/24",))


def _pod(rng: random.Random, i: int) -> Pod:
    ips = [f"100.64.{rng.randrange(4)}.{rng.randrange(2, 60)}" if rng.random() < 0.97
           else f"100.99.0.{rng.randrange(2, 60)}"]  # now and then an IP outside every pod CIDR (a stray)
    if rng.random() < 0.6:
        ips.append(f"2001:db8:64::{rng.randrange(2, 200):x}")
    made = pod(rng.choice(NAMESPACES), f"pod-{i}", *ips,
               lbl={"app": rng.choice(APPS), "tier": rng.choice(("a", "b"))}, node_name=rng.choice(("w1", "w2")))
    if rng.random() < 0.1:
        made = replace(made, phase=rng.choice(("Pending", "Succeeded")))
    if rng.random() < 0.05:
        made = replace(made, node_name="")
    return made


def _namespace(rng: random.Random, name: str) -> Namespace:
    made = ns(name, team=rng.choice(TEAMS)) if rng.random() < 0.8 else ns(name)
    if rng.random() < 0.2:  # the namespace's default gateway
        made = replace(made, labels=(*made.labels, ("egressgw.io/default-gateway", rng.choice(("egw", "egw2")))))
    return made


def _policy(rng: random.Random, i: int) -> EgressPolicy:
    gw = rng.choice(("", "egw", "egw2"))
    kw: dict[str, object] = {
        "gateway": gw, "dest": rng.choice(DESTS), "priority": rng.randrange(3),
        "created": f"2026-01-01T00:00:{rng.randrange(60):02d}Z", "rr": rng.random() < 0.3,
        "node_ip": rng.random() < 0.1,
    }
    if rng.random() < 0.15:
        kw["subnet"] = (rng.choice(("100.64.1.0/24", "100.64.0.0/16", "2001:db8:64::/120")),)
        if rng.random() < 0.5:
            kw["app"] = rng.choice(APPS)
    else:
        kw["selector"] = {"app": rng.choice(APPS)} if rng.random() < 0.8 else {"tier": rng.choice(("a", "b"))}
    if rng.random() < 0.3:
        sel = rng.choice(({"team": "red"}, {"team": "blue"}, None))
        made = policy(f"cp-{i}", cluster=True, ns_selector=sel, **kw)  # type: ignore[arg-type]
    else:
        made = policy(f"p-{i}", rng.choice(NAMESPACES), **kw)  # type: ignore[arg-type]
    if made.applied_to.pod_selector is not None and rng.random() < 0.2:  # a set-based selector
        expression = Requirement(key="tier", operator=rng.choice((Operator.IN, Operator.NOT_IN, Operator.EXISTS)),
                                 values=("a",))
        if expression.operator is Operator.EXISTS:
            expression = replace(expression, values=())
        selector = replace(made.applied_to.pod_selector, match_expressions=(expression,))
        made = replace(made, applied_to=replace(made.applied_to, pod_selector=selector))
    return made


def _gateways(rng: random.Random) -> tuple:  # type: ignore[type-arg]
    first = gateway("egw", v4=("203.0.113.128/28",), v6=("2001:db8:e1::/124",) if rng.random() < 0.7 else (),
                    cluster_default=rng.random() < 0.7)
    second = gateway("egw2", v4=("203.0.113.160/30",), selector={"role": rng.choice(("gateway", "edge"))})
    return (first, second) if rng.random() < 0.8 else (first,)


def _world(rng: random.Random) -> Snapshot:
    return Snapshot(
        gateways=_gateways(rng),
        policies=tuple(_policy(rng, i) for i in range(8)),
        namespaces=tuple(_namespace(rng, n) for n in NAMESPACES),
        nodes=(gw_node("gw1", "198.51.100.11"), gw_node("gw2", "198.51.100.12"),
               node("w1", "100.127.0.11", pod_cidrs=("100.64.0.0/18", "2001:db8:64::/64")),
               node("w2", "100.127.0.12", pod_cidrs=("100.64.64.0/18",))),
        pods=tuple(sorted((_pod(rng, i) for i in range(30)), key=lambda p: p.key)),
    )


def _step(rng: random.Random, s: Snapshot, n: int) -> Snapshot:
    """One random event (sometimes two kinds at once, as one pass may see them)."""
    kinds = rng.choices(("pod_add", "pod_del", "pod_edit", "policy_add", "policy_del", "policy_edit", "ns",
                         "gateway", "member", "appliance", "node"), weights=(6, 4, 4, 2, 2, 2, 2, 1, 1, 1, 1),
                        k=1 if rng.random() < 0.85 else 2)
    for k, kind in enumerate(kinds):
        n = 2 * n + k  # unique names: a pod key is unique in a snapshot
        pods = list(s.pods)
        policies = list(s.policies)
        if kind == "pod_add" or (kind in ("pod_del", "pod_edit") and not pods):
            pods.append(_pod(rng, n))
        elif kind == "pod_del":
            pods.pop(rng.randrange(len(pods)))
        elif kind == "pod_edit":
            i = rng.randrange(len(pods))
            pods[i] = replace(_pod(rng, n), namespace=pods[i].namespace, name=pods[i].name)
        elif kind == "policy_add" or (kind in ("policy_del", "policy_edit") and not policies):
            policies.append(_policy(rng, n))
        elif kind == "policy_del":
            policies.pop(rng.randrange(len(policies)))
        elif kind == "policy_edit":
            i = rng.randrange(len(policies))
            fresh = _policy(rng, n)
            policies[i] = replace(fresh, ref=replace(fresh.ref, kind=policies[i].ref.kind,
                                                     namespace=policies[i].ref.namespace, name=policies[i].ref.name))
        elif kind == "ns":
            name = rng.choice(NAMESPACES)
            s = replace(s, namespaces=tuple(_namespace(rng, n.name) if n.name == name else n for n in s.namespaces))
        elif kind == "gateway":
            s = replace(s, gateways=_gateways(rng))
        elif kind == "node":  # the second worker's pod CIDR moves (the cluster-internal CIDRs change)
            cidr = rng.choice(("100.64.64.0/18", "100.64.0.0/16", "100.65.0.0/18"))
            s = replace(s, nodes=tuple(replace(x, pod_cidrs=(net(cidr),)) if x.name == "w2" else x for x in s.nodes))
        elif kind == "member":
            s = replace(s, alive_members=rng.choice((None, frozenset({"gw1"}), frozenset({"gw2"}), frozenset())))
        else:
            s = replace(s, appliances=rng.choice(((), (appliance("app1", "egw", "198.51.100.21"),),
                                                  (appliance("app1", "egw", "198.51.100.21", alive=False),))))
        s = replace(s, pods=tuple(sorted(pods, key=lambda p: p.key)), policies=tuple(policies))
    return replace(s, revision=s.revision + 1)


@pytest.mark.parametrize("seed", range(8))
def test_random_event_sequences_equal_a_full_resolve_after_every_step(seed: int) -> None:
    rng = random.Random(seed)
    tracker = IntentTracker()
    tracker.resolver.full_share = rng.choice((0.25, 1.0))  # also exercise deltas that touch most pods
    tracker.resolver.bulk_pods = rng.choice((0, 32))  # and pod events folded in bulk
    s = _world(rng)
    last: Intent = tracker.next(s).intent
    assert last == resolve(s)
    paths = {"pods": 0, "delta": 0, "full": 0}
    for n in range(100, 160):
        s = _step(rng, s, n)
        expected = resolve(s, previous=last)
        got = tracker.next(s)
        paths["pods" if got.incremental else "delta" if got.delta else "full"] += 1
        assert got.intent == expected, f"step {n}: {'pods' if got.incremental else 'delta'} path differs"
        last = got.intent
    assert paths["pods"] and paths["delta"]  # both incremental paths were exercised


def test_unchanged_steerings_stay_the_same_objects_across_a_policy_delta() -> None:
    s = _world(random.Random(7))
    tracker = IntentTracker()
    before = tracker.next(s).intent
    extra = policy("late", "ns-a", selector={"app": "nothing-has-this"}, gateway="egw")
    nxt = tracker.next(replace(s, policies=(*s.policies, extra)))
    assert nxt.delta and nxt.intent == resolve(replace(s, policies=(*s.policies, extra)), previous=before)
    by_value = {x: x for x in before.steerings}
    unchanged = [y for y in nxt.intent.steerings if y in by_value]
    assert unchanged and all(by_value[y] is y for y in unchanged)


def test_pod_changes_finds_changes_in_unsorted_and_large_tuples() -> None:
    rng = random.Random(3)
    pods = [_pod(rng, i) for i in range(400)]
    base = Snapshot(pods=tuple(sorted(pods, key=lambda p: p.key)))
    gone, edited = base.pods[17], base.pods[250]
    edit = replace(edited, labels=(("app", "other"),))
    new = _pod(rng, 999)
    after = sorted([p for p in base.pods if p is not gone and p is not edited] + [edit, new], key=lambda p: p.key)
    expected = sorted([(gone, None), (edited, edit), (None, new)], key=lambda c: next(p for p in c if p).key)
    assert pod_changes(base, replace(base, pods=tuple(after))) == expected
    shuffled = list(after)
    rng.shuffle(shuffled)
    assert pod_changes(base, replace(base, pods=tuple(shuffled))) == expected


def test_a_pass_that_fails_half_way_leaves_the_next_one_a_full_resolve() -> None:
    s = _world(random.Random(5))
    tracker = IntentTracker()
    tracker.next(s)

    def broken() -> Intent | None:
        raise RuntimeError("the store went away")

    changed = replace(s, policies=s.policies[1:], revision=1)
    with pytest.raises(RuntimeError):
        tracker.next(changed, previous=broken)
    again = tracker.next(changed)
    assert not again.incremental and not again.delta
    assert again.intent == resolve(changed)
