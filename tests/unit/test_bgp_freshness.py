"""Stale members step back: the pure decision (table), the heartbeat wire format, the stale preference band."""

from __future__ import annotations

import pytest

from bgp.announcing import preference
from bgp.freshness import (
    MAGIC,
    Heartbeat,
    PeerReport,
    decode,
    encode,
    peer_age,
    stepped_back_instances,
    steps_back,
)
from bgp.settings import PreferenceMode, PreferenceSettings

GRACE = 10.0


@pytest.mark.parametrize(("mine", "peers", "expected"), [
    (0.0, [0.0], False),            # everyone fresh
    (3.0, [None], False),           # within the grace: fresh
    (11.0, [0.0], True),            # stale, a peer is fresh: step back
    (11.0, [30.0, 0.5], True),      # one fresh peer is enough
    (11.0, [12.0], False),          # every member stale (API server away for everyone): nobody steps back
    (11.0, [None], False),          # the peer is not heard (maybe down): its view does not count as fresh
    (11.0, [], False),              # a lone member
    (10.0, [0.0], False),           # exactly the grace is still fresh
])  # fmt: skip
def test_steps_back(mine: float, peers: list[float | None], expected: bool) -> None:
    assert steps_back(my_age_s=mine, peer_ages=peers, grace_s=GRACE) is expected


def report(member: str, age: float, at: float) -> PeerReport:
    return PeerReport(heartbeat=Heartbeat(member=member, view_age_s=age, seq=1), received_at=at)


def test_peer_age_grows_since_the_report_and_expires() -> None:
    r = report("gw2", 2.0, at=100.0)
    assert peer_age(r, 101.5, peer_timeout_s=3.5) == 3.5
    assert peer_age(r, 103.6, peer_timeout_s=3.5) is None


def test_stepped_back_per_instance() -> None:
    """gw1 is stale; in instance a its peer gw2 is fresh, in b its only peer gw3 is stale too."""
    instances = {"a": ("gw1", "gw2"), "b": ("gw1", "gw3"), "c": ("gw1",)}
    reports = {"gw2": report("gw2", 0.0, at=50.0), "gw3": report("gw3", 40.0, at=50.0)}
    got = stepped_back_instances(me="gw1", my_age_s=20.0, instances=instances, reports=reports, now=51.0,
                                 grace_s=GRACE, peer_timeout_s=3.5)  # fmt: skip
    assert got == {"a"}
    # and fresh again: nothing
    assert stepped_back_instances(me="gw1", my_age_s=0.0, instances=instances, reports=reports, now=51.0,
                                  grace_s=GRACE, peer_timeout_s=3.5) == frozenset()  # fmt: skip


@pytest.mark.parametrize("secret", [None, "s3cret-key"])
def test_heartbeat_round_trip(secret: str | None) -> None:
    hb = Heartbeat(member="gw-1.example", view_age_s=12.345, seq=7)
    assert decode(encode(hb, secret), secret) == hb


def test_heartbeat_rejects_what_is_not_ours_or_forged() -> None:
    hb = Heartbeat(member="gw1", view_age_s=0.0, seq=1)
    signed = encode(hb, "s3cret-key")
    assert decode(signed, "other-key") is None
    assert decode(encode(hb, None), "s3cret-key") is None  # unsigned where a secret is configured
    assert decode(signed.replace(b'"a":0.0', b'"a":9.0'), "s3cret-key") is None  # tampered
    for bad in (b"hello", MAGIC + b"{", MAGIC + b"[]", MAGIC + b'{"m":"","a":0,"s":1}',
                MAGIC + b'{"m":"x","a":-1,"s":1}', MAGIC + b'{"m":"x","a":0,"s":true}',
                MAGIC + b'{"m":"x","a":NaN,"s":1}', MAGIC + b"x" * 2000):
        assert decode(bad, None) is None, bad


def test_stale_preference_is_below_every_other_band() -> None:
    for mode in PreferenceMode:
        pref = PreferenceSettings(mode=mode, max_prepends=3)
        worst_ranked = preference(999, worst=True, pref=pref)  # the last position of the worst band
        stale_best = preference(0, worst=False, pref=pref, stale=True)
        if mode is not PreferenceMode.AS_PATH_PREPEND:
            assert stale_best[0] is not None and worst_ranked[0] is not None and stale_best[0] > worst_ranked[0]
        if mode is not PreferenceMode.MED:
            assert stale_best[1] > worst_ranked[1]
        # inside the stale band the ranking still orders the members
        assert preference(1, worst=False, pref=pref, stale=True) >= stale_best
