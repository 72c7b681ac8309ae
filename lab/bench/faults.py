"""`egressgw bench faults --out FILE.json`: what an operator's bad day costs, measured in the lab with real parts.

One lab (real kube-apiserver, two gateway members with ExaBGP + BFD, BIRD 2 router), the demo's objects, and one
probe process (`lab.bench.probes`: UDP every 10 ms + one TCP stream) from a selected pod for the whole run. Each
fault is cut out of the probe's record as a window `[fault - 0.2 s, healed + settle)`:

| fault (JSON key) | what is done |
|---|---|
| `all_members_api_cut` | every gateway member cut off from the API server (nftables drop in its namespace) |
| `api_partition_primary` | the EIP's primary alone cut off; during the cut an unselected pod gets the policy's labels |
| `api_down` | the kube-apiserver process stopped, then started again |
| `exabgp_all_killed` | ExaBGP SIGKILLed on every member at once, several rounds (the services respawn it) |
| `service_sigkill_storm` | the primary's gateway service SIGKILLed and started again, many times |
| `bad_input` | hundreds of invalid policies created at once |

`api_partition_primary.new_pod_carried_s`: from the label to the pod's first datagram leaving with the EIP;
`bad_input.last_condition_s`: from the first write to the last policy reported Invalid.

Figures per fault: `lost` (UDP probes unanswered), `outage_ms` (longest run of lost probes, 0 when none), TCP
breaks; per round for the ExaBGP rounds. Goals (issue 13): 0 lost with every member cut from the API server and
with the API server down; ExaBGP killed everywhere < 1 s per round.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.core.waiting import wait_until
from lab import netns
from lab.bench.harness import set_up_workload, wait_steady
from lab.bench.probes import RawProbe, RawRun, window
from lab.faults import api_cut
from lab.scenarios import demo_pods, stable_primary
from lab.state import DaemonRecord
from lab.system import DEFAULT_TOPOLOGY, System, restart_apiserver
from lab.tables import render_table

PREFIX = "egt-bf-"
BEFORE_S = 0.2
SETTLE_S = 5.0  # probing goes on this long after a fault is healed: what the heal itself costs is counted too


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    cut_s: float
    exabgp_rounds: int
    sigkills: int
    bad_policies: int


FULL = Sizes(cut_s=60.0, exabgp_rounds=5, sigkills=20, bad_policies=500)
QUICK = Sizes(cut_s=15.0, exabgp_rounds=2, sigkills=3, bad_policies=50)


@dataclass
class Run:
    system: System
    lab_pod: str
    eip: str
    say: Callable[[str], None]
    windows: dict[str, list[tuple[float, float]]]
    extra: dict[str, dict[str, Any]]

    def record(self, name: str, t0: float, t1: float) -> None:
        self.windows.setdefault(name, []).append((t0 - BEFORE_S, t1))


def _pids_named(system: System, node: str, needle: bytes, *, exclude: bytes = b"") -> list[int]:
    out = []
    for pid in netns.pids(system.lab.netns(node)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and not (exclude and exclude in cmdline):
            out.append(pid)
    return out


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ----- the faults -----

def all_members_api_cut(r: Run, sizes: Sizes) -> None:
    t0 = time.time()
    with api_cut(r.system, *r.system.gateways):
        time.sleep(sizes.cut_s)
    time.sleep(SETTLE_S)
    r.record("all_members_api_cut", t0, time.time())


def api_partition_primary(r: Run, sizes: Sizes) -> None:
    """A pod created during the primary's partition, in the policy's namespace with the policy's labels (the lab pod
    of an unselected demo pod stands in for it: its Pod object moves to the policy's namespace)."""
    primary = stable_primary(r.system, r.eip)
    pods = demo_pods(r.system)
    newcomer = next(p for p in pods if not p.selected)
    like = next(p for p in pods if p.selected)
    name = f"{like.name}-new"
    carried: float | None = None
    t0 = time.time()
    labelled = t0
    try:
        with api_cut(r.system, primary):
            time.sleep(2.0)  # the member's connections are dead before the change is made
            r.system.delete_pod(newcomer.namespace, newcomer.name)
            labelled = time.time()
            r.system.create_pod(like.namespace, name, newcomer.lab_pod, dict(like.labels))
            deadline = labelled + sizes.cut_s
            while time.time() < deadline and carried is None:
                if r.system.seen_source(newcomer.lab_pod, timeout=0.5) == r.eip:
                    carried = time.time() - labelled
            during = carried is not None
            while time.time() < deadline:  # the cut lasts its full time whatever happened
                time.sleep(0.2)
        if carried is None:  # not carried during the cut: how long after the partition healed
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: r.system.seen_source(newcomer.lab_pod, timeout=0.5) == r.eip, timeout=60,
                           interval=0.0, what="the newly selected pod to leave with the EIP")
                carried = time.time() - labelled
        time.sleep(SETTLE_S)
        r.record("api_partition_primary", t0, time.time())
        r.extra["api_partition_primary"] = {
            "new_pod_carried_s": None if carried is None else round(carried, 2),
            "carried_during_cut": during, "primary": primary, "cut_s": sizes.cut_s}
    finally:
        with contextlib.suppress(Exception):
            r.system.delete_pod(like.namespace, name)
        with contextlib.suppress(Exception):
            r.system.create_pod(newcomer.namespace, newcomer.name, newcomer.lab_pod, dict(newcomer.labels))


