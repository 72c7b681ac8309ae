"""ExaBGP killed on every member at once, in the BGP testbed: BIRD 2 and FRR, with and without graceful restart.

The issue this measures: when every member's speaker dies together, the routers drop every path unless they keep
them through a graceful restart; the data plane is fine all along. Setup as `lab.bench.bgp_failover` (a client sends
a UDP datagram to the EIP every 10 ms, both gateways echo, gw1 primary); per round both ExaBGPs are SIGKILLed at the
same moment while the probe runs. Per round: outage (longest run of lost probes x interval), lost probes, and how
long until both speakers were respawned with their sessions up and their routes acknowledged (`back_ms`). Figures
are reported, never asserted.

    python -m lab.bench.bgp_restart --rounds 5 --out restart.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.core.waiting import elapsed_until
from lab.bench.bgp_failover import EIP, PORT, Bench


def kill_every_exabgp(bench: Bench) -> dict[str, Any]:
    """One round: the probe runs 4 s; at 1 s every member's ExaBGP is SIGKILLed."""
    tb = bench.bed.tb
    gws = bench.bed.gateways
    proc = subprocess.Popen([*tb.exec_prefix(tb.client_ns), sys.executable, "-m", "lab.bench.bgp_failover", "probe",
                             EIP, str(PORT), "4.0"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the probe did not start")
    time.sleep(1.0)
    before = [(g.speaker.exabgp_pid, g.speaker.restarts) for g in gws]
    for pid, _ in before:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)

    def recovered() -> bool:
        return all(g.speaker.restarts > r and g.speaker.exabgp_pid not in (None, p) and g.speaker.wait_peers("up", 0)
                   and g.speaker.converged() for g, (p, r) in zip(gws, before, strict=True))  # fmt: skip

    back = elapsed_until(recovered, timeout=60, interval=0.01)
    out, _ = proc.communicate(timeout=30)
    probe = json.loads(out.strip().splitlines()[-1])
    bench.ready()
    return {"outage_ms": probe["outage_ms"], "lost": probe["lost"], "sent": probe["sent"],
            "back_ms": None if back is None else round(back * 1000, 1)}  # fmt: skip


def run(rounds: int, workdir: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for router in ("bird", "frr"):
        for gr in (True, False):
            bench = Bench(router, workdir / f"{router}-{int(gr)}", graceful_restart=gr)
            try:
                bench.up()
                for rnd in range(rounds):
                    row = {"router": router, "graceful_restart": gr, "round": rnd, **kill_every_exabgp(bench)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                bench.close()
    return {"interval_ms": 10, "fault": "ExaBGP SIGKILLed on every member at once", "rounds": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.bench.bgp_restart", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="egt-bg-restart-") as tmp:
        report = run(args.rounds, Path(tmp))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
