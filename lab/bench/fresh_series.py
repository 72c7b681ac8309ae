"""A long series of fresh-flow faults with chosen state-sync modes (issue 15's "100 of 100 drains"):
`python -m lab.bench.fresh_series --router bird --fault drain --sync on --reps 25 --out FILE.json`
(`--fault uplink_cut,power_off --sync on,off`: several faults and modes in one lab).

The same code path as `egressgw bench failover`'s fresh-flow scenarios (`lab.bench.failover.run_router` with only
those faults, the members configured with the first mode from the start, a rolling restart before the next), in a
lab of its own. A long
series is run in chunks (separate invocations, one lab each, so no single run holds the machine's heavy-run lock for
long); `--merge A.json B.json ... --out ALL.json` adds the chunks up. The JSON keeps every repetition (the route
events and EIP timeline of a repetition that lost something explain it) and the machine's load average before and
after each chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab.bench.failover import PREFIX, ROUTERS, run_router, scenario
from lab.bench.fresh_flows import SYNC_OFF, SYNC_ON, summarize_fresh

FAULTS = ("drain", "uplink_cut", "power_off")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_chunk(router: str, faults: Sequence[str], syncs: Sequence[str], reps: int, out: Path) -> dict[str, Any]:
    """`reps` repetitions of every fault per sync mode (in the given order; the first mode configured from the
    start, a rolling restart before the next) in one lab; the JSON written to `out`."""
    modes = tuple(SYNC_ON if m == "on" else SYNC_OFF for m in syncs)
    started = time.time()
    load_before = _load()

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - started:4.0f}s] {msg}", flush=True)

    res = run_router(router, ROUTERS[router], (), 0, say, fresh_faults=tuple(scenario(f) for f in faults),
                     fresh_modes=modes, fresh_reps=reps, prefix=PREFIX, gateway_overrides=dict(modes[0].overrides),
                     keep_logs=out.parent / (out.stem + "-logs"))
    doc = {
        "benchmark": "fresh_series", "router": router,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1), "load_before": load_before, "load_after": _load(),
        "errors": res.get("errors", {}), "fresh_flows": res.get("fresh_flows", {}),
    }
    out.write_text(json.dumps(doc, indent=1))
    return doc


def merge(paths: Sequence[Path]) -> dict[str, Any]:
    """The chunks added up: every (router, fault, mode)'s repetitions together, summarised again."""
    docs = [json.loads(p.read_text()) for p in paths]
    for d in docs:  # a chunk of one fault and mode written before several could run in one lab
        if "fresh_flows" not in d:
            d["fresh_flows"] = {f"fresh_{d['fault']}": {d["sync"]: {"reps": d["reps"]}}}
    grouped: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for d in docs:
        for sc, modes in d["fresh_flows"].items():
            for mode, got in modes.items():
                grouped.setdefault(d["router"], {}).setdefault(sc, {}).setdefault(mode, []).extend(got["reps"])
    return {
        "benchmark": "fresh_series",
        "chunks": [{"file": str(p), "router": d["router"], "date": d["date"], "duration_s": d["duration_s"],
                    "load_before": d["load_before"], "load_after": d["load_after"], "errors": d["errors"]}
                   for p, d in zip(paths, docs, strict=True)],
        "routers": {router: {sc: {mode: {"summary": summarize_fresh(reps),
                                         "return_lost_total": sum(r.get("return_lost", 0) for r in reps),
                                         "reps_with_return_loss": sum(1 for r in reps if r.get("return_lost")),
                                         "reps": reps}
                                  for mode, reps in modes.items()}
                             for sc, modes in scs.items()}
                    for router, scs in grouped.items()},
    }


def _brief(fresh: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "fresh_udp_lost", "fresh_udp_sent", "reps_with_fresh_udp_loss", "server_push_tcp_survived",
            "tcp_survived", "snat_port_changed", "snat_port_unknown", "long_lived_lost", "server_push_tcp_stall_ms",
            "server_push_stall_over_convergence_ms", "router_convergence_ms", "eip_unsolicited_drops_on_others")
    return {sc: {mode: {k: got["summary"].get(k) for k in keys} for mode, got in modes.items()}
            for sc, modes in fresh.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.bench.fresh_series", description=__doc__.split("\n\n")[0])
    p.add_argument("--router", choices=sorted(ROUTERS), default="bird")
    p.add_argument("--fault", default="drain", help="comma-separated: drain, uplink_cut, power_off")
    p.add_argument("--sync", default="on", help="comma-separated sync modes in run order: on, off")
    p.add_argument("--reps", type=int, default=25)
    p.add_argument("--merge", nargs="+", type=Path, help="add up the chunks' JSON files instead of running")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.merge:
        doc = merge(a.merge)
        a.out.write_text(json.dumps(doc, indent=1))
        brief = {router: _brief(fresh) for router, fresh in doc["routers"].items()}
    else:
        faults = [f for f in a.fault.split(",") if f]
        syncs = [m for m in a.sync.split(",") if m]
        bad = [f for f in faults if f not in FAULTS] + [m for m in syncs if m not in ("on", "off")]
        if bad or not faults or not syncs:
            p.error(f"--fault/--sync: unknown or missing {bad}")
        doc = run_chunk(a.router, faults, syncs, a.reps, a.out)
        brief = {a.router: _brief(doc["fresh_flows"]), "errors": doc["errors"]}
    print(json.dumps(brief, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