def api_down(r: Run, sizes: Sizes) -> None:
    t0 = time.time()
    restart_apiserver(r.system, down_for=sizes.cut_s)
    time.sleep(SETTLE_S)
    r.record("api_down", t0, time.time())


def exabgp_all_killed(r: Run, sizes: Sizes) -> None:
    for _ in range(sizes.exabgp_rounds):
        wait_steady(r.system)
        t0 = time.time()
        _kill([pid for gw in r.system.gateways for pid in _pids_named(r.system, gw, b"exabgp",
                                                                       exclude=b"appliance.cli")])
        wait_steady(r.system)
        time.sleep(1.0)
        r.record("exabgp_all_killed", t0, time.time())


def _gone(system: System, node: str, rec: DaemonRecord) -> bool:
    """The service and the children that die with it (ExaBGP, its API bridge) are gone; the BFD sidecar stays on
    purpose and the next start adopts it (`bgp.bfd_sidecar`)."""
    return not system.lab.daemon_alive(rec) and not any(
        _pids_named(system, node, needle, exclude=b"appliance.cli") for needle in (b"exabgp", b"api_bridge"))


def service_sigkill_storm(r: Run, sizes: Sizes) -> None:
    primary = stable_primary(r.system, r.eip)
    t0 = time.time()
    for _ in range(sizes.sigkills):
        rec = r.system.lab.daemon(primary, "egressgw-gateway")
        if rec is None:
            raise RuntimeError(f"{primary} has no gateway service")
        _kill([rec.pid])  # the service alone: ExaBGP must die with it (parent-death signal), BFD stays
        wait_until(functools.partial(_gone, r.system, primary, rec), timeout=15, interval=0.05,
                   what=f"{primary}'s service and its children to be gone")
        r.system.start_gateway(primary)
        time.sleep(1.0)
    wait_steady(r.system)
    time.sleep(1.0)
    r.record("service_sigkill_storm", t0, time.time())


