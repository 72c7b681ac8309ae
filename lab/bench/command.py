"""`egressgw bench NAME --out FILE.json`: run one benchmark, print its table, write its figures as JSON.

Benchmarks measure; tests assert behaviour. Each benchmark lives next to the code it measures and is imported
lazily here, so `egressgw bench --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

#: the one-line help of `egressgw bench` (read by appliance.cli.main without importing this module)
SUMMARY = "run benchmarks and write their figures as JSON"

#: name -> (module, function, help). The function takes (out_path: Path, **options) and returns the figures dict.
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "sync": ("lab.bench.sync", "run_sync_bench", "cluster sync + resolution at scale against a real API server"),
    "datapath": ("lab.bench.datapath", "run_datapath_bench", "tunnel + SNAT throughput and plan/apply time"),
    "wireguard": ("lab.bench.wireguard", "run_wireguard_bench", "WireGuard vs VXLAN vs direct; WG failover"),
    "failover": ("lab.bench.failover", "run_failover_bench", "outage per failure scenario in the lab (BIRD, FRR)"),
    "failover-wireguard": ("lab.bench.failover_wireguard", "run_wireguard_failover_bench",
                           "uplink-cut failover of a WireGuard gateway instance in the lab"),
    "convergence": ("lab.bench.convergence", "run_convergence_bench", "pod IP written -> first packet with EIP"),
    "faults": ("lab.bench.faults", "run_faults_bench",
               "lost/outage per fault: API partitions, API server down, ExaBGP crashes, SIGKILLs, bad input"),
    "scale": ("lab.bench.scale", "run_scale_bench",
              "issue 16 at 10k/100k pods: plan/apply/resync/churn CPU, new policy, RSS, a rollout's event rate"),
}

#: the benchmarks that take `--topology FILE` / `--scenario FILE`
TOPOLOGY_BENCHMARKS = frozenset({"failover"})


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file for the figures (default bench/results/NAME.json)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes / fewer repetitions (smoke run)")
    parser.add_argument("--sizes", default=None, help="scale only: comma-separated pod counts (e.g. 10000,100000)")
    parser.add_argument("--topology", type=Path, default=None,
                        help="failover only: run on this lab topology (its router kind read from it) instead of the "
                             "project's BIRD and FRR labs")
    parser.add_argument("--scenario", type=Path, default=None,
                        help="failover only: the scenario file (default: NAME.scenario.yml beside each topology)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module, function, _ = BENCHMARKS[args.name]
    out: Path = args.out or Path("bench/results") / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    bench = getattr(importlib.import_module(module), function)
    options: dict[str, object] = {"sizes": args.sizes} if args.sizes else {}
    for key, kwarg in (("topology", "topology"), ("scenario", "scenario_file")):
        if getattr(args, key, None) is not None:
            if args.name not in TOPOLOGY_BENCHMARKS:
                print(f"--{key} applies to: {', '.join(sorted(TOPOLOGY_BENCHMARKS))}")
                return 2
            options[kwarg] = getattr(args, key)
    bench(out, quick=args.quick, **options)
    print(f"figures written to {out}")
    return 0
