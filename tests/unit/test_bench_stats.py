"""The lab benchmarks' pure parts: percentiles and summaries, route monitor lines, probe windows, aggregation."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from lab.bench.convergence import extra_pod_specs, first_after
from lab.bench.failover import convergence_ms, summarize_scenario, table_rows
from lab.bench.failover_wireguard import summarize as summarize_wireguard_phase
from lab.bench.harness import RouteEvent, parse_route_line, paths_in
from lab.bench.probes import RawRun, Stream, window
from lab.bench.stats import percentile, summarize


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 75, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        (list(map(float, range(1, 101))), 95, 95.0),
        (list(map(float, range(1, 101))), 99, 99.0),
        (list(map(float, range(1, 11))), 95, 10.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_rejects_empty_samples_and_bad_quantiles() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize() -> None:
    s = summarize([10, 30, 20, 40])
    assert s is not None
    assert (s.n, s.p50, s.p95, s.p99, s.max, s.mean) == (4, 20.0, 40.0, 40.0, 40.0, 25.0)
    assert summarize([]) is None
    assert s.to_json()["p50"] == 20.0


def test_the_wireguard_failover_summary_uses_the_shared_nearest_rank_percentiles() -> None:
    outages = [120.0, 80.0, 300.0, 90.0, 110.0]
    reps = [{"cut_outage_ms": o, "cut_lost": int(o // 10), "cut_sources": ["203.0.113.200"],
             "primary_back_after_s": 1.0} for o in outages]
    s = summarize_wireguard_phase(reps, "cut", "203.0.113.200")
    assert s["outage_ms"] == {"p50": percentile(outages, 50), "p95": percentile(outages, 95),
                              "p99": percentile(outages, 99), "max": 300.0}
    assert (s["outage_ms"]["p50"], s["outage_ms"]["p95"]) == (110.0, 300.0)  # measured values, not interpolated
    assert (s["n"], s["lost_total"], s["lost_max"], s["eip_kept"]) == (5, 70, 30, True)


def _stamp(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).isoformat()


def test_parse_route_line_for_the_eip_only() -> None:
    t = 1_800_000_000.25
    eip = "203.0.113.200"
    ev = parse_route_line(f"[{_stamp(t)}] {eip} via 198.51.100.12 dev eth2 proto bird metric 32", eip)
    assert ev is not None and not ev.deleted and ev.via == "198.51.100.12"
    assert ev.at == pytest.approx(t)
    gone = parse_route_line(f"[{_stamp(t)}] Deleted {eip} via 198.51.100.11 dev eth2 proto bgp", eip)
    assert gone is not None and gone.deleted and gone.via == "198.51.100.11"
    assert parse_route_line(f"[{_stamp(t)}] 203.0.113.201 via 198.51.100.12 dev eth2", "203.0.113.200") is None
    assert parse_route_line("no timestamp 203.0.113.200 via 1.2.3.4", "203.0.113.200") is None


def test_convergence_is_the_first_route_away_from_the_faulted_member() -> None:
    events = [
        RouteEvent(at=99.0, deleted=False, via="198.51.100.12"),  # before the fault: ignored
        RouteEvent(at=100.05, deleted=True, via="198.51.100.11"),
        RouteEvent(at=100.13, deleted=False, via="198.51.100.12"),
    ]
    assert convergence_ms(events, fault_at=100.0, away_from="198.51.100.11", reinstall=False) == 130.0
    assert convergence_ms(events, fault_at=100.0, away_from="198.51.100.12", reinstall=False) is None
    assert convergence_ms(events, fault_at=100.0, away_from="198.51.100.12", reinstall=True) == 130.0


def _raw(lost: set[int], *, tcp_breaks: tuple[float, ...] = ()) -> RawRun:
    sent = {i: 100.0 + i * 0.01 for i in range(200)}
    answers = {i: (t + 0.001, "203.0.113.200") for i, t in sent.items() if i not in lost}
    tcp_answers = {i: (t + 0.001, "203.0.113.200") for i, t in sent.items() if not 50 <= i < 70}
    return RawRun(server="203.0.113.2", interval=0.01, udp=Stream(sent=sent, answers=answers),
                  tcp=Stream(sent=dict(sent), answers=tcp_answers, breaks=tcp_breaks))


def test_window_counts_only_probes_sent_inside_it() -> None:
    raw = _raw({5, 6, 120, 121, 122})
    w = window(raw, 101.0, 102.0)  # probes 100..199
    assert (w.udp.sent, w.udp.lost, w.udp.max_consecutive_lost) == (100, 3, 3)
    assert w.outage_ms == pytest.approx(40.0)
    assert w.sources == ("203.0.113.200",)
    clean = window(raw, 100.2, 101.0)  # probes 20..99: TCP stalls while 50..69 go unanswered
    assert (clean.udp.lost, clean.outage_ms) == (0, 0.0)
    assert clean.tcp.longest_stall_ms == pytest.approx(210.0)
    assert clean.tcp_survived


def test_window_tcp_breaks() -> None:
    raw = _raw(set(), tcp_breaks=(100.5,))
    assert not window(raw, 100.0, 101.0).tcp_survived
    assert window(raw, 101.0, 102.0).tcp_survived


def _rep(outage: float, lost: int, conv: float | None, *, tcp: bool = True, ret: int = 0) -> dict[str, Any]:
    return {"outage_ms": outage, "lost": lost, "router_convergence_ms": conv, "tcp_survived": tcp,
            "tcp_longest_stall_ms": 20.0, "return_lost": ret, "return_outage_ms": 0.0, "return_tcp_survived": True,
            "sources": ["203.0.113.200"]}


def test_summarize_scenario_and_table() -> None:
    reps = [_rep(0.0, 0, 10.0), _rep(130.0, 13, 125.0, tcp=False), _rep(150.0, 15, None, ret=2)]
    s = summarize_scenario(reps)
    assert s["n"] == 3
    assert (s["lost_total"], s["lost_max"], s["reps_with_loss"]) == (28, 15, 2)
    assert s["outage_ms"]["p50"] == 130.0 and s["outage_ms"]["max"] == 150.0
    assert s["router_convergence_ms"]["n"] == 2 and s["router_unchanged"] == 1
    assert (s["tcp_survived"], s["return_lost_total"]) == (2, 2)
    rows = table_rows({"bird": {"scenarios": {"uplink_cut": {"summary": s}}}})
    assert rows[0][:3] == ["bird", "uplink_cut", 3]
    assert "28 (2/3 reps)" in rows[0]


def test_first_after_and_extra_pods() -> None:
    changes = [(1.0, "100.127.0.11"), (2.0, "203.0.113.200"), (3.0, "100.127.0.11"), (4.0, "203.0.113.200")]
    assert first_after(changes, "203.0.113.200", 2.5) == 4.0
    assert first_after(changes, "203.0.113.200", 4.5) is None
    specs = extra_pod_specs(1000)
    assert len({ip for *_, ip in specs}) == 1000
    assert {ns for _, ns, _, _ in specs} == {"shop", "blog"}
    assert all(ip.startswith("100.64.1") for *_, ip in specs)


def test_paths_in_bird_and_frr_output() -> None:
    members = {"gw1": "198.51.100.11", "gw2": "198.51.100.12"}
    bird = ("203.0.113.200/32     unicast [gw4_2 08:32:55.408] * (100) [AS64513i]\n\tvia 198.51.100.12 on eth2\n"
            "\tBGP.next_hop: 198.51.100.12\n")
    assert paths_in(bird, members) == {"gw2"}
    frr = ("BGP routing table entry for 203.0.113.200/32\n  64513\n    198.51.100.11 from 198.51.100.11 "
           "(198.51.100.11)\n  64513\n    198.51.100.12 from 198.51.100.12 (198.51.100.12)\n")
    assert paths_in(frr, members) == {"gw1", "gw2"}
    assert paths_in("198.51.100.111 via", members) == set()
