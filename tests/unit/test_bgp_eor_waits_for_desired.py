"""End-of-RIB after a restart waits until the owner stated its desired set (a restarted gateway service rebuilding
its announcements must not make the routers flush the routes they kept for it), bounded by `desired_wait_s`."""

from __future__ import annotations

from bgp.speaking import Announcer
from tests.unit.test_bgp_speaking import P4, SETTINGS, A, ack_all


def restarted(desired_wait_s: float = 30.0) -> Announcer:
    ann = Announcer(peers=SETTINGS.peers, local_asn=64513, manual_eor=True, eor_wait_s=5.0,
                    desired_wait_s=desired_wait_s)  # fmt: skip
    ann.channel_up()
    ann.receive(f"neighbor {P4} up", now=0)
    return ann


def test_no_end_of_rib_before_the_set_is_stated_then_after_its_routes() -> None:
    ann = restarted()
    for t in (0.0, 1.0, 6.0, 20.0):  # longer than eor_wait_s: the set is not known yet
        assert ann.poll(now=t) == ([], [])
    ann.set_desired({A})
    cmds, _ = ann.poll(now=21.0)
    assert cmds == [f"neighbor {P4} announce route 203.0.113.130/32 next-hop self med 100"]  # routes first
    ack_all(ann, 1, now=21.1)
    assert ann.poll(now=21.2)[0] == [f"neighbor {P4} announce eor ipv4 unicast"]


def test_eor_wait_counts_from_when_the_set_was_stated() -> None:
    ann = restarted()
    ann.poll(now=10.0)
    ann.set_desired({A})
    assert ann.poll(now=10.0)[0] == [f"neighbor {P4} announce route 203.0.113.130/32 next-hop self med 100"]
    ann.receive("error", now=10.1)  # refused: retried, the End-of-RIB waits eor_wait_s from 10 s, not from 0 s
    assert not any("eor" in c for c in ann.poll(now=12.0)[0])
    assert any("eor" in c for c in ann.poll(now=15.5)[0])


def test_an_empty_stated_set_sends_end_of_rib_and_the_wait_is_bounded() -> None:
    ann = restarted()
    ann.set_desired(set())
    assert ann.poll(now=0.5)[0] == [f"neighbor {P4} announce eor ipv4 unicast"]
    ann = restarted(desired_wait_s=30.0)
    assert ann.poll(now=29.0) == ([], [])
    assert ann.poll(now=30.0)[0] == [f"neighbor {P4} announce eor ipv4 unicast"]
