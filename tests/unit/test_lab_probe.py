"""lab.probe.analyse: loss, the longest gap, the outage window and the source spans from raw probe timings."""

from __future__ import annotations

from lab.probe import ProbeReport, analyse


def _run(lost: set[int], sources: dict[int, str] | None = None, n: int = 100) -> ProbeReport:
    sent = {i: 1000.0 + i * 0.01 for i in range(n)}
    answers = {i: (t + 0.001, (sources or {}).get(i, "100.127.0.11")) for i, t in sent.items() if i not in lost}
    return analyse(mode="udp", server="203.0.113.2", interval=0.01, started=1000.0, ended=1000.0 + n * 0.01,
                   sent=sent, answers=answers)


def test_no_loss() -> None:
    r = _run(set())
    assert (r.sent, r.received, r.lost, r.max_consecutive_lost) == (100, 100, 0, 0)
    assert 9.9 < r.longest_gap_ms < 10.1
    assert [s.source for s in r.sources] == ["100.127.0.11"]


def test_outage_window_and_source_change() -> None:
    srcs = {i: "203.0.113.130" for i in range(60, 100)}
    r = _run(set(range(40, 60)), srcs)
    assert r.lost == 20 and r.max_consecutive_lost == 20
    assert 209 < r.longest_gap_ms < 211
    assert r.outage_start is not None and abs(r.outage_start - (1000.0 + 0.40)) < 1e-6
    assert r.outage_end is not None and abs(r.outage_end - (1000.0 + 0.60)) < 1e-6
    assert [(s.source, s.count) for s in r.sources] == [("100.127.0.11", 40), ("203.0.113.130", 40)]
    assert ProbeReport.from_json(r.to_json()) == r


def test_lost_tail_and_nothing_answered() -> None:
    r = _run(set(range(90, 100)))
    assert r.lost == 10 and r.outage_end is None
    none = _run(set(range(100)))
    assert none.received == 0 and none.max_consecutive_lost == 100 and none.sources == ()
