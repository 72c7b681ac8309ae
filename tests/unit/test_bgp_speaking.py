"""The sans-I/O announcer: commands from desired vs acknowledged, acks, neighbor events, resend, timeouts."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.announcing import Announcement
from bgp.settings import parse_bgp_settings
from bgp.speaking import (
    AckTimeout,
    Announcer,
    CommandFailed,
    ExabgpShutdown,
    PeerChanged,
    PeerState,
    render_announce,
)

SETTINGS = parse_bgp_settings({
    "local_asn": 64513, "router_id": "198.51.100.11",
    "peers": [{"address": "198.51.100.1", "asn": 64512}, {"address": "2001:db8:198::1", "asn": 64512}],
})  # fmt: skip
P4, P6 = "198.51.100.1", "2001:db8:198::1"
A = Announcement(prefix=ip_network("203.0.113.130/32"), med=100)
A2 = Announcement(prefix=ip_network("203.0.113.130/32"), med=110)
B = Announcement(prefix=ip_network("203.0.113.131/32"), med=120, as_path_prepends=2, communities=("65000:1",),
                 large_communities=("65000:1:2",))  # fmt: skip
C = Announcement(prefix=ip_network("2001:db8:e1::130/128"), med=100)


def fresh() -> Announcer:
    ann = Announcer(peers=SETTINGS.peers, local_asn=64513, ack_timeout_s=5.0, retry_s=1.0)
    ann.channel_up()
    return ann


def ack_all(ann: Announcer, n: int, now: float = 0.0) -> None:
    for _ in range(n):
        ann.receive("done", now=now)


def test_render_announce_syntax() -> None:
    (p4, _) = SETTINGS.peers
    assert render_announce(p4, B, local_asn=64513) == (
        "neighbor 198.51.100.1 announce route 203.0.113.131/32 next-hop self med 120 "
        "as-path [ 64513 64513 64513 ] community [ 65000:1 ] large-community [ 65000:1:2 ]"
    )


def test_announce_per_peer_of_the_family_then_converge_on_acks() -> None:
    ann = fresh()
    ann.set_desired({A, C})
    cmds, _ = ann.poll(now=0.0)
    assert cmds == [
        f"neighbor {P4} announce route 203.0.113.130/32 next-hop self med 100",
        f"neighbor {P6} announce route 2001:db8:e1::130/128 next-hop self med 100",
    ]
    assert ann.poll(now=0.1) == ([], [])  # in flight: nothing resent
    assert not ann.converged() and ann.acknowledged() == frozenset()
    ann.receive("done", now=0.2)
    assert ann.acknowledged() == {A} and not ann.converged()
    ann.receive("done", now=0.2)
    assert ann.acknowledged() == {A, C} and ann.converged()
    assert ann.poll(now=1.0) == ([], [])


def test_attribute_change_reannounces_and_removal_withdraws_first() -> None:
    ann = fresh()
    ann.set_desired({A, B})
    cmds, _ = ann.poll(now=0)
    ack_all(ann, len(cmds))
    ann.set_desired({A2})
    cmds, _ = ann.poll(now=1)
    assert cmds == [
        f"neighbor {P4} withdraw route 203.0.113.131/32",
        f"neighbor {P4} announce route 203.0.113.130/32 next-hop self med 110",
    ]
    ack_all(ann, 2)
    assert ann.converged() and ann.acknowledged() == {A2}


def test_error_on_announce_is_retried_after_retry_s() -> None:
    ann = fresh()
    ann.set_desired({A})
    ann.poll(now=0)
    events = ann.receive("error", now=0.1)
    assert events == [CommandFailed(command=f"neighbor {P4} announce route 203.0.113.130/32 next-hop self med 100")]
    assert ann.poll(now=0.5) == ([], [])
    cmds, _ = ann.poll(now=1.0)
    assert len(cmds) == 1
    ann.receive("done", now=1.1)
    assert ann.converged()


def test_error_on_withdraw_counts_as_withdrawn() -> None:
    ann = fresh()
    ann.set_desired({A})
    ann.poll(now=0)
    ann.receive("done", now=0)
    ann.set_desired(set())
    ann.poll(now=1)
    ann.receive("error", now=1)
    assert ann.converged() and ann.acknowledged() == frozenset()


def test_neighbor_events_and_resend_on_session_up() -> None:
    ann = fresh()
    ann.set_desired({A, C})
    ack_all(ann, len(ann.poll(now=0)[0]))
    assert ann.peer_states() == {P4: "unknown", P6: "unknown"}
    assert ann.receive(f"neighbor {P4} connected", now=1) == [PeerChanged(peer=ip_address(P4),
                                                                          state=PeerState.CONNECTED)]  # fmt: skip
    ev = ann.receive(f"neighbor {P4} down - peer reset, message [closing connection]", now=2)
    assert ev == [PeerChanged(peer=ip_address(P4), state=PeerState.DOWN,
                              reason="peer reset, message [closing connection]")]  # fmt: skip
    assert ann.poll(now=2) == ([], [])  # down: ExaBGP keeps its RIB, nothing to do yet
    ann.receive(f"neighbor {P4} up", now=3)
    assert ann.peer_states() == {P4: "up", P6: "unknown"}
    cmds, _ = ann.poll(now=3)
    assert cmds == [f"neighbor {P4} announce route 203.0.113.130/32 next-hop self med 100"]
    ann.receive("done", now=3)
    assert ann.converged()


def test_unknown_lines_and_peers_are_ignored() -> None:
    ann = fresh()
    assert ann.receive("neighbor 192.0.2.99 up", now=0) == []
    assert ann.receive("neighbor not-an-ip up", now=0) == []
    assert ann.receive("something else", now=0) == []
    assert ann.receive("done", now=0) == []  # stray ack with nothing in flight


def test_new_channel_resends_everything_and_withdraws_leftovers() -> None:
    ann = fresh()
    ann.set_desired({A, B})
    ack_all(ann, len(ann.poll(now=0)[0]))
    ann.set_desired({A})
    ann.channel_up()  # e.g. the bridge was respawned while ExaBGP kept its RIB
    assert ann.acknowledged() == frozenset() and ann.peer_states() == {P4: "unknown", P6: "unknown"}
    cmds, _ = ann.poll(now=1)
    assert cmds == [
        f"neighbor {P4} withdraw route 203.0.113.131/32",
        f"neighbor {P4} announce route 203.0.113.130/32 next-hop self med 100",
    ]
    ack_all(ann, 2)
    assert ann.converged()


def test_no_commands_while_disconnected() -> None:
    ann = fresh()
    ann.channel_down()
    ann.set_desired({A})
    assert ann.poll(now=0) == ([], [])
    assert not ann.converged()


def test_ack_timeout_drops_the_channel() -> None:
    ann = fresh()
    ann.set_desired({A})
    ann.poll(now=0)
    assert ann.poll(now=5.0) == ([], [])
    cmds, events = ann.poll(now=5.1)
    assert cmds == [] and len(events) == 1 and isinstance(events[0], AckTimeout)
    assert not ann.connected
    ann.channel_up()
    cmds, _ = ann.poll(now=6)
    assert len(cmds) == 1


def test_shutdown_line_drops_the_channel() -> None:
    ann = fresh()
    assert ann.receive("shutdown 123 1", now=0) == [ExabgpShutdown(line="shutdown 123 1")]
    assert not ann.connected


@pytest.mark.parametrize("n", [1, 5, 50])
def test_pipelined_acks_match_in_order(n: int) -> None:
    ann = fresh()
    anns = {Announcement(prefix=ip_network(f"203.0.113.{128 + i}/32"), med=100) for i in range(n)}
    ann.set_desired(anns)
    cmds, _ = ann.poll(now=0)
    assert len(cmds) == n and ann.in_flight == n
    ann.receive("error", now=0)  # the first (lowest address) fails
    ack_all(ann, n - 1)
    assert len(ann.acknowledged()) == n - 1
    cmds, _ = ann.poll(now=2)
    assert cmds == [f"neighbor {P4} announce route 203.0.113.128/32 next-hop self med 100"]


# ----- property: whatever happened before, acking everything converges to exactly the desired set -----


POOL = [A, A2, B, C, Announcement(prefix=ip_network("2001:db8:e1::131/128"), med=130)]
Step = tuple[str, object]


def steps() -> st.SearchStrategy[list[Step]]:
    desired = st.sets(st.sampled_from(POOL)).map(lambda s: ("desire", s))
    return st.lists(
        st.one_of(
            desired,
            st.just(("poll", None)),
            st.sampled_from(["done", "error"]).map(lambda a: ("ack", a)),
            st.sampled_from([P4, P6]).map(lambda p: ("up", p)),
            st.sampled_from([P4, P6]).map(lambda p: ("down", p)),
            st.just(("reconnect", None)),
        ),
        max_size=30,
    )


@settings(max_examples=150, deadline=None)
@given(steps(), st.sets(st.sampled_from(POOL)))
def test_converges_to_the_desired_set_after_any_history(history: list[Step], final: set[Announcement]) -> None:
    ann = fresh()
    now = 0.0
    for kind, arg in history:
        now += 0.1
        if kind == "desire":
            ann.set_desired(arg)  # type: ignore[arg-type]
        elif kind == "poll":
            ann.poll(now=now)
        elif kind == "ack":
            ann.receive(str(arg), now=now)
        elif kind in ("up", "down"):
            ann.receive(f"neighbor {arg} {kind}", now=now)
        else:
            ann.channel_up()
    # one prefix may be desired once per family table: keep the last attributes per prefix, as the planner does
    by_prefix = {a.prefix: a for a in sorted(final, key=lambda a: a.med or 0)}
    ann.set_desired(by_prefix.values())
    for _ in range(10):
        now += 2.0  # past any retry back-off, within the ack timeout of the newest command
        cmds, events = ann.poll(now=now)
        assert not events
        for _ in range(ann.in_flight):
            ann.receive("done", now=now)
        if not cmds and not ann.in_flight:
            break
    assert ann.converged()
    assert ann.acknowledged() == frozenset(by_prefix.values())
    assert ann.poll(now=now + 1) == ([], [])  # idempotent: nothing left to do


# ----- End-of-RIB after a session came up (graceful restart, ExaBGP's manual-eor) -----


def eor_announcer() -> Announcer:
    ann = Announcer(peers=SETTINGS.peers, local_asn=64513, ack_timeout_s=5.0, retry_s=1.0, manual_eor=True,
                    eor_wait_s=5.0)  # fmt: skip
    ann.channel_up()
    return ann


def test_end_of_rib_follows_the_resent_routes_of_a_session_that_came_up() -> None:
    """A restarted ExaBGP: the new channel resends, the session comes up, the routes are acknowledged again, and
    only then the End-of-RIB goes out (a router that kept our routes as stale flushes at End-of-RIB)."""
    ann = eor_announcer()
    ann.set_desired({A, B})
    ack_all(ann, len(ann.poll(now=0)[0]))
    assert ann.converged()
    ann.receive(f"neighbor {P4} up", now=1)
    assert not ann.converged()  # the End-of-RIB is due
    cmds, _ = ann.poll(now=1)
    assert cmds == [
        f"neighbor {P4} announce route 203.0.113.130/32 next-hop self med 100",
        f"neighbor {P4} announce route 203.0.113.131/32 next-hop self med 120 as-path [ 64513 64513 64513 ] "
        "community [ 65000:1 ] large-community [ 65000:1:2 ]",
    ]  # the End-of-RIB waits for their acks
    ann.receive("done", now=1.1)
    assert ann.poll(now=1.1) == ([], [])
    ann.receive("done", now=1.2)
    assert ann.poll(now=1.2)[0] == [f"neighbor {P4} announce eor ipv4 unicast"]
    assert not ann.converged()
    ann.receive("done", now=1.3)
    assert ann.converged()
    assert ann.poll(now=2) == ([], [])  # sent once per session up


def test_end_of_rib_is_sent_anyway_after_eor_wait_s() -> None:
    ann = eor_announcer()
    ann.set_desired({A})
    ann.receive(f"neighbor {P4} up", now=0)
    ann.receive(f"neighbor {P6} up", now=0)
    cmds, _ = ann.poll(now=0)
    # IPv6 has nothing to announce: its End-of-RIB goes at once; IPv4's waits for the ack of A
    assert cmds == [f"neighbor {P4} announce route 203.0.113.130/32 next-hop self med 100",
                    f"neighbor {P6} announce eor ipv6 unicast"]  # fmt: skip
    ann.receive("error", now=0.1)  # ExaBGP refuses A (retried after 1 s, refused again ...)
    ann.receive("done", now=0.1)
    for t in (1.0, 2.0, 3.0, 4.0):
        cmds, _ = ann.poll(now=t)
        assert f"neighbor {P4} announce eor ipv4 unicast" not in cmds
        ann.receive("error", now=t)
    cmds, _ = ann.poll(now=5.0)
    assert f"neighbor {P4} announce eor ipv4 unicast" in cmds


def test_no_end_of_rib_without_manual_eor_or_after_the_session_went_down() -> None:
    ann = fresh()  # manual_eor off: ExaBGP sends its own End-of-RIB
    ann.set_desired({A})
    ann.receive(f"neighbor {P4} up", now=0)
    cmds, _ = ann.poll(now=0)
    ack_all(ann, len(cmds))
    assert ann.converged() and ann.poll(now=10) == ([], [])
    ann = eor_announcer()
    ann.set_desired({A})
    ann.receive(f"neighbor {P4} up", now=0)
    ann.receive(f"neighbor {P4} down - peer reset", now=0)
    cmds, _ = ann.poll(now=10)
    assert not any("eor" in c for c in cmds)
