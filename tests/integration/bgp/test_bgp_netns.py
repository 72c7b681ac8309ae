"""BGP against real routers (BIRD 2 and FRR) in namespaces: sessions, pool filter, preference, failover, BFD, drain.

Each test builds its own tiny testbed (router + 2 gateways + client, prefix `egt-bg-`). Timing figures (failover,
BFD detection) are printed for the report, never asserted: the tests assert behaviour ("the route moved", "the
router says BFD closed the session") and wait on conditions with generous bounds.
"""

from __future__ import annotations

import os
import signal
from ipaddress import ip_network

import pytest

from appliance.core.intent import GatewayInstance
from appliance.core.model import IPPool, IPRange, Member
from appliance.core.waiting import elapsed_until, wait_until
from bgp.announcing import Announcement, announcements_for
from bgp.draining import drain_announcements
from bgp.settings import DrainSettings
from lab.testbeds.bgp import Bed, gateway_settings, gw_v4, gw_v6, sh

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

EIP4 = "203.0.113.130/32"
EIP6 = "2001:db8:e1::130/128"
OUTSIDE = "203.0.113.5/32"


def anns(med: int, *prefixes: str) -> frozenset[Announcement]:
    return frozenset(Announcement(prefix=ip_network(p), med=med) for p in prefixes)


def test_session_announce_filter_withdraw(bed: Bed) -> None:
    gw = bed.gateway(1)
    tagged = Announcement(prefix=ip_network(EIP4), med=100, communities=("65000:7",),
                          large_communities=("65000:1:2",))  # fmt: skip
    gw.speaker.set_announcements(anns(100, EIP6, OUTSIDE) | {tagged})
    assert gw.speaker.wait_peers("up", 20), gw.speaker.peer_states()
    assert gw.speaker.wait_converged(30)
    assert elapsed_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(1))], timeout=30) is not None
    assert elapsed_until(lambda: bed.tb.router_route(EIP6) == [str(gw_v6(1))], timeout=30) is not None
    # the gateway spec's communities arrive at the router
    cmd = f"show route {EIP4} all" if bed.tb.router == "bird" else f"show bgp ipv4 unicast {EIP4}"
    detail = bed.tb.router_cli(cmd)
    assert ("(65000,7)" in detail and "(65000, 1, 2)" in detail) if bed.tb.router == "bird" else (
        "65000:7" in detail and "65000:1:2" in detail), detail  # fmt: skip
    # the router's import filter rejects what is outside the EIP pools
    assert bed.tb.router_route(OUTSIDE) == []
    # the gateway imports nothing: the router exports nothing and ExaBGP installs nothing
    gw_routes = sh("ip", "-n", bed.tb.gw_ns(1), "route", "show", "table", "all").stdout
    assert "203.0.113" not in gw_routes and "2001:db8:e1" not in gw_routes
    if bed.tb.router == "bird":
        assert "203.0.113" not in bed.tb.router_cli("show route export gw1_v4")
    else:
        assert "203.0.113" not in bed.tb.router_cli(f"show bgp ipv4 unicast neighbors {gw_v4(1)} advertised-routes")
    # BFD is up on both sides
    assert elapsed_until(lambda: set(gw.bfd.peer_states().values()) == {"Up"}, timeout=30), gw.bfd.peer_states()
    router_bfd = bed.tb.router_cli("show bfd sessions" if bed.tb.router == "bird" else "show bfd peers brief")
    assert any(str(gw_v4(1)) in line and ("Up" in line or " up" in line) for line in router_bfd.splitlines())
    # withdrawal removes the routes
    gw.speaker.set_announcements(frozenset())
    assert gw.speaker.wait_converged(30)
    assert elapsed_until(lambda: not bed.tb.router_route(EIP4) and not bed.tb.router_route(EIP6),
                         timeout=30) is not None


def _two_gateways(bed: Bed, *, bfd: bool = True) -> None:
    g1, g2 = bed.gateway(1, bfd=bfd), bed.gateway(2, bfd=bfd)
    g1.speaker.set_announcements(anns(100, EIP4, EIP6))
    g2.speaker.set_announcements(anns(110, EIP4, EIP6))
    for g in (g1, g2):
        assert g.speaker.wait_peers("up", 20), g.speaker.peer_states()
        assert g.speaker.wait_converged(30)
    assert elapsed_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(1))], timeout=30) is not None
    assert elapsed_until(lambda: bed.tb.router_route(EIP6) == [str(gw_v6(1))], timeout=30) is not None
    # both paths are held by the router: the backup is there before anything fails
    cmd = f"show route {EIP4} all" if bed.tb.router == "bird" else f"show bgp ipv4 unicast {EIP4}"
    assert elapsed_until(lambda: all(str(gw_v4(i)) in bed.tb.router_cli(cmd) for i in (1, 2)), timeout=30) is not None


