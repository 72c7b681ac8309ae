"""`egressgw bench wireguard`: WireGuard (wireguard-go here) vs VXLAN vs the direct path, and WireGuard failover.

Measures, in one namespace testbed (lab.testbeds.wireguard; both ends share this machine's CPUs, so only the
ratios mean something):
- iperf3 TCP throughput pod -> external through WireGuard + SNAT, through a plain VXLAN tunnel + SNAT to the same
  gateway, and routed directly; ratios WireGuard/VXLAN and WireGuard/direct (no target: userspace WireGuard here;
  production uses the kernel module);
- the failover outage of a 10 ms UDP echo probe when the routers move the instance endpoint (the EIP) from one
  member to the other, with the agent's liveness prober (fast re-handshake): p50/p95/max over the runs; and, not in
  quick mode, one run without the prober (WireGuard's own timers) for comparison.
Writes the figures as JSON and prints a table.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from lab.bench.stats import percentile
from lab.testbeds.wireguard import EXTERNAL, WireguardTestbed, parse_probe


def _iperf(tb: WireguardTestbed, source: str, seconds: int, *, reverse: bool = False) -> float:
    args = ["iperf3", "-c", str(EXTERNAL), "-B", source, "-t", str(seconds), "-J", "-p", "5201"]
    out = tb.run("pod", *args, *(["-R"] if reverse else []), check=False)
    try:
        data = json.loads(out)
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError):
        return 0.0


def _vxlan_path(tb: WireguardTestbed) -> None:
    """A plain VXLAN tunnel worker <-> gw1 for pod source 100.64.1.11 (same SNAT, same router)."""
    tb.run("wk", "ip", "link", "add", "egt-vx", "type", "vxlan", "id", "7700", "local", "100.127.0.11", "remote",
           "198.51.100.11", "dstport", "4789")
    tb.run("gw1", "ip", "link", "add", "egt-vx", "type", "vxlan", "id", "7700", "local", "198.51.100.11", "remote",
           "100.127.0.11", "dstport", "4789")
    for role, addr in (("wk", "100.126.0.1/30"), ("gw1", "100.126.0.2/30")):
        tb.run(role, "ip", "addr", "add", addr, "dev", "egt-vx")
        tb.run(role, "ip", "link", "set", "egt-vx", "up")
        tb.run(role, "sysctl", "-qw", "net.ipv4.conf.egt-vx.rp_filter=2")
    tb.run("wk", "ip", "rule", "add", "pref", "101", "from", "100.64.1.11", "lookup", "101")
    tb.run("wk", "ip", "route", "add", "default", "via", "100.126.0.2", "table", "101")
    tb.run("gw1", "ip", "route", "add", "100.64.1.11/32", "via", "100.126.0.1")


def _failover_runs(tb: WireguardTestbed, runs: int) -> list[dict[str, float]]:
    results: list[dict[str, float]] = []
    for _ in range(runs):
        probe = tb.probe_udp(duration=2.5)
        time.sleep(1.0)
        tb.route_eip_to(2 if tb.routed_to == 1 else 1)
        out, _ = probe.communicate(timeout=30)
        results.append(parse_probe(out))
        time.sleep(0.3)
    return results


def run_wireguard_bench(out_path: Path, *, quick: bool = False) -> dict[str, Any]:
    seconds = 3 if quick else 5
    runs = 4 if quick else 12
    tb = WireguardTestbed()
    figures: dict[str, Any] = {"backend": str(tb.backend), "iperf_seconds": seconds}
    try:
        tb.up()
        tb.apply_all()
        _vxlan_path(tb)
        tb.spawn("ext", "iperf3", "-s", "-p", "5201")
        tb.start_echo_server()
        time.sleep(0.3)
        tput = {
            "wireguard": _iperf(tb, "100.64.1.10", seconds),
            "vxlan": _iperf(tb, "100.64.1.11", seconds),
            "direct": _iperf(tb, "100.64.1.12", seconds),
        }
        figures["throughput_gbps"] = tput
        figures["ratio_wireguard_to_vxlan"] = tput["wireguard"] / tput["vxlan"] if tput["vxlan"] else None
        figures["ratio_wireguard_to_direct"] = tput["wireguard"] / tput["direct"] if tput["direct"] else None
        variants = [(100, 3)] if quick else [(100, 3), (50, 3)]
        figures["failover"] = {}
        for interval_ms, misses in variants:
            prober = tb.start_prober(interval=interval_ms / 1000, misses=misses)
            time.sleep(0.5)
            results = _failover_runs(tb, runs)
            prober.kill()
            prober.communicate(timeout=10)
            outages = [r["outage_ms"] for r in results]
            figures["failover"][f"{interval_ms}msx{misses}"] = {
                "runs": len(outages), "probe_interval_ms": 10,
                "liveness": {"interval_ms": interval_ms, "misses": misses},
                "outage_ms": outages, "p50_ms": percentile(outages, 50), "p95_ms": percentile(outages, 95),
                "max_ms": max(outages),
            }
        if not quick:
            probe = tb.probe_udp(duration=25.0)
            time.sleep(1.0)
            tb.route_eip_to(2 if tb.routed_to == 1 else 1)
            out, _ = probe.communicate(timeout=60)
            figures["failover_without_prober_ms"] = parse_probe(out)["outage_ms"]
    except subprocess.SubprocessError as exc:
        figures["error"] = str(exc)
        raise
    finally:
        tb.close()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(figures, indent=2) + "\n")
    _print_table(figures)
    return figures


def _print_table(f: dict[str, Any]) -> None:
    t = f.get("throughput_gbps", {})
    print(f"WireGuard benchmark ({f['backend']}, iperf3 {f['iperf_seconds']} s, same 2 CPUs for both ends)")
    print(f"{'path':<28}{'Gbit/s':>10}")
    for name in ("direct", "vxlan", "wireguard"):
        print(f"{name:<28}{t.get(name, 0.0):>10.2f}")
    for key in ("ratio_wireguard_to_vxlan", "ratio_wireguard_to_direct"):
        value = f.get(key)
        print(f"{key:<28}{value:>10.2f}" if value is not None else f"{key:<28}{'n/a':>10}")
    for name, fo in f.get("failover", {}).items():
        print(f"failover, endpoint moved by the routers ({fo['runs']} runs, liveness prober {name}):")
        print(f"{'  outage p50 / p95 / max ms':<28}{fo['p50_ms']:>8.0f} {fo['p95_ms']:>6.0f} {fo['max_ms']:>6.0f}")
    if "failover_without_prober_ms" in f:
        print(f"{'  without prober (WG timers)':<28}{f['failover_without_prober_ms']:>8.0f} ms")
