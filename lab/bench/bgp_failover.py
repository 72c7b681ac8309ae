"""Failover benchmark in the BGP testbed: a 10 ms UDP probe across member failures, BIRD 2 and FRR routers.

Scaffolding for `egressgw bench failover` (the full-lab version sends the probe from a pod through the tunnel).
Here: a client sends a UDP datagram to the EIP every 10 ms; both gateways hold the EIP on `lo` and echo; gw1 is
preferred (MED 100), gw2 is the backup (MED 110). Per scenario and repetition the fault hits gw1 while the probe
runs; we report the outage (longest run of lost probes x interval), the packets lost, and the router's convergence
time (fault -> the router's kernel route points at gw2). Figures are reported, never asserted.

    python -m lab.bench.bgp_failover --router bird --router frr --reps 10 --out failover.json
    python -m lab.bench.bgp_failover echo ADDR PORT          # internal: the gateways' responder
    python -m lab.bench.bgp_failover probe ADDR PORT SECONDS # internal: the client's probe (JSON on stdout)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from appliance.core.waiting import elapsed_until
from bgp.announcing import Announcement
from bgp.draining import drain_announcements
from bgp.settings import DrainSettings
from bgp.speaker import BgpSpeaker
from lab.testbeds.bgp import Bed, Testbed, gw_v4, sh

EIP = "203.0.113.130"
PORT = 9000
INTERVAL_S = 0.01
SCENARIOS = ("exabgp_kill", "link_cut", "sigterm", "drain")


# ----- the probe and the responder (run inside namespaces) -----


def echo(addr: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: the EIP may not be on lo yet
    sock.bind((addr, port))
    while True:
        data, peer = sock.recvfrom(64)
        sock.sendto(data, peer)


def probe(addr: str, port: int, seconds: float, interval: float = INTERVAL_S) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    n = int(seconds / interval)
    received: set[int] = set()
    start = time.monotonic()
    for seq in range(n):
        target = start + seq * interval
        while True:
            try:
                data = sock.recv(64)
                received.add(struct.unpack("!I", data[:4])[0])
            except BlockingIOError:
                pass
            left = target - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.002))
        with contextlib.suppress(OSError):  # no route for a moment
            sock.sendto(struct.pack("!Id", seq, time.time()), (addr, port))
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        try:
            received.add(struct.unpack("!I", sock.recv(64)[:4])[0])
        except BlockingIOError:
            time.sleep(0.002)
    lost = [s for s in range(n) if s not in received]
    longest = run = 0
    for s in range(n):
        run = run + 1 if s not in received else 0
        longest = max(longest, run)
    return {"sent": n, "lost": len(lost), "outage_ms": round(longest * interval * 1000, 1), "start": start}


# ----- orchestration -----


def _anns(med: int) -> frozenset[Announcement]:
    return frozenset({Announcement(prefix=ip_network(f"{EIP}/32"), med=med)})


class Bench:
    def __init__(self, router: str, workdir: Path, *, bfd: bool = True, graceful_restart: bool = False) -> None:
        self.bfd = bfd
        self.bed = Bed(Testbed(workdir=workdir, router=router, bfd=bfd,  # type: ignore[arg-type]
                               graceful_restart=graceful_restart))  # fmt: skip
        self._echo: list[subprocess.Popen[bytes]] = []

    def up(self) -> None:
        tb = self.bed.tb
        tb.up()
        tb.start_router()
        for i in (1, 2):
            sh("ip", "-n", tb.gw_ns(i), "addr", "add", f"{EIP}/32", "dev", "lo")
            self._echo.append(subprocess.Popen(
                [*tb.exec_prefix(tb.gw_ns(i)), sys.executable, "-m", "lab.bench.bgp_failover", "echo", EIP, str(PORT)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            gw = self.bed.gateway(i, bfd=self.bfd)
            gw.speaker.set_announcements(_anns(100 if i == 1 else 110))
        self.ready()

    def ready(self, timeout: float = 30.0) -> None:
        """Both members up and announcing, BFD up on gw1, the router using gw1."""
        tb = self.bed.tb
        for gw in self.bed.gateways:
            if not gw.speaker.wait_peers("up", timeout):
                raise TimeoutError(f"gw{gw.index} sessions: {gw.speaker.peer_states()}")
        g1 = self.bed.gateways[0]
        if self.bfd and elapsed_until(lambda: g1.bfd.peer_states().get("198.51.100.1") == "Up",
                                      timeout=timeout) is None:
            raise TimeoutError(f"gw1 BFD: {g1.bfd.peer_states()}")
        if elapsed_until(lambda: tb.router_route(f"{EIP}/32") == [str(gw_v4(1))], timeout=timeout) is None:
            raise TimeoutError("router does not prefer gw1")
        cmd = f"show route {EIP}/32 all" if tb.router == "bird" else f"show bgp ipv4 unicast {EIP}/32"
        if elapsed_until(lambda: str(gw_v4(2)) in tb.router_cli(cmd), timeout=timeout) is None:
            raise TimeoutError("router has no backup path via gw2")

    def fault(self, scenario: str) -> None:
        g1 = self.bed.gateways[0]
        if scenario == "exabgp_kill":
            pid = g1.speaker.exabgp_pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        elif scenario == "link_cut":
            self.bed.tb.cut(1)
        elif scenario == "sigterm":
            g1.speaker.stop()
        elif scenario == "drain":
            drain_announcements(g1.speaker, DrainSettings(timeout_s=5.0, settle_s=0.5))
        else:
            raise ValueError(scenario)

    def restore(self, scenario: str) -> None:
        g1 = self.bed.gateways[0]
        if scenario == "link_cut":
            self.bed.tb.restore(1)
        elif scenario == "sigterm":
            tb = self.bed.tb
            g1.speaker = BgpSpeaker(g1.speaker.settings, g1.speaker.workdir, command_prefix=tb.exec_prefix(tb.gw_ns(1)))
            g1.speaker.start()
        g1.speaker.set_announcements(_anns(100))
        self.ready()

    def run_once(self, scenario: str, *, probe_s: float = 3.0, fault_at_s: float = 1.0) -> dict[str, Any]:
        tb = self.bed.tb
        result: dict[str, Any] = {}

        # the probe says "ready" once it runs (Python start-up under load can take a second), then the fault comes
        proc = subprocess.Popen(
            [*tb.exec_prefix(tb.client_ns), sys.executable, "-m", "lab.bench.bgp_failover", "probe", EIP, str(PORT),
             str(probe_s)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe did not start")
        time.sleep(fault_at_s)
        t0 = time.monotonic()
        self.fault(scenario)
        moved = elapsed_until(lambda: tb.router_route(f"{EIP}/32") == [str(gw_v4(2))],
                              timeout=probe_s + 5, interval=0.002)
        fault_ms = (time.monotonic() - t0) * 1000 if scenario == "drain" else None
        out, _ = proc.communicate(timeout=probe_s + 10)
        result.update(json.loads(out.strip().splitlines()[-1]))
        self.restore(scenario)
        return {
            "scenario": scenario,
            "router": tb.router,
            "bfd": self.bfd,
            "outage_ms": result.get("outage_ms"),
            "lost": result.get("lost"),
            "sent": result.get("sent"),
            "router_convergence_ms": None if moved is None else round(moved * 1000, 1),
            "drain_ms": None if fault_ms is None else round(fault_ms, 1),
        }

    def close(self) -> None:
        for p in self._echo:
            p.kill()
            p.wait()
        self.bed.close()


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted({(r["router"], r["scenario"]) for r in runs}):
        rs = [r for r in runs if (r["router"], r["scenario"]) == key]
        out = [float(r["outage_ms"]) for r in rs if r["outage_ms"] is not None]
        conv = [float(r["router_convergence_ms"]) for r in rs if r["router_convergence_ms"] is not None]
        rows.append({
            "router": key[0], "scenario": key[1], "runs": len(rs),
            "outage_p50_ms": _pct(out, 0.5) if out else None, "outage_p95_ms": _pct(out, 0.95) if out else None,
            "outage_max_ms": max(out) if out else None, "lost_total": sum(int(r["lost"] or 0) for r in rs),
            "convergence_p50_ms": round(statistics.median(conv), 1) if conv else None,
        })  # fmt: skip
    return rows


def run_bench(
    routers: list[str], scenarios: list[str], reps: int, workdir: Path, *, bfd: bool = True, probe_s: float = 3.0
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for router in routers:
        bench = Bench(router, workdir / router, bfd=bfd)
        try:
            bench.up()
            for scenario in scenarios:
                for _ in range(reps):
                    runs.append(bench.run_once(scenario, probe_s=probe_s))
        finally:
            bench.close()
    detection = "BFD 50 ms x 3" if bfd else "BGP hold time 3 s (no BFD)"
    return {"interval_ms": INTERVAL_S * 1000, "detection": detection, "runs": runs, "summary": summarise(runs)}


def run_testbed_failover_bench(out: Path, *, quick: bool = False) -> dict[str, Any]:
    """`egressgw bench`-style entry point: (out path, quick) -> figures; prints the table and writes the JSON."""
    with tempfile.TemporaryDirectory(prefix="egt-bg-bench-") as tmp:
        report = run_bench(["bird", "frr"], list(SCENARIOS), 2 if quick else 10, Path(tmp))
    print_table(report["summary"])
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_table(summary: list[dict[str, Any]]) -> None:
    cols = ["router", "scenario", "runs", "outage_p50_ms", "outage_p95_ms", "outage_max_ms", "lost_total",
            "convergence_p50_ms"]  # fmt: skip
    print(" | ".join(cols))
    for row in summary:
        print(" | ".join("-" if row[c] is None else str(row[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["echo"]:
        echo(args[1], int(args[2]))
        return 0
    if args[:1] == ["probe"]:
        print("ready", flush=True)
        print(json.dumps(probe(args[1], int(args[2]), float(args[3]))))
        return 0
    p = argparse.ArgumentParser(prog="python -m lab.bench.bgp_failover", description=__doc__.split("\n")[0])
    p.add_argument("--router", action="append", choices=["bird", "frr"], help="repeatable; default both")
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable; default all")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-bfd", action="store_true", help="routers and gateways without BFD (hold time only)")
    p.add_argument("--out", type=Path)
    ns = p.parse_args(args)
    with tempfile.TemporaryDirectory(prefix="egt-bg-bench-") as tmp:
        report = run_bench(ns.router or ["bird", "frr"], ns.scenario or list(SCENARIOS), ns.reps, Path(tmp),
                           bfd=not ns.no_bfd, probe_s=6.0 if ns.no_bfd else 3.0)  # fmt: skip
    print_table(report["summary"])
    if ns.out:
        ns.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
