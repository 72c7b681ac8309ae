"""Stale members step back, with real routers (BIRD 2 and FRR), real ExaBGP and the real member heartbeat (UDP
between the gateway namespaces).

Two members of one instance, gw1 primary (MED 100), gw2 backup (MED 110). gw1's cluster view goes stale (its age is
the test's knob here; `Store.view_age` is unit-tested and checked against the API server elsewhere): gw1 learns from
gw2's heartbeat that gw2's view is fresh, steps back (stale preference) and the router moves the EIP to gw2. When
gw2's view goes stale too (the API server away for everyone), nobody steps back and gw1 is primary again; when gw1 is
fresh again it keeps its primary.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import ip_network

import pytest

from appliance.core.intent import GatewayInstance
from appliance.core.model import IPPool, IPRange, Member
from appliance.core.waiting import wait_until
from bgp.announcing import announcements_for
from bgp.heartbeat import MemberHeartbeat
from bgp.settings import StaleViewSettings
from lab.testbeds.bgp import Bed, gateway_settings, gw_v4, udp_socket_in

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

EIP4 = "203.0.113.130/32"
POOL = ip_network("203.0.113.128/25")
STALE = StaleViewSettings(grace_s=2.0, interval_s=0.2, peer_timeout_s=1.0, port=4790, secret="egt-heartbeat")


def test_a_stale_member_steps_back_unless_every_member_is_stale(bed: Bed) -> None:
    eip = POOL[2]
    inst = GatewayInstance(
        name="gw", members=(Member(name="gw1", address=gw_v4(1)), Member(name="gw2", address=gw_v4(2))),
        eips=(eip,), ranking=((eip, ("gw1", "gw2")),),
        ipv4_pool=IPPool(ranges=(IPRange(first=POOL[0], last=POOL[-1]),)),
    )  # fmt: skip
    ages = {"gw1": 0.0, "gw2": 0.0}
    gws = {name: bed.gateway(i) for i, name in ((1, "gw1"), (2, "gw2"))}
    beats: dict[str, MemberHeartbeat] = {}
    for i, name in ((1, "gw1"), (2, "gw2")):
        ns = bed.tb.gw_ns(i)

        def factory(family: int, ns: str = ns) -> socket.socket:
            return udp_socket_in(ns, family, STALE.port)

        age: Callable[[], float] = lambda name=name: ages[name]  # noqa: E731
        beats[name] = MemberHeartbeat(me=name, settings=STALE, view_age=age, socket_factory=factory)
        beats[name].set_instances([inst])
        beats[name].start()

    def converge() -> None:
        """What the gateway service does on each health tick: plan with the heartbeat's answer, hand it over."""
        for name, gw in gws.items():
            gw.speaker.set_announcements(announcements_for(
                instances=[inst], me=name, healthy=True, draining=False, in_hold_down=False,
                settings=gateway_settings(1), stepped_back=beats[name].stepped_back()))  # fmt: skip

    def primary_is(i: int) -> bool:
        converge()
        return bed.tb.router_route(EIP4) == [str(gw_v4(i))]

    try:
        for gw in gws.values():
            assert gw.speaker.wait_peers("up", 30), gw.speaker.peer_states()
        wait_until(lambda: primary_is(1), timeout=30, what="gw1 primary while every view is fresh")
        # the heartbeats arrive: each member sees the other's (fresh) view
        wait_until(lambda: all(a is not None for b in beats.values() for a in b.peer_ages().values()), timeout=10,
                   what="heartbeats heard both ways", describe=lambda: {n: b.peer_ages() for n, b in beats.items()})
        ages["gw1"] = 60.0  # gw1 lost the API server a minute ago
        wait_until(lambda: primary_is(2), timeout=30, what="gw1 to step back: the EIP via gw2",
                   describe=lambda: (beats["gw1"].stepped_back(), beats["gw1"].peer_ages(), bed.tb.router_route(EIP4)))
        assert beats["gw1"].stepped_back() == {"gw"} and beats["gw2"].stepped_back() == frozenset()
        ages["gw2"] = 30.0  # now the API server is away for everyone: nobody steps back, gw1 is primary again
        wait_until(lambda: primary_is(1), timeout=30, what="every member stale: gw1 primary again",
                   describe=lambda: (beats["gw1"].stepped_back(), beats["gw1"].peer_ages(), bed.tb.router_route(EIP4)))
        ages["gw2"] = 0.0  # gw2 reconnects first: gw1 steps back again
        wait_until(lambda: primary_is(2), timeout=30, what="gw1 to step back again")
        ages["gw1"] = 0.0  # and gw1 is fresh again: it takes its primary back
        wait_until(lambda: primary_is(1), timeout=30, what="gw1 fresh again: primary again")
        # every heartbeat carried a valid MAC and came from its member's address
        assert all(b.rejected == 0 and b.sent > 0 for b in beats.values())
    finally:
        for b in beats.values():
            b.stop()
