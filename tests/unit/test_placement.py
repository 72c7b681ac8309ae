"""EIP placement: gateway members, rendezvous ranking properties, primaries, dual-stack pairs."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.model import Node
from appliance.policy.placement import (
    build_instance,
    endpoints_of,
    members_of,
    node_ip_member,
    partner,
    primary,
    rank,
)
from tests.unit.resolution_builders import appliance, gateway, ip, node

MEMBERS = st.lists(st.text("abcdefgh0123456789-", min_size=1, max_size=8), min_size=1, max_size=8, unique=True)
KEYS = st.lists(st.integers(0, 10_000).map(str), min_size=1, max_size=40, unique=True)


@settings(max_examples=100, deadline=None)
@given(MEMBERS, KEYS, st.randoms())
def test_ranking_is_a_deterministic_permutation_independent_of_input_order(members, keys, rnd) -> None:  # type: ignore[no-untyped-def]
    for key in keys:
        order = rank("gw", key, members)
        shuffled = list(members)
        rnd.shuffle(shuffled)
        assert order == rank("gw", key, shuffled)
        assert sorted(order) == sorted(members)


@settings(max_examples=100, deadline=None)
@given(MEMBERS, KEYS, st.data())
def test_removing_a_member_moves_only_the_eips_it_was_primary_for(members, keys, data) -> None:  # type: ignore[no-untyped-def]
    gone = data.draw(st.sampled_from(members))
    rest = [m for m in members if m != gone]
    for key in keys:
        before = rank("gw", key, members)
        after = rank("gw", key, rest)
        assert after == tuple(m for m in before if m != gone)  # everyone else keeps their relative order
        if before[0] != gone:
            assert after[0] == before[0]


@settings(max_examples=100, deadline=None)
@given(MEMBERS, KEYS, st.data())
def test_each_eip_has_exactly_one_primary_among_alive_members(members, keys, data) -> None:  # type: ignore[no-untyped-def]
    alive = frozenset(data.draw(st.lists(st.sampled_from(members), unique=True)))
    nodes = [Node(name=m, labels=(("role", "gateway"),), addresses=(ip(f"198.51.100.{i + 1}"),))
             for i, m in enumerate(members)]
    g = gateway("gw", v4=("203.0.113.128/25",))
    used = [g.ipv4_pool.nth(int(k) % 128) for k in keys]
    inst = build_instance(g, nodes=nodes, appliances=(), alive_members=alive, used_eips=used)
    assert set(inst.eips) == set(used)
    for eip in inst.eips:
        p = primary(inst, eip)
        if alive:
            assert p in alive
            assert next(m for m in inst.rank_of(eip) if m in alive) == p
        else:
            assert p is None


def test_primaries_spread_evenly() -> None:
    members = ["gw1", "gw2", "gw3", "gw4"]
    counts = Counter(rank("gw", str(i), members)[0] for i in range(256))
    assert set(counts) == set(members)
    assert all(40 <= c <= 90 for c in counts.values()), counts


def test_dual_stack_pair_shares_ranking_and_partners_are_at_the_same_index() -> None:
    g = gateway("gw", v4=("203.0.113.128/30",), v6=("2001:db8:e1::/126", "2001:db8:e1::100"))
    assert partner(g, ip("203.0.113.130")) == ip("2001:db8:e1::2")
    assert partner(g, ip("2001:db8:e1::100")) is None  # index 4: the IPv4 pool has 4 addresses
    assert endpoints_of(g, ip("2001:db8:e1::1")) == (ip("203.0.113.129"), ip("2001:db8:e1::1"))
    nodes = [node(f"gw{i}", f"198.51.100.{i}", lbl={"role": "gateway"}) for i in range(1, 6)]
    inst = build_instance(g, nodes=nodes, appliances=(), alive_members=None, used_eips=[ip("2001:db8:e1::1")])
    assert inst.eips == (ip("203.0.113.129"), ip("2001:db8:e1::1"))
    assert inst.rank_of(ip("203.0.113.129")) == inst.rank_of(ip("2001:db8:e1::1"))
    assert inst.alive == frozenset(f"gw{i}" for i in range(1, 6))


def test_members_from_node_selector_and_appliances() -> None:
    g = gateway("gw")
    nodes = [
        node("gw1", "2001:db8:198::11", "198.51.100.11", lbl={"role": "gateway"}),  # IPv4 preferred
        node("gw6", "2001:db8:198::16", lbl={"role": "gateway"}),  # IPv6-only node
        node("noaddr", lbl={"role": "gateway"}),  # no InternalIP: cannot be a tunnel endpoint
        node("w1", "100.127.0.11"),
    ]
    apps = [appliance("gw1", "gw", "198.51.100.99"), appliance("ext", "gw", "198.51.100.21"),
            appliance("elsewhere", "other", "198.51.100.22")]
    members = members_of(g, nodes, apps)
    assert [(m.name, str(m.address)) for m in members] == [
        ("ext", "198.51.100.21"), ("gw1", "198.51.100.11"), ("gw6", "2001:db8:198::16")]
    no_nodes = members_of(gateway("gw", selector={}), nodes, ())
    assert len(no_nodes) == 3  # an empty selector matches every node with an address


def test_node_ip_member_skips_dead_members() -> None:
    g = gateway("gw")
    nodes = [node(f"gw{i}", f"198.51.100.{i}", lbl={"role": "gateway"}) for i in range(1, 4)]
    order = rank("gw", "EgressPolicy/default/p", ["gw1", "gw2", "gw3"])
    inst = build_instance(g, nodes=nodes, appliances=(), alive_members=frozenset(order[1:]), used_eips=())
    m = node_ip_member(inst, "EgressPolicy/default/p")
    assert m is not None and m.name == order[1]
    none_alive = build_instance(g, nodes=nodes, appliances=(), alive_members=frozenset(), used_eips=())
    assert node_ip_member(none_alive, "EgressPolicy/default/p") is None


def test_wireguard_instance_ranks_every_eip_and_use_node_ip_alike() -> None:
    from dataclasses import replace

    from appliance.core.model import TunnelSpec, TunnelType

    g = replace(gateway("gw", v4=("203.0.113.128/28",)), tunnel=TunnelSpec(type=TunnelType.WIREGUARD))
    nodes = [node(f"gw{i}", f"198.51.100.{i}", lbl={"role": "gateway"}) for i in range(1, 6)]
    used = [g.ipv4_pool.nth(i) for i in range(16)]
    inst = build_instance(g, nodes=nodes, appliances=(), alive_members=None, used_eips=used)
    assert len({order for _, order in inst.ranking}) == 1
    m = node_ip_member(inst, "EgressPolicy/default/p")
    assert m is not None and m.name == primary(inst, used[0])