def test_better_preference_wins_and_exabgp_kill_fails_over_and_back(bed: Bed) -> None:
    _two_gateways(bed)
    g1 = bed.gateways[0]
    pid = g1.speaker.exabgp_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    moved = elapsed_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(2))], timeout=5, interval=0.005)
    assert moved is not None
    print(f"\n[{bed.tb.router}] ExaBGP SIGKILL -> router moved {EIP4} to gw2 in {moved * 1000:.0f} ms")
    # the speaker respawns ExaBGP and resends everything: gw1 takes the primary back
    assert elapsed_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(1))], timeout=20) is not None
    assert elapsed_until(lambda: bed.tb.router_route(EIP6) == [str(gw_v6(1))], timeout=30) is not None
    assert g1.speaker.restarts >= 1


def _router_down_reason(bed: Bed, i: int) -> str:
    """Why the router last took down its IPv4 session with gateway i, in the router's own words."""
    if bed.tb.router == "bird":
        return bed.tb.router_cli(f"show protocols all gw{i}_v4")
    return bed.tb.router_cli(f"show bgp neighbors {gw_v4(i)} json")


def test_bfd_detects_a_cut_link(bed: Bed) -> None:
    """Proves: a cut link (the router keeps carrier) is noticed by BFD, not by the BGP hold timer - the router names
    BFD as the reason it closed the session - and the router then moves both EIPs to the backup."""
    _two_gateways(bed)
    g1 = bed.gateways[0]
    assert elapsed_until(lambda: set(g1.bfd.peer_states().values()) == {"Up"}, timeout=30), g1.bfd.peer_states()
    bed.tb.cut(1)
    moved = elapsed_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(2))], timeout=30, interval=0.005)
    assert moved is not None
    print(f"\n[{bed.tb.router}] link cut -> router moved {EIP4} to gw2 in {moved * 1000:.0f} ms (BFD 50 ms x 3)")
    # BIRD: "BFD session down" (a hold timer expiry reads "Hold timer expired"); FRR: the NOTIFICATION it sent,
    # lastNotificationReason "Cease/BFD Down" (060A; a hold timer expiry is 0400 "Hold Timer Expired")
    reason = "BFD session down" if bed.tb.router == "bird" else "BFD Down"
    wait_until(lambda: reason in _router_down_reason(bed, 1), timeout=30,
               what="the router to name BFD as the reason it closed gw1's session",
               describe=lambda: _router_down_reason(bed, 1))
    assert elapsed_until(lambda: bed.tb.router_route(EIP6) == [str(gw_v6(2))], timeout=30) is not None


def test_drain_moves_traffic_before_the_session_closes(bed: Bed) -> None:
    _two_gateways(bed)
    g1 = bed.gateways[0]
    result = drain_announcements(g1.speaker, DrainSettings(timeout_s=5.0, settle_s=0.3))
    assert result.acknowledged
    # the router moves to gw2 while gw1's sessions stay up (checked after the move: make before break)
    wait_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(2))] and bed.tb.router_route(EIP6) == [str(gw_v6(2))],
               timeout=30, what="the router's kernel routes via gw2",
               describe=lambda: (bed.tb.router_route(EIP4), bed.tb.router_route(EIP6)))
    assert set(g1.speaker.peer_states().values()) == {"up"}
    print(f"\n[{bed.tb.router}] drain: acks after {result.ack_wait_s * 1000:.0f} ms, then settle {result.settle_s} s")


