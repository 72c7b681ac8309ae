"""`lab.bench.fresh_series.merge`: the chunks of a long fresh-flow series added up per (router, fault, sync mode)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lab.bench.fresh_series import merge


def rep(lost: int, *, stall: float = 20.0, ret: int = 0) -> dict[str, Any]:
    return {"fresh_udp_sent": 100, "fresh_udp_lost": lost, "fresh_udp_outage_ms": 10.0 * lost,
            "server_push_tcp_stall_ms": stall, "server_push_tcp_survived": True, "server_push_connected": True,
            "tcp_survived": True, "snat_port_changed": False, "lost": 0, "router_convergence_ms": 900.0,
            "eip_unsolicited_drops_on_others": {"gw1": 0}, "return_lost": ret}


def chunk(tmp: Path, name: str, doc: dict[str, Any]) -> Path:
    p = tmp / name
    p.write_text(json.dumps({"router": "bird", "date": "2026-12-03T19:00:00Z", "duration_s": 1.0,
                             "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 2.0, 2.0], "errors": {}, **doc}))
    return p


def test_chunks_add_up_per_fault_and_mode(tmp_path: Path) -> None:
    a = chunk(tmp_path, "a.json", {"fresh_flows": {"fresh_drain": {"on": {"reps": [rep(0), rep(0)]}},
                                                   "fresh_power_off": {"off": {"reps": [rep(13)]}}}})
    # the older one-fault format
    b = chunk(tmp_path, "b.json", {"fault": "drain", "sync": "on", "reps": [rep(1, stall=45.0, ret=2)]})
    doc = merge([a, b])
    drain = doc["routers"]["bird"]["fresh_drain"]["on"]
    assert drain["summary"]["n"] == 3 and drain["summary"]["fresh_udp_lost"] == 1
    assert drain["summary"]["reps_with_fresh_udp_loss"] == 1 and drain["summary"]["fresh_udp_sent"] == 300
    assert drain["return_lost_total"] == 2 and drain["reps_with_return_loss"] == 1
    assert doc["routers"]["bird"]["fresh_power_off"]["off"]["summary"]["fresh_udp_lost"] == 13
    assert [c["load_before"] for c in doc["chunks"]] == [[1.0, 1.0, 1.0]] * 2
