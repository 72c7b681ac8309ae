"""The fresh-flow analysis of the failover benchmark (lab.bench.fresh_flows): pure functions over a raw record."""

from __future__ import annotations

from typing import Any

import pytest

from lab.bench.fresh_flows import (
    FRESH_KEYS,
    Datagram,
    FreshRaw,
    PushConn,
    analyse_fresh,
    fresh_table_rows,
    group_fresh,
    summarize_fresh,
)
from lab.extserver import seen_suffix

FAULT = 1000.0


def _udp(*, lost: set[int] = frozenset(), port_after: int = 40001, start: float = FAULT - 0.3,
         n: int = 100) -> tuple[Datagram, ...]:
    """n requests every 10 ms in one flow (window 0) from `start`; answered 1 ms later unless lost; the server saw
    port 40001 before the fault and `port_after` after it."""
    out = []
    for i in range(n):
        sent = start + i * 0.01
        out.append(Datagram(seq=i, sent=sent, flow=0, local_port=5555,
                            answered=None if i in lost else sent + 0.001, seen_source="203.0.113.200",
                            seen_port=None if i in lost else (40001 if sent < FAULT else port_after)))
    return tuple(out)


def _push(received: list[float], *, broke: float | None = None, opened: float = FAULT - 0.6) -> PushConn:
    return PushConn(opened=opened, local_port=6666, seen_port=6666, received=tuple(received), broke=broke,
                    closed=None, error="")


def _every_10ms(t0: float, t1: float) -> list[float]:
    return [t0 + i * 0.01 for i in range(round((t1 - t0) / 0.01))]


def _raw(udp: tuple[Datagram, ...], push: tuple[PushConn, ...]) -> FreshRaw:
    return FreshRaw(server="203.0.113.2", interval=0.01, udp=udp, push=push)


def test_nothing_lost_nothing_changed() -> None:
    raw = _raw(_udp(), (_push(_every_10ms(FAULT - 0.5, FAULT + 3.0)),))
    got = analyse_fresh(raw, fault_at=FAULT, fault_end=FAULT + 0.5, returned=FAULT + 3.0)
    assert set(got) == set(FRESH_KEYS)
    assert got["fresh_udp_lost"] == 0 and got["fresh_udp_sent"] == 70  # [fault - 0.2, fault + 0.5)
    assert got["snat_port_changed"] is False
    assert got["snat_ports_before"] == got["snat_ports_after"] == [40001]
    assert got["fresh_flow_age_ms"] == pytest.approx(300.0)
    assert got["server_push_tcp_survived"] is True and got["server_push_resumed"] is True
    assert got["server_push_tcp_stall_ms"] == pytest.approx(10.0, abs=0.2)


def test_loss_port_change_and_a_push_stall_that_resumed() -> None:
    pushes = _every_10ms(FAULT - 0.5, FAULT + 0.02) + _every_10ms(FAULT + 0.17, FAULT + 3.0)
    raw = _raw(_udp(lost={31, 32, 33}, port_after=40777), (_push(pushes),))
    got = analyse_fresh(raw, fault_at=FAULT, fault_end=FAULT + 0.5, returned=FAULT + 3.0)
    assert got["fresh_udp_lost"] == 3
    assert got["fresh_udp_outage_ms"] == pytest.approx(40.0, abs=0.5)
    assert got["snat_port_changed"] is True and got["snat_ports_after"] == [40777]
    assert got["server_push_tcp_stall_ms"] == pytest.approx(160.0, abs=0.5)
    assert got["server_push_tcp_survived"] is True


def test_a_push_stream_that_never_resumes_stalls_until_the_member_is_back() -> None:
    raw = _raw(_udp(), (_push(_every_10ms(FAULT - 0.5, FAULT + 0.01)),))
    got = analyse_fresh(raw, fault_at=FAULT, fault_end=FAULT + 0.5, returned=FAULT + 4.0)
    assert got["server_push_resumed"] is False and got["server_push_tcp_survived"] is False
    assert got["server_push_tcp_stall_ms"] == pytest.approx(4000.0, abs=1.0)


def test_a_broken_push_connection_did_not_survive() -> None:
    pushes = _every_10ms(FAULT - 0.5, FAULT + 0.05) + _every_10ms(FAULT + 0.1, FAULT + 0.5)
    raw = _raw(_udp(), (_push(pushes, broke=FAULT + 0.6),))
    got = analyse_fresh(raw, fault_at=FAULT, fault_end=FAULT + 0.5, returned=FAULT + 3.0)
    assert got["server_push_tcp_survived"] is False
    assert got["server_push_tcp_stall_ms"] == pytest.approx(110.0, abs=0.5)  # the silence before the break