def test_bfd_sidecar_is_respawned_and_the_route_comes_back(bed: Bed) -> None:
    gw = bed.gateway(1)
    gw.speaker.set_announcements(anns(100, EIP4))
    assert gw.speaker.wait_peers("up", 20)
    assert elapsed_until(lambda: set(gw.bfd.peer_states().values()) == {"Up"}, timeout=30), gw.bfd.peer_states()
    pid = gw.bfd.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # the router notices the BFD loss (and may drop the session); the supervisor respawns BIRD and all recovers
    assert elapsed_until(lambda: gw.bfd.restarts >= 1, timeout=30) is not None
    assert elapsed_until(lambda: set(gw.bfd.peer_states().values()) == {"Up"}, timeout=30), gw.bfd.peer_states()
    assert elapsed_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(1))], timeout=30) is not None


def test_router_restart_sessions_and_routes_recover(bed: Bed) -> None:
    gw = bed.gateway(1)
    gw.speaker.set_announcements(anns(100, EIP4, EIP6))
    assert gw.speaker.wait_peers("up", 20)
    assert elapsed_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(1))], timeout=30) is not None
    bed.tb.stop_router()
    assert elapsed_until(lambda: set(gw.speaker.peer_states().values()) == {"down"},
                         timeout=30), gw.speaker.peer_states()
    bed.tb.start_router()
    # ExaBGP 5 resets its reconnect back-off after a good session, so it re-peers within seconds
    back = elapsed_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(1))] and bed.tb.router_route(EIP6) == [
        str(gw_v6(1))], timeout=20)  # fmt: skip
    assert back is not None
    print(f"\n[{bed.tb.router}] router restart -> routes back after {back:.1f} s")


def test_tcp_md5_session(md5_bed: Bed) -> None:
    good = md5_bed.gateway(1, md5="egt-s3cret", bfd=False)
    bad = md5_bed.gateway(2, md5="wrong", bfd=False)
    good.speaker.set_announcements(anns(100, EIP4))
    bad.speaker.set_announcements(anns(90, EIP4))
    assert good.speaker.wait_peers("up", 20), good.speaker.peer_states()
    assert elapsed_until(lambda: md5_bed.tb.router_route(EIP4) == [str(gw_v4(1))], timeout=30) is not None
    # a wrong password never gets a session (the better MED of gw2 never wins)
    assert not bad.speaker.wait_peers("up", 3)
    assert md5_bed.tb.router_route(EIP4) == [str(gw_v4(1))]


def test_returning_member_in_hold_down_does_not_take_the_primary(bed: Bed) -> None:
    """The planner's worst preference (hold-down) really ranks below a ranked backup on BIRD and FRR."""
    eip = ip_network(EIP4).network_address
    inst = GatewayInstance(
        name="gw", members=(Member(name="gw1", address=gw_v4(1)), Member(name="gw2", address=gw_v4(2))),
        eips=(eip,), ranking=((eip, ("gw1", "gw2")),),
        ipv4_pool=IPPool(ranges=(IPRange(first=ip_network("203.0.113.128/25")[0],
                                         last=ip_network("203.0.113.128/25")[-1]),)),
    )  # fmt: skip

    def plan(me: str, hold: bool) -> frozenset[Announcement]:
        return announcements_for(instances=[inst], me=me, healthy=True, draining=False, in_hold_down=hold,
                                 settings=gateway_settings(1))  # fmt: skip

    g1, g2 = bed.gateway(1), bed.gateway(2)
    g2.speaker.set_announcements(plan("gw2", hold=False))
    g1.speaker.set_announcements(plan("gw1", hold=True))  # gw1 just came back: hold-down
    for g in (g1, g2):
        assert g.speaker.wait_peers("up", 60) and g.speaker.wait_converged(30)
    cmd = f"show route {EIP4} all" if bed.tb.router == "bird" else f"show bgp ipv4 unicast {EIP4}"
    wait_until(lambda: all(str(gw_v4(i)) in bed.tb.router_cli(cmd) for i in (1, 2)), timeout=30,
               what="both paths in the router's RIB", describe=lambda: bed.tb.router_cli(cmd))
    # the RIB holding both paths says nothing about the kernel yet (FRR: bgpd runs best path, then zebra installs
    # it): wait for the kernel route to be the ranked backup's
    wait_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(2))], timeout=30,
               what="the router's kernel route via the ranked backup gw2",
               describe=lambda: (bed.tb.router_route(EIP4), bed.tb.router_cli(cmd)))
    g1.speaker.set_announcements(plan("gw1", hold=False))  # hold-down over: gw1 takes its primary back
    wait_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(1))], timeout=30,
               what="the router's kernel route back via gw1", describe=lambda: bed.tb.router_route(EIP4))
