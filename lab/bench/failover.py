"""`egressgw bench failover --out FILE.json`: the outage of every failure scenario, measured in the lab with a
real kube-apiserver, real gateway members (ExaBGP + BFD) and a real upstream router (BIRD 2, then FRR).

Per router the lab comes up once (BIRD: lab/topologies/default.clab.yml, FRR: default-frr.clab.yml; `--topology
FILE` runs one lab of the user's instead, its router kind read from the topology, its scenario from `--scenario FILE`
or the topology's own `NAME.scenario.yml`) (`System.up`), the demo's objects are applied, and one probe process
(`lab.bench.probes`: UDP every 10 ms + one long-lived TCP stream) runs from a selected pod for the whole series. Each
repetition: wait until every member announces with its ranked preference, take the member the router forwards the
EIP to right now, perform the fault, keep probing, bring the member back (and measure that as "member returns"),
wait until both members are announced again. One `ip -ts monitor route` in the router's namespace timestamps the
router's kernel route changes (`lab.bench.harness.RouteMonitor`): the router convergence time is the first change of
the EIP's route away from the faulted member after the fault (router restart: the route being installed again).

Scenarios (`SCENARIOS`): uplink cut (hard: the switch port goes down, the router keeps carrier), all the member's
processes SIGKILLed, power-off (processes killed + uplink cut), ExaBGP alone SIGKILLed (the service respawns it),
service SIGTERM (drain), `egressgw gateway drain`, router BGP daemon restart, and the uplink cut again with BFD off
on the members (hold time 3 s bounds the outage). Figures: outage p50/p95/max (the longest run of lost UDP probes,
0 when none was lost), packets lost, router convergence, TCP survived + longest stall. Goals (issue 6): hard
failure <= detection + 50 ms at p99 (<= 200 ms with BFD 50 ms x 3), drain and SIGTERM 0 lost, no BFD <= hold +
0.5 s. Every repetition is also drawn as a timeline SVG (`lab.plots`: probes, route changes, the members' BGP,
BFD and drain events) into `<out stem>-plots/<router>/` beside the JSON.

Fresh flows (issue 15, `lab.bench.fresh_flows`): after those scenarios, `FRESH_FAULTS` (drain, uplink cut,
power-off) run again as `fresh_<fault>` with a fresh UDP flow and a fresh server-push TCP connection created through
the primary just before each fault, once per state-sync mode (the members restarted with `state_sync.enabled` true,
then false), so the JSON (`fresh_flows`) and the second table show sync on and off side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.core.waiting import wait_until
from lab import netns
from lab.bench.fresh_flows import (
    FRESH_HEADERS,
    FreshFlows,
    FreshRaw,
    SyncMode,
    analyse_fresh,
    fresh_table_rows,
    group_fresh,
    sync_modes,
)
from lab.bench.harness import RouteEvent, RouteMonitor, router_of, set_up_workload, wait_steady
from lab.bench.probes import RawProbe, RawRun, window
from lab.bench.stats import Summary, fmt_ms, summarize, summary_cells
from lab.plots import write_event_plots
from lab.scenario_spec import ScenarioSpec, default_scenario_path, load_scenario
from lab.scenarios import router_next_hop
from lab.system import DEFAULT_TOPOLOGY, ROUTE_PROTO, TOPOLOGIES, LabTopologyError, System
from lab.tables import render_table
from lab.topology import load as load_topology

ROUTERS: dict[str, Path] = {"bird": DEFAULT_TOPOLOGY, "frr": TOPOLOGIES / "default-frr.clab.yml"}
PREFIX = "egt-bn-"
BEFORE_S = 0.2  # the fault window starts this long before the fault (the probe's last normal packets)
HOLD_S = 3.0  # the lab routers' BGP hold time
#: the gateway's failback hold-down in the benchmark (the demo uses 3 s): a returning member takes its primaries back
#: after 1 s, which keeps a full run short; the take-back itself is measured ("lost on return")
FAILBACK_HOLD_S = 1.0


@dataclass
class Bench:
    system: System
    lab_pod: str
    eip: str
    say: Callable[[str], None]
    probe: RawProbe | None = None
    monitor: RouteMonitor | None = None
    reps: list[dict[str, Any]] = field(default_factory=list)


# ----- faults and restores -----

def _uplink_cut(b: Bench, gw: str) -> None:
    b.system.lab.cut_link(gw, b.system.uplink(gw))


def _uplink_restore(b: Bench, gw: str) -> None:
    b.system.lab.restore_link(gw, b.system.uplink(gw))


def _kill_all(b: Bench, gw: str) -> None:
    b.system.lab.kill_node(gw, sig=signal.SIGKILL)


def _power_off(b: Bench, gw: str) -> None:
    _uplink_cut(b, gw)
    _kill_all(b, gw)


def _power_on(b: Bench, gw: str) -> None:
    _uplink_restore(b, gw)
    _start(b, gw)


def _start(b: Bench, gw: str) -> None:
    rec = b.system.lab.daemon(gw, "egressgw-gateway")
    if rec is not None and b.system.lab.daemon_alive(rec):
        return
    wait_until(lambda: not _service_pids(b, gw, sidecar=False), timeout=15, interval=0.1,
               what=f"{gw}'s old processes to exit")
    b.system.start_gateway(gw)


def _service_pids(b: Bench, gw: str, *, sidecar: bool = True) -> list[int]:
    """The processes in the member's namespace; sidecar=False leaves out the BFD sidecar (BIRD), which a service
    stopping as the sole member of an instance leaves running for its graceful restart and the next start adopts."""
    pids = netns.pids(b.system.lab.netns(gw))
    return pids if sidecar else [p for p in pids if not _is_bird(p)]


def _is_bird(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return Path(argv0.decode(errors="replace")).name == "bird"


def _kill_exabgp(b: Bench, gw: str) -> None:
    for pid in _service_pids(b, gw):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"exabgp" in cmdline and b"appliance.cli" not in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _sigterm(b: Bench, gw: str) -> None:
    b.system.stop_service(gw, sig=signal.SIGTERM, grace=20.0)


def _drain(b: Bench, gw: str) -> None:
    b.system.drain(gw)
    wait_until(lambda: not _service_pids(b, gw), timeout=20, interval=0.05, what=f"{gw} to exit after the drain")


def _router_daemon(b: Bench) -> str:
    return "bird" if b.system.router_kind == "bird" else "bgpd"


def _router_restart(b: Bench, _gw: str) -> None:
    router = router_of(b.system)
    name = _router_daemon(b)
    rec = b.system.lab.daemon(router, name)
    if rec is None:
        raise RuntimeError(f"the router has no {name} daemon")
    b.system.lab.stop_daemon(router, name, sig=signal.SIGTERM, grace=10.0)
    b.system.lab.start_daemon(router, name, list(rec.argv))


def _nothing(_b: Bench, _gw: str) -> None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    what: str
    act: Callable[[Bench, str], None]
    restore: Callable[[Bench, str], None]
    #: seconds of probing after the fault action returned
    after_s: float
    #: the window ends only once the router has a route for the EIP again (router restart)
    until_route: bool = False
    #: the members run without BFD (set up before the scenario, undone after it)
    no_bfd: bool = False


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(name="uplink_cut", what="primary's uplink cut (switch port down)", act=_uplink_cut,
             restore=_uplink_restore, after_s=1.0),
    Scenario(name="processes_killed", what="every process in the primary's namespace SIGKILLed", act=_kill_all,
             restore=_start, after_s=1.0),
    Scenario(name="power_off", what="processes SIGKILLed + uplink cut", act=_power_off, restore=_power_on,
             after_s=1.0),
    Scenario(name="exabgp_killed", what="ExaBGP alone SIGKILLed (the service respawns it)", act=_kill_exabgp,
             restore=_nothing, after_s=1.5),
    Scenario(name="sigterm", what="service SIGTERM (drain, then exit)", act=_sigterm, restore=_start, after_s=0.5),
    Scenario(name="drain", what="`egressgw gateway drain`", act=_drain, restore=_start, after_s=0.5),
    Scenario(name="router_restart", what="the router's BGP daemon restarted (SIGTERM, start)", act=_router_restart,
             restore=_nothing, after_s=0.5, until_route=True),
    Scenario(name="uplink_cut_no_bfd", what="uplink cut, BFD off on the members (hold 3 s)", act=_uplink_cut,
             restore=_uplink_restore, after_s=HOLD_S + 0.7, no_bfd=True),
)


def scenario(name: str) -> Scenario:
    return next(sc for sc in SCENARIOS if sc.name == name)


# ----- one repetition -----

def _gw_address(b: Bench, gw: str) -> str:
    return b.system.gateway_address(gw)


def convergence_ms(events: list[RouteEvent], *, fault_at: float, away_from: str, reinstall: bool) -> float | None:
    """Milliseconds from the fault to the router's route change: the first route for the EIP via another next hop
    than `away_from` (reinstall: the first route installed at all after the fault). None when it did not change."""
    for e in sorted(events, key=lambda e: e.at):
        if e.at < fault_at or e.deleted:
            continue
        if reinstall or e.via != away_from:
            return round((e.at - fault_at) * 1000.0, 1)
    return None


def _route_present(b: Bench) -> bool:
    return bool(router_next_hop(b.system, b.eip))


def run_rep(b: Bench, sc: Scenario, rep: int, *, prepare: Callable[[], None] | None = None) -> dict[str, Any]:
    """One repetition; `prepare` runs once the system is steady, right before the target is chosen and faulted."""
    wait_steady(b.system)
    if prepare is not None:
        prepare()
    target = router_next_hop(b.system, b.eip)
    if not target:
        raise RuntimeError("the router has no route for the EIP")
    counters_before = {g: _eip_unsolicited_drops(b, g) for g in b.system.gateways}
    fault_at = time.time()
    sc.act(b, target)
    acted = time.time()
    time.sleep(sc.after_s)
    if sc.until_route:
        wait_until(lambda: _route_present(b), timeout=30, interval=0.02, what="the router's route to come back")
        time.sleep(0.5)
    fault_end = time.time()
    counters_after = {g: _eip_unsolicited_drops(b, g) for g in b.system.gateways if g != target}
    sc.restore(b, target)
    wait_steady(b.system)
    returned = time.time()
    assert b.monitor is not None
    events = b.monitor.since(fault_at - 1.0)
    conv = convergence_ms(events, fault_at=fault_at, away_from=_gw_address(b, target), reinstall=sc.until_route)
    rec: dict[str, Any] = {
        "scenario": sc.name, "rep": rep, "member": target, "fault_at": fault_at, "action_s": round(acted - fault_at, 3),
        "fault_end": fault_end, "returned": returned,
        "router_convergence_ms": conv,
        "route_events": [{"t_ms": round((e.at - fault_at) * 1000, 1), "deleted": e.deleted, "via": e.via}
                         for e in events if e.at >= fault_at],
        "eip_unsolicited_drops_on_others": {g: counters_after[g] - counters_before.get(g, 0) for g in counters_after},
    }
    b.say(f"  {sc.name} #{rep + 1}: member {target}, router moved after "
          f"{fmt_ms(conv)} ms, back in {returned - fault_end:.1f} s")
    return rec


def _eip_unsolicited_drops(b: Bench, gw: str) -> int:
    """The member's `drop_eip_unsolicited` counter (replies for flows another member SNATed arrive as ct new)."""
    res = b.system.lab.exec(gw, ["nft", "list", "counter", "inet", "egressgw", "drop_eip_unsolicited"],
                            check=False, timeout=5)
    words = str(res.stdout).split()
    return int(words[words.index("packets") + 1]) if "packets" in words else 0