def test_the_connection_open_at_the_fault_counts_not_a_later_one() -> None:
    later = _push(_every_10ms(FAULT + 5.0, FAULT + 6.0), opened=FAULT + 5.0)
    raw = _raw(_udp(), (_push(_every_10ms(FAULT - 0.5, FAULT + 3.0)), later))
    got = analyse_fresh(raw, fault_at=FAULT, fault_end=FAULT + 0.5, returned=FAULT + 3.0)
    assert got["server_push_tcp_survived"] is True


def test_no_push_before_the_fault_is_reported_not_guessed() -> None:
    raw = _raw(_udp(), (_push([]),))
    got = analyse_fresh(raw, fault_at=FAULT, fault_end=FAULT + 0.5, returned=FAULT + 3.0)
    assert got["server_push_connected"] is False and got["server_push_tcp_stall_ms"] is None


def test_unknown_port_when_the_flow_got_no_answer_after_the_fault() -> None:
    raw = _raw(_udp(lost=set(range(30, 100))), (_push(_every_10ms(FAULT - 0.5, FAULT + 3.0)),))
    got = analyse_fresh(raw, fault_at=FAULT, fault_end=FAULT + 0.5, returned=FAULT + 3.0)
    assert got["snat_port_changed"] is None


def test_raw_json_round_trip() -> None:
    data = {"server": "203.0.113.2", "interval": 0.01, "window_s": 1.0,
            "udp": [[1, FAULT, 1000, 5555, FAULT + 0.001, "203.0.113.200", 5555], [0, FAULT - 0.01, 1000, 5555, None,
                                                                                  "", None]],
            "push": [{"opened": FAULT - 1, "local_port": 6, "seen_port": 6, "received": [FAULT], "broke": None,
                      "closed": FAULT + 1, "error": ""}]}
    raw = FreshRaw.from_json(data)
    assert [d.seq for d in raw.udp] == [0, 1]
    assert raw.udp[0].answered is None and raw.udp[1].seen_port == 5555
    assert raw.push[0].closed == FAULT + 1


def _rep(scenario: str, sync: str, **kw: Any) -> dict[str, Any]:
    base = {"scenario": scenario, "sync": sync, "fresh_udp_sent": 70, "fresh_udp_lost": 0,
            "fresh_udp_outage_ms": 0.0, "server_push_tcp_stall_ms": 20.0, "server_push_tcp_survived": True,
            "server_push_connected": True, "tcp_survived": True, "snat_port_changed": False, "lost": 0,
            "router_convergence_ms": 140.0, "eip_unsolicited_drops_on_others": {"gw2": 0}}
    return {**base, **kw}


def test_summary_and_grouping_keep_sync_modes_apart() -> None:
    reps = [_rep("fresh_drain", "on"), _rep("fresh_drain", "on"),
            _rep("fresh_drain", "off", fresh_udp_lost=2, server_push_tcp_survived=False, snat_port_changed=None,
                 server_push_tcp_stall_ms=3000.0, eip_unsolicited_drops_on_others={"gw2": 7})]
    grouped = group_fresh(reps)
    assert list(grouped) == ["fresh_drain"] and list(grouped["fresh_drain"]) == ["on", "off"]
    on, off = grouped["fresh_drain"]["on"]["summary"], grouped["fresh_drain"]["off"]["summary"]
    assert on["n"] == 2 and on["fresh_udp_lost"] == 0 and on["server_push_tcp_survived"] == 2
    assert off["fresh_udp_lost"] == 2 and off["reps_with_fresh_udp_loss"] == 1 and off["snat_port_unknown"] == 1
    assert off["server_push_tcp_stall_ms"]["max"] == 3000.0 and off["eip_unsolicited_drops_on_others"] == 7
    assert on["server_push_stall_over_convergence_ms"]["max"] == -120.0
    assert off["server_push_stall_over_convergence_ms"]["max"] == 2860.0
    rows = fresh_table_rows("bird", grouped)
    assert [r[2] for r in rows] == ["on", "off"] and rows[1][4] == "2 / 70"
    assert summarize_fresh([])["n"] == 0


def test_the_server_reports_the_port_only_when_asked() -> None:
    assert seen_suffix("203.0.113.200", 4242, report_port=False) == "|203.0.113.200"
    assert seen_suffix("203.0.113.200", 4242, report_port=True) == "|203.0.113.200|4242"
