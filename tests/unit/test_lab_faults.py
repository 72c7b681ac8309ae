"""The faults benchmark's pure parts: the API-cut ruleset and the per-fault analysis of a probe record."""

from __future__ import annotations

from lab.bench.faults import analyse, table_rows
from lab.bench.probes import RawRun, Stream
from lab.faults import CUT_TABLE, cut_ruleset


def test_cut_ruleset_drops_both_directions_for_each_family_in_every_hook() -> None:
    text = cut_ruleset(["100.127.0.10", "2001:db8:127::10"])
    assert text.startswith(f"table inet {CUT_TABLE} {{")
    for hook in ("input", "output", "forward"):
        assert f"type filter hook {hook} priority -300; policy accept;" in text
    assert text.count("ip saddr { 100.127.0.10 } counter drop") == 3
    assert text.count("ip6 daddr { 2001:db8:127::10 } counter drop") == 3
    assert "ip6" not in cut_ruleset(["100.127.0.10"])


def _run(sent: dict[int, float], answered: set[int]) -> RawRun:
    udp = Stream(sent=sent, answers={s: (t + 0.001, "203.0.113.200") for s, t in sent.items() if s in answered})
    return RawRun(server="203.0.113.2", interval=0.01, udp=udp, tcp=Stream(sent={}, answers={}))


def test_analyse_counts_losses_per_window_and_keeps_rounds() -> None:
    sent = {i: 100.0 + i * 0.01 for i in range(300)}  # 3 s of probes
    lost = set(range(50, 60)) | set(range(240, 270))
    raw = _run(sent, set(sent) - lost)
    out = analyse(raw, {"a": [(100.0, 101.0)], "b": [(101.0, 102.0), (102.0, 103.0)]},
                  {"a": {"new_pod_carried_s": 1.5}})
    assert out["a"]["lost"] == 10 and out["a"]["sent"] == 100 and out["a"]["new_pod_carried_s"] == 1.5
    assert out["b"]["lost"] == 30 and [r["lost"] for r in out["b"]["rounds"]] == [0, 30]
    assert out["b"]["outage_ms"] >= out["a"]["outage_ms"] > 0
    rows = table_rows(out)
    assert rows[0][0] == "a" and "1.5 s" in str(rows[0][-1]) and "outage per round" in str(rows[1][-1])
