"""The `wireguard` variant of the lab failover benchmark: uplink cut on the primary member of a WireGuard instance.

The whole system as in `lab/bench/failover.py` (real kube-apiserver, `egressgw gateway` on gw1/gw2 with ExaBGP + BFD
50 ms x 3, `egressgw agent` on the workers, BIRD), but the gateway instance has `tunnel: {type: wireguard}`
(wireguard-go here, the kernel has no module). A WireGuard failover is more than the router's convergence: the
member that takes the EIP over has no session for the worker (the members share the instance key, not the session),
so the worker's liveness prober (100 ms x 3) must notice the dead session and reset it, and the next packet makes a
new handshake with the new member (docs/wireguard.md). The outage measured here is all of that together.

Each repetition, from a selected pod, a 10 ms UDP probe (`lab.probe`) to the external server:
1. cut: wait until steady (the router forwards the EIP to the original primary and the pod's traffic leaves with
   the EIP), cut the primary's uplink (the switch port goes down), probe for `AFTER_S`; outage = the longest run of
   lost probes (0 when nothing was lost), lost = probes lost, and the EIP must be the only source seen;
2. return: restore the uplink, probe until the primary has taken the EIP back (failback hold-down 1 s) and 2 s
   more; the take-back is a WireGuard failover too (the worker's session is now with the other member).

`run_wireguard_failover_bench(out_path, quick=False)`: >= 10 repetitions (quick: 2), JSON to `out_path`, a table on
stdout (lab/tables.py). Goal (issue 7): outage <= 1 s at p99; reported, not asserted.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.core.waiting import wait_until
from lab import wireguard_lab as wl
from lab.bench.stats import percentile
from lab.probe import BackgroundProbe, ProbeReport
from lab.scenario_spec import default_scenario_path, load_scenario
from lab.scenarios import policy_manifest, primary_member, router_next_hop, scenario_gateway
from lab.system import DEFAULT_TOPOLOGY, System
from lab.tables import render_table

PREFIX = "egt-bw-"
WG_PREFIX = "wgbw-"
LAB_POD = "w1p1"
NAMESPACE = "bench-wg"
REPS, QUICK_REPS = 10, 2
BEFORE_S = 1.0  # normal traffic before the fault
AFTER_S = 4.0  # probing after the fault
RETURN_AFTER_S = 2.0  # probing after the primary took the EIP back
FAILBACK_HOLD_S = 1.0
TAKE_BACK_S = 60.0  # a primary that has not taken its EIP back by then is reported, the series goes on
HEADERS = ["phase", "reps", "outage p50 ms", "p95 ms", "max ms", "lost total", "lost max", "EIP kept"]


def outage_ms(report: ProbeReport) -> float:
    """The longest run of lost probes in ms (0 when none was lost)."""
    return round(report.longest_gap_ms, 1) if report.lost else 0.0


def summarize(reps: Sequence[dict[str, Any]], prefix: str, eip: str) -> dict[str, Any]:
    """Figures of one phase (`cut` or `return`) over the repetitions (pure)."""
    outages = [float(r[f"{prefix}_outage_ms"]) for r in reps]
    lost = [int(r[f"{prefix}_lost"]) for r in reps]
    if not outages:
        return {"n": 0}
    return {"n": len(outages), "outage_ms": {"p50": percentile(outages, 50), "p95": percentile(outages, 95),
                                            "p99": percentile(outages, 99), "max": max(outages)},
            "lost_total": sum(lost), "lost_max": max(lost),
            "primary_not_back": sum(1 for r in reps if r["primary_back_after_s"] is None),
            "eip_kept": all(r[f"{prefix}_sources"] == [eip] for r in reps)}


def table_rows(summary: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for phase, label in (("cut", "uplink cut on primary"), ("return", "primary takes the EIP back")):
        s = summary[phase]
        if not s.get("n"):
            continue
        o = s["outage_ms"]
        rows.append([label, s["n"], f"{o['p50']:.0f}", f"{o['p95']:.0f}", f"{o['max']:.0f}", s["lost_total"],
                     s["lost_max"], "yes" if s["eip_kept"] else "NO"])
    return rows


def _probe(system: System) -> BackgroundProbe:
    return BackgroundProbe(system.lab, LAB_POD, server=system.external_address(4), port=system.ext_port).start()


def _steady(system: System, primary: str) -> None:
    wait_until(lambda: router_next_hop(system, system.scenario.default_eip_v4) == primary, timeout=90, interval=0.1,
               what=f"{primary} carrying the EIP")
    wait_until(lambda: system.seen_source(LAB_POD, timeout=1.0) == system.scenario.default_eip_v4, timeout=60,
               what="the pod's traffic leaving with the EIP", interval=0.2)
    time.sleep(1.0)


def run_rep(system: System, primary: str, rep: int, say: Callable[[str], None]) -> dict[str, Any]:
    _steady(system, primary)
    probe = _probe(system)
    try:
        time.sleep(BEFORE_S)
        system.lab.cut_link(primary, system.uplink(primary))
        time.sleep(AFTER_S)
    finally:
        cut = probe.stop()
    took_over = router_next_hop(system, system.scenario.default_eip_v4)
    probe = _probe(system)
    try:
        time.sleep(BEFORE_S)
        system.lab.restore_link(primary, system.uplink(primary))
        restored = time.monotonic()
        back_after: float | None = None
        try:
            wait_until(lambda: router_next_hop(system, system.scenario.default_eip_v4) == primary, timeout=TAKE_BACK_S,
                       interval=0.05, what=f"{primary} taking the EIP back")
            back_after = time.monotonic() - restored
        except TimeoutError:
            say(f"  #{rep + 1}: {primary} did not take the EIP back within {TAKE_BACK_S:.0f} s; router routes:\n"
                + system.router_routes(4))
        time.sleep(RETURN_AFTER_S)
    finally:
        back = probe.stop()
    rec = {"rep": rep, "primary": primary, "took_over": took_over,
           "cut_outage_ms": outage_ms(cut), "cut_lost": cut.lost, "cut_sent": cut.sent,
           "cut_sources": sorted({s.source for s in cut.sources}),
           "return_outage_ms": outage_ms(back), "return_lost": back.lost, "return_sent": back.sent,
           "return_sources": sorted({s.source for s in back.sources}),
           "primary_back_after_s": None if back_after is None else round(back_after, 2)}
    say(f"  #{rep + 1}: cut {primary} -> {took_over or '?'}: outage {rec['cut_outage_ms']:.0f} ms, lost {cut.lost}; "
        f"back after {'-' if back_after is None else f'{back_after:.1f}'} s: outage {rec['return_outage_ms']:.0f} ms, "
        f"lost {back.lost}")
    return rec


def set_up(system: System) -> str:
    """The WireGuard gateway instance, one selected pod; returns the primary member."""
    system.apply([scenario_gateway(system.scenario, tunnel="wireguard", failback_hold_s=FAILBACK_HOLD_S)])
    system.ensure_namespace(NAMESPACE)
    system.create_pod(NAMESPACE, "web", LAB_POD, {"app": "web"})
    system.apply([policy_manifest(NAMESPACE, "p", match_labels={"app": "web"})])
    wait_until(lambda: system.seen_source(LAB_POD, timeout=1.0) == system.scenario.default_eip_v4, timeout=120,
               what="the pod's traffic leaving with the EIP through WireGuard", interval=0.2)

    def ranked_primary() -> str:
        # not simply the router's next hop: the member that announced first carries the EIP until the ranked
        # primary announces too, and only the ranked primary takes the EIP back after its uplink returns
        primary = primary_member(system, system.scenario.default_eip_v4)
        return primary if primary and router_next_hop(system, system.scenario.default_eip_v4) == primary else ""

    return str(wait_until(ranked_primary, timeout=60, interval=0.1, what="the EIP routed to its ranked primary"))


def run_wireguard_failover_bench(out_path: Path, *, quick: bool = False,
                                 say: Callable[[str], None] = lambda m: print(m, flush=True)) -> dict[str, Any]:
    reps = QUICK_REPS if quick else REPS
    started = time.time()
    say("bringing up the lab with a WireGuard gateway instance")
    system = wl.up(DEFAULT_TOPOLOGY, prefix=PREFIX, wg_prefix=WG_PREFIX, progress=say,
                    instances=[load_scenario(default_scenario_path(DEFAULT_TOPOLOGY)).gateway])
    records: list[dict[str, Any]] = []
    try:
        primary = set_up(system)
        say(f"uplink cut on the primary ({primary}), {reps} repetitions, 10 ms UDP probe from {LAB_POD}")
        for rep in range(reps):
            records.append(run_rep(system, primary, rep, say))
            if records[-1]["primary_back_after_s"] is None:  # go on with the member carrying the EIP now
                primary = router_next_hop(system, system.scenario.default_eip_v4) or primary
    finally:
        if any(r["primary_back_after_s"] is None for r in records):
            logs = out_path.with_suffix(".logs")
            shutil.rmtree(logs, ignore_errors=True)
            shutil.copytree(system.lab.state_dir / "logs", logs)
            say(f"the lab's logs are in {logs}")
        wl.down(system, WG_PREFIX)
    eip = system.scenario.default_eip_v4
    summary = {"cut": summarize(records, "cut", eip), "return": summarize(records, "return", eip)}
    doc = {"benchmark": "failover-wireguard", "started": started, "duration_s": round(time.time() - started, 1),
           "reps": reps, "probe_interval_ms": 10, "bfd": "50 ms x 3", "wireguard_prober": "100 ms x 3",
           "failback_hold_s": FAILBACK_HOLD_S, "summary": summary, "repetitions": records}
    out_path.write_text(json.dumps(doc, indent=1))
    say(render_table(HEADERS, table_rows(summary),
                     title=f"Failover with WireGuard (wireguard-go, {reps} repetitions, outage = longest loss run)"))
    return doc


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.bench.failover_wireguard")
    parser.add_argument("--out", type=Path, default=Path("bench-failover-wireguard.json"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run_wireguard_failover_bench(args.out, quick=args.quick)