def analyse_rep(raw: RawRun, rec: dict[str, Any]) -> dict[str, Any]:
    """Add the probe's view of the fault window and the return window to a repetition record."""
    fault = window(raw, rec["fault_at"] - BEFORE_S, rec["fault_end"])
    back = window(raw, rec["fault_end"], rec["returned"])
    return {
        **rec,
        "outage_ms": round(fault.outage_ms, 1),
        "lost": fault.udp.lost,
        "sent": fault.udp.sent,
        "max_consecutive_lost": fault.udp.max_consecutive_lost,
        "sources": list(fault.sources),
        "tcp_survived": fault.tcp_survived,
        "tcp_longest_stall_ms": round(fault.tcp.longest_stall_ms, 1),
        "return_lost": back.udp.lost,
        "return_outage_ms": round(back.outage_ms, 1),
        "return_tcp_survived": back.tcp_survived,
        "return_tcp_longest_stall_ms": round(back.tcp.longest_stall_ms, 1),
        "return_sources": list(back.sources),
    }


def summarize_scenario(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one scenario over its repetitions (pure)."""
    def s(key: str) -> dict[str, Any] | None:
        got = summarize(r[key] for r in reps if r.get(key) is not None)
        return got.to_json() if got else None
    return {
        "n": len(reps),
        "outage_ms": s("outage_ms"),
        "lost_total": sum(r["lost"] for r in reps),
        "lost_max": max((r["lost"] for r in reps), default=0),
        "reps_with_loss": sum(1 for r in reps if r["lost"]),
        "router_convergence_ms": s("router_convergence_ms"),
        "router_unchanged": sum(1 for r in reps if r.get("router_convergence_ms") is None),
        "tcp_survived": sum(1 for r in reps if r["tcp_survived"]),
        "tcp_longest_stall_ms": s("tcp_longest_stall_ms"),
        "return_lost_total": sum(r["return_lost"] for r in reps),
        "return_outage_ms": s("return_outage_ms"),
        "return_tcp_survived": sum(1 for r in reps if r["return_tcp_survived"]),
        "sources": sorted({src for r in reps for src in r["sources"]}),
    }


def plot_reps(system: System, raw: RawRun, recs: list[dict[str, Any]], monitor: RouteMonitor, directory: Path,
              router: str) -> list[Path]:
    """One timeline SVG per repetition (from the fault until the member was back), into `directory`."""
    windows = [(f"{router} {r['scenario']}{' sync ' + r['sync'] if r.get('sync') else ''} #{r['rep'] + 1} "
                f"on {r['member']}", r["fault_at"], r["returned"]) for r in recs]
    marks = [(r["fault_end"], "restore", "other") for r in recs]
    return write_event_plots(system, raw, windows, directory, route_events=monitor.since(0), before_s=BEFORE_S,
                             marks=marks)


# ----- BFD off for one scenario -----

def _restart_members(b: Bench, overrides: dict[str, Any]) -> None:
    """Rolling restart with new gateway config overrides (one member at a time: traffic keeps flowing, so the
    long-lived TCP stream is not left in retransmission back-off for the next scenario)."""
    b.system.gateway_config.clear()
    b.system.gateway_config.update(overrides)
    for gw in b.system.gateways:
        wait_steady(b.system)
        _sigterm(b, gw)
        _start(b, gw)
    wait_steady(b.system)


def _no_bfd_overrides(b: Bench) -> dict[str, Any]:
    bgp = dict(b.system.gateway_config_for(b.system.gateways[0])["bgp"])
    bgp["bfd"] = dict(bgp["bfd"], enabled=False)
    return {"bgp": bgp}


# ----- fresh flows, state sync on and off -----

#: the faults repeated with fresh flows (as `fresh_<name>`), once per state-sync mode
FRESH_FAULTS = ("drain", "uplink_cut", "power_off")


def run_fresh(b: Bench, fresh: FreshFlows, faults: tuple[Scenario, ...], modes: tuple[SyncMode, ...], reps: int,
              errors: dict[str, str]) -> list[dict[str, Any]]:
    """Every fault `reps` times per sync mode (the members restarted with the mode's overrides first); a failed
    fault is recorded in `errors` and the lab repaired."""
    records: list[dict[str, Any]] = []
    for mode in modes:
        for sc in faults:
            name = f"fresh_{sc.name}"
            try:
                if dict(b.system.gateway_config) != dict(mode.overrides):
                    b.say(f"members restarted with state sync {mode.name}: {dict(mode.overrides)}")
                    _restart_members(b, dict(mode.overrides))
                for rep in range(reps):
                    records.append({**run_rep(b, sc, rep, prepare=fresh.prepare), "scenario": name,
                                    "sync": mode.name})
            except Exception as e:
                errors[f"{name} (sync {mode.name})"] = f"{type(e).__name__}: {e}"
                b.say(f"{name} (sync {mode.name}) FAILED: {type(e).__name__}: {e}; repairing the lab")
                _repair(b)
    return records


def analyse_fresh_rep(raw: RawRun, fresh_raw: FreshRaw, rec: dict[str, Any]) -> dict[str, Any]:
    """The long-lived probe's figures and the fresh flows' figures of one fresh-flow repetition."""
    return {**analyse_rep(raw, rec), **analyse_fresh(fresh_raw, fault_at=rec["fault_at"], fault_end=rec["fault_end"],
                                                     returned=rec["returned"], before_s=BEFORE_S)}


# ----- the whole run -----

def _repair(b: Bench) -> None:
    """After a failed scenario: BFD back on, uplinks up, router daemon and every member running, steady."""
    try:
        b.system.gateway_config.clear()
        router = router_of(b.system)
        name = _router_daemon(b)
        rec = b.system.lab.daemon(router, name)
        if rec is not None and not b.system.lab.daemon_alive(rec):
            b.system.lab.start_daemon(router, name, list(rec.argv))
        for gw in b.system.gateways:
            _uplink_restore(b, gw)
            _start(b, gw)
        wait_steady(b.system)
    except Exception as e:
        b.say(f"repair failed: {type(e).__name__}: {e}")


def run_router(router: str, topology: Path, scenarios: tuple[Scenario, ...], reps: int,
               say: Callable[[str], None], *, keep_logs: Path | None = None, fresh_faults: tuple[Scenario, ...] = (),
               fresh_modes: tuple[SyncMode, ...] = (), fresh_reps: int = 0, prefix: str = PREFIX,
               plots: Path | None = None, gateway_overrides: dict[str, Any] | None = None,
               scenario_spec: ScenarioSpec | None = None) -> dict[str, Any]:
    """The scenarios, then the fresh-flow faults, in one lab; `gateway_overrides`: the members' config from the
    start (e.g. the first sync mode's, which then needs no rolling restart); `scenario_spec`: the lab's scenario
    (default: the topology's own scenario file)."""
    say(f"{router}: bringing up the lab ({topology.name})")
    system = System.up(topology, scenario_spec, prefix=prefix, gateway_overrides=gateway_overrides)
    b = Bench(system=system, lab_pod="", eip="", say=say)
    fresh: FreshFlows | None = None
    try:
        w = set_up_workload(system, failback_hold_s=FAILBACK_HOLD_S)
        b.lab_pod, b.eip = w.lab_pod, w.eip
        b.monitor = RouteMonitor(system, b.eip).start()
        b.probe = RawProbe(system.lab, b.lab_pod, server=system.external_address(4), port=system.ext_port).start()
        records: list[dict[str, Any]] = []
        errors: dict[str, str] = {}
        for sc in scenarios:
            say(f"{router}: {sc.name} ({sc.what}), {reps} repetitions")
            try:
                if sc.no_bfd:
                    _restart_members(b, _no_bfd_overrides(b))
                for rep in range(reps):
                    records.append(run_rep(b, sc, rep))
                if sc.no_bfd:
                    _restart_members(b, {})
            except Exception as e:  # record it, repair the lab, go on with the next scenario
                errors[sc.name] = f"{type(e).__name__}: {e}"
                say(f"{router}: {sc.name} FAILED: {errors[sc.name]}; repairing the lab")
                _repair(b)
        fresh_records: list[dict[str, Any]] = []
        if fresh_faults and fresh_reps:
            say(f"{router}: fresh flows through {', '.join(sc.name for sc in fresh_faults)}, {fresh_reps} repetitions "
                f"per state-sync mode ({', '.join(m.name for m in fresh_modes)})")
            fresh = FreshFlows(system, b.lab_pod).start()
            fresh_records = run_fresh(b, fresh, fresh_faults, fresh_modes, fresh_reps, errors)
            fresh_raw = fresh.stop()
            fresh = None
        raw = b.probe.stop()
        b.probe = None
        analysed = [analyse_rep(raw, r) for r in records]
        if plots is not None and b.monitor is not None:
            plot_reps(system, raw, [*records, *fresh_records], b.monitor, plots / router, router)
        by_name: dict[str, Any] = {}
        for sc in scenarios:
            mine = [r for r in analysed if r["scenario"] == sc.name]
            if mine:
                by_name[sc.name] = {"what": sc.what, "summary": summarize_scenario(mine), "reps": mine}
        out = {"topology": str(topology), "member_bfd": "50 ms x 3", "scenarios": by_name, "errors": errors}
        if fresh_records:
            out["fresh_flows"] = group_fresh(analyse_fresh_rep(raw, fresh_raw, r) for r in fresh_records)
        return out
    finally:
        if fresh is not None:
            fresh.kill()
        if b.probe is not None:
            b.probe.kill()
        if b.monitor is not None:
            b.monitor.stop()
        if keep_logs is not None:  # the services' logs, to explain a failed scenario after the teardown
            with contextlib.suppress(OSError):
                shutil.copytree(system.lab.state_dir / "logs", keep_logs / f"logs-{router}", dirs_exist_ok=True)
        system.down()


def table_rows(results: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for router, res in results.items():
        for name, sc in res["scenarios"].items():
            s = sc["summary"]
            n = s["n"]
            rows.append([router, name, n, *summary_cells(_summary(s["outage_ms"])),
                         f"{s['lost_total']} ({s['reps_with_loss']}/{n} reps)",
                         *summary_cells(_summary(s["router_convergence_ms"])),
                         f"{s['tcp_survived']}/{n}", fmt_ms(_get(s["tcp_longest_stall_ms"], "max")),
                         f"{s['return_lost_total']}"])
    return rows


def _summary(d: dict[str, Any] | None) -> Summary | None:
    return None if d is None else Summary(**d)


def _get(d: dict[str, Any] | None, key: str) -> float | None:
    return None if d is None else float(d[key])


HEADERS = ["router", "scenario", "n", "outage p50", "p95", "max (ms)", "lost", "router conv p50", "p95",
           "max (ms)", "TCP survived", "TCP stall max (ms)", "lost on return"]


def router_kind_of(topology: Path) -> str:
    """The router kind (`bird` | `frr`) of a topology file: its router's `egressgw.router-kind` label, else guessed
    from the router's daemons (a `bird` daemon: BIRD, else FRR)."""
    topo = load_topology(topology)
    routers = [n for n in topo.linux_nodes if dict(n.labels).get("egressgw.role") == "router"]
    if len(routers) != 1:
        raise LabTopologyError(f"{topology}: needs exactly one node with label egressgw.role: router")
    kind = dict(routers[0].labels).get("egressgw.router-kind") or (
        "bird" if any(d.name == "bird" for d in routers[0].daemons) else "frr")
    if kind not in ROUTE_PROTO:
        raise LabTopologyError(f"{topology}: node {routers[0].name}: egressgw.router-kind {kind!r} must be bird or frr")
    return kind


def run_failover_bench(out_path: Path, *, quick: bool = False, routers: tuple[str, ...] = ("bird", "frr"),
                       scenarios: tuple[str, ...] = (), topology: Path | None = None,
                       scenario_file: Path | None = None) -> dict[str, Any]:
    """`topology`: run one lab of that file (its router kind from the file) instead of one per router in `routers`;
    `scenario_file`: the scenario file (default: each topology's own)."""
    labs = {router_kind_of(topology): topology} if topology is not None else {r: ROUTERS[r] for r in routers}
    specs = {r: load_scenario(scenario_file or default_scenario_path(t)) for r, t in labs.items()}
    reps = 2 if quick else 10
    fresh_reps = 1 if quick else 10
    chosen = tuple(sc for sc in SCENARIOS if not scenarios or sc.name in scenarios)
    fresh_faults = tuple(scenario(name) for name in FRESH_FAULTS if not scenarios or f"fresh_{name}" in scenarios)
    modes = sync_modes()
    started = time.time()

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - started:4.0f}s] {msg}", flush=True)

    logs = out_path.parent / (out_path.stem + "-logs")
    plots = out_path.parent / (out_path.stem + "-plots")  # one timeline SVG per repetition (lab.plots)
    results = {r: run_router(r, t, chosen, reps, say, keep_logs=logs, plots=plots, fresh_faults=fresh_faults,
                             fresh_modes=modes, fresh_reps=fresh_reps, scenario_spec=specs[r]) for r, t in labs.items()}
    doc = {
        "benchmark": "failover",
        "command": "egressgw bench failover" + (" --quick" if quick else "") + f" --out {out_path}"
                   + (f" --topology {topology}" if topology is not None else "")
                   + (f" --scenario {scenario_file}" if scenario_file is not None else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "repetitions": reps,
        "fresh_flow_repetitions": fresh_reps,
        "fresh_flows": "per repetition a fresh UDP flow (a request every 10 ms from a new socket per 1 s window) and a "
                       "fresh server-push TCP connection (the server sends every 10 ms, the pod only reads), both "
                       "created through the primary just before the fault; state sync modes: "
                       + ", ".join(m.name for m in modes),
        "probe": "UDP every 10 ms + one TCP stream (10 ms lines), pod -> VXLAN -> gateway SNAT -> router -> server",
        "goals": {"hard_failure_outage_p99_ms": 200, "drain_and_sigterm_lost": 0,
                  "no_bfd_outage_ms": HOLD_S * 1000 + 500},
        "routers": results,
    }
    out_path.write_text(json.dumps(doc, indent=1))
    print(render_table(HEADERS, table_rows(results), title=f"Failover ({reps} repetitions per scenario)"))
    fresh_rows = [row for router, res in results.items()
                  for row in fresh_table_rows(router, res.get("fresh_flows", {}))]
    if fresh_rows:
        print(render_table(FRESH_HEADERS, fresh_rows,
                           title=f"Fresh flows, state sync on vs off ({fresh_reps} repetitions per fault and mode)"))
    for router, res in results.items():
        for name, err in res["errors"].items():
            print(f"{router}: {name} did not complete: {err}")
    return doc