def bad_input(r: Run, sizes: Sizes) -> None:
    ns = "faults-bad"
    r.system.ensure_namespace(ns)
    names = [f"bad-{i}" for i in range(sizes.bad_policies)]
    t0 = time.time()
    for n in names:  # invalid: useNodeIP together with an explicit EIP (names spec.egressIP.useNodeIP)
        r.system.apply([{"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressPolicy",
                         "metadata": {"name": n, "namespace": ns},
                         "spec": {"egressIP": {"ipv4": r.eip, "useNodeIP": True},
                                  "appliedTo": {"podSelector": {"matchLabels": {"app": n}}}}}])
    written = time.time()
    pending = set(names)

    def all_reported() -> bool:
        for n in list(pending):
            conds = (r.system.get("EgressPolicy", n, ns).get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Invalid" and c.get("status") == "True" for c in conds):
                pending.discard(n)
        return not pending

    with contextlib.suppress(TimeoutError):
        wait_until(all_reported, timeout=300, interval=0.2, what="every invalid policy reported")
    done = time.time()
    r.extra["bad_input"] = {"objects": len(names), "write_s": round(written - t0, 2),
                            "last_condition_s": None if pending else round(done - t0, 2),
                            "unreported": len(pending)}
    for n in names:
        with contextlib.suppress(Exception):
            r.system.delete("EgressPolicy", n, ns)
    r.record("bad_input", t0, done)


FAULTS: dict[str, Callable[[Run, Sizes], None]] = {
    "all_members_api_cut": all_members_api_cut,
    "api_partition_primary": api_partition_primary,
    "api_down": api_down,
    "exabgp_all_killed": exabgp_all_killed,
    "service_sigkill_storm": service_sigkill_storm,
    "bad_input": bad_input,
}


# ----- analysis (pure) -----

def analyse(raw: RawRun, windows: dict[str, list[tuple[float, float]]],
            extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spans in windows.items():
        rounds: list[dict[str, Any]] = []
        for t0, t1 in spans:
            w = window(raw, t0, t1)
            rounds.append({"lost": w.udp.lost, "sent": w.udp.sent, "outage_ms": round(w.outage_ms, 1),
                           "tcp_breaks": w.tcp_breaks, "sources": list(w.sources)})
        out[name] = {"lost": sum(x["lost"] for x in rounds), "sent": sum(x["sent"] for x in rounds),
                     "outage_ms": max((float(x["outage_ms"]) for x in rounds), default=0.0),
                     "tcp_breaks": sum(x["tcp_breaks"] for x in rounds), **extra.get(name, {})}
        if len(rounds) > 1:
            out[name]["rounds"] = rounds
    return out


def table_rows(faults: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, f in faults.items():
        note = ""
        if "new_pod_carried_s" in f:
            note = f"new pod carried after {f['new_pod_carried_s']} s"
        elif "last_condition_s" in f:
            note = f"{f['objects']} objects, last condition after {f['last_condition_s']} s"
        elif "rounds" in f:
            note = "outage per round (ms): " + ", ".join(f"{x['outage_ms']:.0f}" for x in f["rounds"])
        if "error" in f:
            note = f"did not complete: {f['error']}"
        rows.append([name, f.get("sent", 0), f.get("lost", 0), f"{f.get('outage_ms', 0.0):.0f}",
                     f.get("tcp_breaks", 0), note])
    return rows


HEADERS = ["fault", "probes", "lost", "outage (ms)", "TCP breaks", "notes"]


def run_faults_bench(out_path: Path, *, quick: bool = False, faults: tuple[str, ...] = ()) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    chosen = [f for f in FAULTS if not faults or f in faults]
    started = time.time()

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - started:4.0f}s] {msg}", flush=True)

    say(f"bringing up the lab ({DEFAULT_TOPOLOGY.name})")
    system = System.up(DEFAULT_TOPOLOGY, prefix=PREFIX)
    probe: RawProbe | None = None
    errors: dict[str, str] = {}
    try:
        w = set_up_workload(system)
        wait_steady(system)
        run = Run(system=system, lab_pod=w.lab_pod, eip=w.eip, say=say, windows={}, extra={})
        probe = RawProbe(system.lab, w.lab_pod, server=system.external_address(4), port=system.ext_port).start()
        for name in chosen:
            say(f"{name}")
            try:
                FAULTS[name](run, sizes)
                wait_steady(system)
            except Exception as e:  # record it and go on with the next fault
                errors[name] = f"{type(e).__name__}: {e}"
                say(f"{name} FAILED: {errors[name]}")
        raw = probe.stop()
        probe = None
        results = analyse(raw, run.windows, run.extra)
    finally:
        if probe is not None:
            probe.kill()
        system.down()
    for name, err in errors.items():
        results.setdefault(name, {})["error"] = err
    doc = {
        "benchmark": "faults",
        "command": "egressgw bench faults" + (" --quick" if quick else "") + f" --out {out_path}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "sizes": {"cut_s": sizes.cut_s, "exabgp_rounds": sizes.exabgp_rounds, "sigkills": sizes.sigkills,
                  "bad_policies": sizes.bad_policies},
        "probe": "UDP every 10 ms + one TCP stream, pod -> VXLAN -> gateway SNAT -> router -> server",
        "goals": {"all_members_api_cut.lost": 0, "api_down.lost": 0, "exabgp_all_killed.outage_ms": 1000},
        "faults": results,
    }
    out_path.write_text(json.dumps(doc, indent=1))
    print(render_table(HEADERS, table_rows(results), title="Faults"))
    return doc
