"""Announcement planner: preference from the ranking, pools, families, modes; Hypothesis: one best member per EIP."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.intent import GatewayInstance
from appliance.core.model import BgpSpec, EgressGateway, IPAddress, IPPool, IPRange, Member
from bgp.announcing import (
    Announcement,
    MemberMode,
    SkipReason,
    announcements_for,
    plan_announcements,
    preference,
)
from bgp.settings import BgpSettings, PreferenceMode, parse_bgp_settings

POOL4 = IPPool(ranges=(IPRange(first=ip_address("203.0.113.128"), last=ip_address("203.0.113.255")),))
POOL6 = IPPool(ranges=(IPRange(first=ip_address("2001:db8:e1::"), last=ip_address("2001:db8:e1::ffff")),))
GW = EgressGateway(
    name="gw", ipv4_pool=POOL4, ipv6_pool=POOL6,
    bgp=BgpSpec(communities=("65000:2", "65000:1"), large_communities=("65000:1:1",)),
)  # fmt: skip
MEMBERS = tuple(Member(name=f"gw{i}", address=ip_address(f"198.51.100.{10 + i}")) for i in (1, 2, 3))


def make_settings(**over: Any) -> BgpSettings:
    raw: dict[str, Any] = {
        "local_asn": 64513,
        "router_id": "198.51.100.11",
        "peers": [{"address": "198.51.100.1", "asn": 64512}, {"address": "2001:db8:198::1", "asn": 64512}],
    }
    raw.update(over)
    return parse_bgp_settings(raw)


SETTINGS = make_settings()


def instance(eips: dict[str, tuple[str, ...]], members: tuple[Member, ...] = MEMBERS) -> GatewayInstance:
    ips = {ip_address(k): v for k, v in eips.items()}
    return GatewayInstance(
        name="gw",
        members=members,
        eips=tuple(sorted(ips, key=lambda a: (a.version, a))),
        ranking=tuple(sorted(ips.items(), key=lambda kv: (kv[0].version, kv[0]))),
    )


def plan(me: str, inst: GatewayInstance, *, healthy: bool = True, draining: bool = False, hold: bool = False,
         s: BgpSettings = SETTINGS) -> dict[str, Announcement]:  # fmt: skip
    anns = announcements_for(instances=[inst], gateways={"gw": GW}, me=me, healthy=healthy, draining=draining,
                             in_hold_down=hold, settings=s)  # fmt: skip
    return {str(a.eip): a for a in anns}


INST = instance({"203.0.113.130": ("gw1", "gw2", "gw3"), "203.0.113.131": ("gw2", "gw3", "gw1"),
                 "2001:db8:e1::130": ("gw3", "gw1", "gw2")})  # fmt: skip


def test_med_from_ranking_position() -> None:
    got = plan("gw1", INST)
    assert {k: a.med for k, a in got.items()} == {"203.0.113.130": 100, "203.0.113.131": 120, "2001:db8:e1::130": 110}
    assert all(a.as_path_prepends == 0 for a in got.values())
    a = got["203.0.113.130"]
    assert a.prefix == ip_network("203.0.113.130/32")
    assert a.communities == ("65000:1", "65000:2") and a.large_communities == ("65000:1:1",)
    assert got["2001:db8:e1::130"].prefix == ip_network("2001:db8:e1::130/128")


def test_prepend_mode_and_both() -> None:
    s = make_settings(preference={"mode": "as-path-prepend", "max_prepends": 1})
    got = plan("gw1", INST, s=s)
    assert {k: (a.med, a.as_path_prepends) for k, a in got.items()} == {
        "203.0.113.130": (None, 0), "203.0.113.131": (None, 1), "2001:db8:e1::130": (None, 1)}  # fmt: skip
    both = plan("gw1", INST, s=make_settings(preference={"mode": "both"}))
    assert (both["203.0.113.131"].med, both["203.0.113.131"].as_path_prepends) == (120, 2)


def test_hold_down_announces_worst_preference_but_keeps_order() -> None:
    got = plan("gw1", INST, hold=True)
    worst = SETTINGS.preference.worst_med
    assert {k: a.med for k, a in got.items()} == {"203.0.113.130": worst, "203.0.113.131": worst + 20,
                                                  "2001:db8:e1::130": worst + 10}  # fmt: skip
    ranked = plan("gw3", INST)
    assert max(a.med or 0 for a in ranked.values()) < worst


def test_unhealthy_withdraws_or_deprefers() -> None:
    assert plan("gw1", INST, healthy=False) == {}
    soft = plan("gw1", INST, healthy=False, s=make_settings(withdraw_on_unhealthy=False))
    assert set(soft) == {"203.0.113.130", "203.0.113.131", "2001:db8:e1::130"}
    assert all((a.med or 0) >= SETTINGS.preference.worst_med for a in soft.values())


def test_draining_withdraws_everything_even_when_deprefer_is_configured() -> None:
    assert plan("gw1", INST, draining=True) == {}
    assert plan("gw1", INST, draining=True, s=make_settings(withdraw_on_unhealthy=False)) == {}


def test_skips_with_reasons() -> None:
    inst = instance({"203.0.113.5": ("gw1",), "203.0.113.130": ("gw1",), "2001:db8:e1::1": ("gw1",)})
    v4_only = make_settings(families=["ipv4-unicast"], peers=[{"address": "198.51.100.1", "asn": 64512}])
    p = plan_announcements(instances=[inst], gateways={"gw": GW}, me="gw1", healthy=True, draining=False,
                           in_hold_down=False, settings=v4_only)  # fmt: skip
    assert {str(a.eip) for a in p.announcements} == {"203.0.113.130"}
    assert {(str(ip), r) for _, ip, r in p.skipped} == {("203.0.113.5", SkipReason.NOT_IN_POOL),
                                                         ("2001:db8:e1::1", SkipReason.FAMILY_DISABLED)}  # fmt: skip
    assert p.mode is MemberMode.RANKED
    other = plan_announcements(instances=[inst], gateways={"gw": GW}, me="gw9", healthy=True, draining=False,
                               in_hold_down=False, settings=SETTINGS)  # fmt: skip
    assert not other.announcements and {r for *_, r in other.skipped} == {SkipReason.NOT_A_MEMBER}
    nogw = plan_announcements(instances=[inst], gateways={}, me="gw1", healthy=True, draining=False,
                              in_hold_down=False, settings=SETTINGS)  # fmt: skip
    assert {r for *_, r in nogw.skipped} == {SkipReason.NO_GATEWAY_SPEC}


def test_member_missing_from_ranking_is_ranked_last() -> None:
    inst = instance({"203.0.113.130": ("gw2", "gw3")})
    assert plan("gw1", inst)["203.0.113.130"].med == 100 + 10 * 3


def test_preference_helper_clamps_prepends() -> None:
    pref = make_settings(preference={"mode": "as-path-prepend", "max_prepends": 2}).preference
    assert [preference(i, worst=False, pref=pref)[1] for i in range(5)] == [0, 1, 2, 2, 2]
    assert preference(0, worst=True, pref=pref) == (None, 3)


# ----- properties -----

ADDRS4 = [IPv4Address(int(IPv4Address("203.0.113.128")) + i) for i in range(16)]
ADDRS6 = [IPv6Address(int(IPv6Address("2001:db8:e1::")) + i) for i in range(16)]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[GatewayInstance, dict[str, bool], dict[str, bool], PreferenceMode]:
    n = draw(st.integers(1, 5))
    members = tuple(Member(name=f"m{i}", address=ip_address(f"198.51.100.{20 + i}")) for i in range(n))
    eips: list[IPAddress] = draw(st.lists(st.sampled_from(ADDRS4 + ADDRS6), min_size=1, max_size=6, unique=True))
    ranking = {e: tuple(draw(st.permutations([m.name for m in members]))) for e in eips}
    healthy = {m.name: draw(st.booleans()) for m in members}
    hold = {m.name: draw(st.booleans()) for m in members}
    mode = draw(st.sampled_from([PreferenceMode.MED, PreferenceMode.BOTH]))
    inst = GatewayInstance(name="gw", members=members, eips=tuple(sorted(eips, key=lambda a: (a.version, a))),
                           ranking=tuple(sorted(ranking.items(), key=lambda kv: (kv[0].version, kv[0]))))  # fmt: skip
    return inst, healthy, hold, mode


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_exactly_one_best_member_per_eip_while_any_is_healthy(
    sc: tuple[GatewayInstance, dict[str, bool], dict[str, bool], PreferenceMode],
) -> None:
    inst, healthy, hold, mode = sc
    s = make_settings(preference={"mode": str(mode)})
    by_prefix: dict[Any, list[tuple[int, int, str]]] = {}
    for m in inst.members:
        for a in announcements_for(instances=[inst], gateways={"gw": GW}, me=m.name, healthy=healthy[m.name],
                                   draining=False, in_hold_down=hold[m.name], settings=s):  # fmt: skip
            by_prefix.setdefault(a.prefix, []).append((a.as_path_prepends, a.med or 0, m.name))
    for eip in inst.eips:
        paths = by_prefix.get(ip_network(f"{eip}/{eip.max_prefixlen}"), [])
        if not any(healthy.values()):
            assert paths == []
            continue
        assert len(paths) == sum(healthy.values())
        best = min(p[:2] for p in paths)
        winners = [p[2] for p in paths if p[:2] == best]
        assert len(winners) == 1
        # the winner is the best-ranked healthy member not in hold-down, if there is one
        order = [n for n in inst.rank_of(eip) if healthy[n]]
        active = [n for n in order if not hold[n]]
        assert winners[0] == (active[0] if active else order[0])


@settings(max_examples=50, deadline=None)
@given(scenarios(), st.randoms())
def test_plan_is_independent_of_instance_order(
    sc: tuple[GatewayInstance, dict[str, bool], dict[str, bool], PreferenceMode], rnd: Any
) -> None:
    inst, *_ = sc
    other = GatewayInstance(name="other", members=inst.members, eips=(ip_address("203.0.113.200"),),
                            ranking=((ip_address("203.0.113.200"), tuple(m.name for m in inst.members)),))  # fmt: skip
    gws = {"gw": GW, "other": EgressGateway(name="other", ipv4_pool=POOL4)}
    insts = [inst, other]
    a = plan_announcements(instances=insts, gateways=gws, me="m0", healthy=True, draining=False,
                           in_hold_down=False, settings=SETTINGS)  # fmt: skip
    rnd.shuffle(insts)
    b = plan_announcements(instances=insts, gateways=gws, me="m0", healthy=True, draining=False,
                           in_hold_down=False, settings=SETTINGS)  # fmt: skip
    assert a == b


def test_pools_and_communities_from_the_instance_when_no_gateways_are_given() -> None:
    from dataclasses import replace

    inst = replace(instance({"203.0.113.130": ("gw1",), "203.0.113.5": ("gw1",)}), ipv4_pool=POOL4, bgp=GW.bgp)
    p = plan_announcements(instances=[inst], me="gw1", healthy=True, draining=False, in_hold_down=False,
                           settings=SETTINGS)  # fmt: skip
    assert {str(a.eip): a.communities for a in p.announcements} == {"203.0.113.130": ("65000:1", "65000:2")}
    assert [(str(ip), r) for _, ip, r in p.skipped] == [("203.0.113.5", SkipReason.NOT_IN_POOL)]
