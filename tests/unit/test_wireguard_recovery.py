"""The prober's reset back-off while no member is reachable: it must stay cheap (not a reset per probe) and still
bring traffic back soon after a member is reachable again (the next reset is what ends the outage)."""

from __future__ import annotations

from appliance.datapath.apply.wireguard_liveness import SessionWatch


def reset_points(watch: SessionWatch, misses: int) -> list[int]:
    return [i for i in range(1, misses + 1) if watch.record(False)]


def test_resets_back_off_but_at_most_every_twelve_probes_by_default() -> None:
    points = reset_points(SessionWatch(), 300)  # 30 s of unanswered 100 ms probes
    gaps = [b - a for a, b in zip([0, *points], points, strict=False)]
    assert gaps[:3] == [3, 6, 12]  # 0.3 s, 0.6 s, 1.2 s
    assert max(gaps) == 12  # never more than 1.2 s between resets: traffic is back <= 1.2 s after a member is
    assert len(points) < 300 / 10  # and an unreachable instance costs far less than a reset per probe


def test_an_answer_ends_the_back_off() -> None:
    w = SessionWatch()
    reset_points(w, 100)
    assert not w.record(True)
    assert reset_points(w, 3) == [3]  # the next loss is detected after the usual three misses again
