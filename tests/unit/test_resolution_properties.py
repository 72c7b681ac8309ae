"""Hypothesis properties of resolution: order independence, disjointness, precedence against an oracle, rr
stickiness, incremental pod updates equal to a full resolve."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core.intent import PolicyState
from appliance.core.model import EgressPolicy, IPAddress, IPNetwork, Pod
from appliance.core.snapshot import Snapshot
from appliance.policy.incremental import pod_changed
from appliance.policy.precedence import destinations, entry_key
from appliance.policy.resolution import resolve
from appliance.policy.selection import ineligibility, ip_mismatch
from tests.unit.resolution_builders import appliance, gateway, gw_node, node, ns, pod, policy

DESTS = ["198.51.100.0/24", "198.51.100.0/25", "198.51.100.64/26", "203.0.113.0/28", "2001:db8:198::/48",
         "2001:db8:198:1::/64", "100.64.0.0/10"]
APPS = ["web", "db", "api"]
NAMESPACES = ["a", "b", "c"]
GATEWAYS = ["g1", "g2"]
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    gws = tuple(
        gateway(
            name,
            v4=(f"203.0.113.{16 * i + 128}-203.0.113.{16 * i + 128 + draw(st.integers(0, 5))}",),
            v6=(f"2001:db8:e{i}::/125",) if draw(st.booleans()) else (),
            cluster_default=(i == 0 and draw(st.booleans())),
            selector={"gw": name},
        )
        for i, name in enumerate(GATEWAYS[: draw(st.integers(1, 2))])
    )
    nodes = tuple(
        node(f"n{i}", f"100.127.0.{i + 10}", lbl={"gw": draw(st.sampled_from(GATEWAYS))}) for i in range(4)
    )
    namespaces = tuple(ns(n, env=draw(st.sampled_from(["prod", "dev"]))) for n in NAMESPACES)
    pods = []
    for i in range(draw(st.integers(0, 12))):
        ips = [f"100.64.{i}.10"] + ([f"2001:db8:64:{i}::10"] if draw(st.booleans()) else [])
        pods.append(
            pod(draw(st.sampled_from(NAMESPACES)), f"p{i}", *ips, lbl={"app": draw(st.sampled_from(APPS))},
                node_name=f"n{i % 4}")
        )
    policies = []
    for i in range(draw(st.integers(0, 9))):
        cluster = draw(st.booleans())
        policies.append(
            policy(
                f"pol{i}",
                draw(st.sampled_from(NAMESPACES)),
                cluster=cluster,
                gateway=draw(st.sampled_from(["", *GATEWAYS])),
                app=draw(st.sampled_from(APPS)),
                ns_selector=draw(st.sampled_from([None, {"env": "prod"}])) if cluster else None,
                dest=draw(st.lists(st.sampled_from(DESTS), max_size=3, unique=True)),
                priority=draw(st.integers(0, 2)),
                rr=draw(st.booleans()),
                node_ip=draw(st.integers(0, 5)) == 0,
                created=f"t{draw(st.integers(0, 3))}",
            )
        )
    alive = draw(st.sampled_from([None, frozenset({"n0", "n1", "app1"}), frozenset()]))
    return Snapshot(
        gateways=gws,
        policies=tuple(policies),
        namespaces=(*namespaces, ns("default")),
        nodes=(*nodes, gw_node("gx", "198.51.100.11")),
        pods=tuple(pods),
        appliances=(appliance("app1", "g1", "198.51.100.21"),),
        alive_members=alive,
        service_cidrs=(ipaddress.ip_network("100.100.0.0/16"),),
    )


def shuffled(s: Snapshot, seed: int) -> Snapshot:
    rnd = random.Random(seed)

    def sh(t: tuple) -> tuple:  # type: ignore[type-arg]
        lst = list(t)
        rnd.shuffle(lst)
        return tuple(lst)

    return replace(s, gateways=sh(s.gateways), policies=sh(s.policies), namespaces=sh(s.namespaces),
                   nodes=sh(s.nodes), pods=sh(s.pods), appliances=sh(s.appliances))


@PROPS
@given(snapshots(), st.integers(0, 2**32))
def test_resolution_is_deterministic_and_independent_of_input_order(s: Snapshot, seed: int) -> None:
    first = resolve(s)
    assert resolve(s) == first
    assert resolve(shuffled(s, seed)) == first
    assert resolve(shuffled(s, seed), previous=first) == resolve(s, previous=first)


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


@PROPS
@given(snapshots())
def test_destinations_per_pod_ip_are_disjoint(s: Snapshot) -> None:
    by_ip: dict[IPAddress, list[IPNetwork]] = {}
    for steering in resolve(s).steerings:
        assert steering.destinations
        assert all(d.version == steering.pod_ip.version for d in steering.destinations)
        by_ip.setdefault(steering.pod_ip, []).extend(steering.destinations)
    for nets in by_ip.values():
        for i, a in enumerate(nets):
            assert not any(_overlap(a, b) for b in nets[i + 1 :])


def _oracle(s: Snapshot, ready: dict[str, EgressPolicy], p: Pod, ip: IPAddress, dest: IPAddress) -> str | None:
    """Brute force: the policy whose best entry containing `dest` comes first in the documented order."""
    ns_labels = next((dict(n.labels) for n in s.namespaces if n.name == p.namespace), {})
    best: tuple[object, str] | None = None
    for ref, pol in ready.items():
        if ip_mismatch(pol, p.namespace, ns_labels, dict(p.labels), ip) is not None:
            continue
        for net in destinations(pol, ip.version):
            if dest in net:
                key = (entry_key(pol, net.prefixlen), ref)
                if best is None or key < best:
                    best = key
    return best[1] if best else None


@PROPS
@given(snapshots(), st.data())
def test_each_destination_goes_to_the_policy_the_documented_order_picks(s: Snapshot, data: st.DataObject) -> None:
    intent = resolve(s)
    families = {o.policy: o for o in intent.outcomes if o.state is PolicyState.READY}
    ready: dict[str, EgressPolicy] = {}
    for pol in s.policies:
        o = families.get(pol.ref)
        if o is not None:
            ready[str(pol.ref)] = pol
    probes = [ipaddress.ip_address(a) for a in ("198.51.100.1", "198.51.100.70", "198.51.100.200", "203.0.113.5",
                                                 "8.8.8.8", "100.64.1.1", "2001:db8:198:1::1", "2001:db8:198:2::1",
                                                 "2001:db8:ffff::1")]
    for p in s.pods:
        if ineligibility(p) is not None:
            continue
        for ip in p.ips:
            mine = [x for x in intent.steerings if x.pod_ip == ip]
            for dest in (d for d in probes if d.version == ip.version):
                steered = [x for x in mine if any(dest in n for n in x.destinations)]
                expected = _oracle(s, {
                    r: pol for r, pol in ready.items()
                    if families[pol.ref].use_node_ip or (families[pol.ref].eip_v4 if ip.version == 4
                                                         else families[pol.ref].eip_v6) is not None
                }, p, ip, dest)
                assert [str(x.policy) for x in steered] == ([expected] if expected else [])


@PROPS
@given(snapshots(), st.data())
def test_rr_allocation_is_sticky_when_policies_come_and_go(s: Snapshot, data: st.DataObject) -> None:
    first = resolve(s)
    keep = data.draw(st.lists(st.sampled_from(s.policies), unique=True)) if s.policies else []
    extra = policy("zz-new", "a", rr=True, created="t0", gateway="g1")
    second = resolve(replace(s, policies=(*keep, extra)), previous=first)
    before = {o.policy: o for o in first.outcomes}
    for o in second.outcomes:
        old = before.get(o.policy)
        if old is not None and old.state is PolicyState.READY and o.state is PolicyState.READY:
            assert (o.gateway, o.eip_v4, o.eip_v6) == (old.gateway, old.eip_v4, old.eip_v6)
    # each rr EIP index is used by one policy only
    rr_refs = {p.ref for p in (*keep, extra) if p.egress_ip.allocator_policy == "rr" and not p.egress_ip.use_node_ip}
    seen: set[tuple[str, IPAddress]] = set()
    for o in second.outcomes:
        if o.policy in rr_refs and o.state is PolicyState.READY:
            for eip in (o.eip_v4, o.eip_v6):
                if eip is not None:
                    assert (o.gateway, eip) not in seen
                    seen.add((o.gateway, eip))


@PROPS
@given(snapshots(), st.data())
def test_incremental_pod_events_equal_a_full_resolve(s: Snapshot, data: st.DataObject) -> None:
    base = resolve(s)
    new = pod(data.draw(st.sampled_from(NAMESPACES)), "fresh", "100.64.99.10", "2001:db8:64:99::10",
              lbl={"app": data.draw(st.sampled_from(APPS))}, node_name="n1")
    added = replace(s, pods=(*s.pods, new))
    assert pod_changed(s, base, None, new) == resolve(added, previous=base)
    if s.pods:
        old = data.draw(st.sampled_from(s.pods))
        changed = replace(old, labels=(("app", data.draw(st.sampled_from(APPS))),), ips=old.ips[:1])
        s2 = replace(s, pods=tuple(changed if p is old else p for p in s.pods))
        assert pod_changed(s2, base, old, changed) == resolve(s2, previous=base)
        s3 = replace(s, pods=tuple(p for p in s.pods if p is not old))
        assert pod_changed(s3, base, old, None) == resolve(s3, previous=base)
