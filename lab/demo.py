"""`egressgw lab demo`: the whole system in a lab (the default one, or `--topology FILE`), shown as tables.

1. bring up the lab (kube-apiserver + etcd, the BIRD 2 or FRR router, gateways with ExaBGP + BFD, workers with pods);
   everything about the network comes from the topology file, the EgressGateway from its scenario file
   (`NAME.scenario.yml` beside it, or `--scenario FILE`; lab/scenario_spec.py);
2. apply the scenario's EgressGateway and a tenant EgressPolicy through the Kubernetes API, create the pods;
3. show which source address the external server sees for each pod (the EIP for selected pods, the node IP for
   the rest), IPv4 and IPv6;
4. with one probe running (UDP every 10 ms + a long-lived TCP stream): cut the primary gateway's uplink and show
   the outage and that the EIP did not change; restore it and show the member taking its primaries back after its
   hold-down without loss; drain it (`egressgw gateway drain`) and show zero loss; one timeline SVG per event
   (`--plots DIR`: probes, the router's route changes, the members' BGP/BFD/drain events, `lab.plots`); the
   drain also carries fresh flows created through the primary just before it (`lab.bench.fresh_flows`: a UDP flow
   from a new socket, a server-push TCP connection), which only conntrack state sync (`state_sync`, the product's
   default setting here) hands to the member taking over;
5. tear everything down (unless --keep).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from appliance.core.waiting import wait_until
from lab.bench.fresh_flows import FreshFlows, analyse_fresh, default_sync_mode
from lab.bench.harness import RouteMonitor
from lab.bench.probes import RawProbe, Window, window
from lab.plots import write_event_plots
from lab.scenarios import demo_pods, policy_manifest, router_next_hop, scenario_gateway, stable_primary
from lab.system import DEFAULT_TOPOLOGY, System
from lab.tables import render_table


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _event_row(label: str, w: Window, eip_after: str) -> list[object]:
    outage = f"{w.outage_ms:.0f} ms" if w.udp.lost else "none"
    tcp = ("survived" if w.tcp_survived else "broken") + f", longest stall {w.tcp.longest_stall_ms:.0f} ms"
    return [label, w.udp.sent, w.udp.lost, outage, tcp, ", ".join(w.sources) or "-", eip_after]


def _fresh_row(label: str, f: dict[str, Any]) -> list[object]:
    """The drain seen by the fresh flows: fresh UDP loss, the server-push stream, the SNAT port the server saw."""
    outage = f"{f['fresh_udp_outage_ms']:.0f} ms" if f["fresh_udp_lost"] else "none"
    if not f["server_push_connected"]:
        tcp = "server push: not connected"
    else:
        tcp = ("server push " + ("survived" if f["server_push_tcp_survived"] else "STALLED")
               + f", longest stall {f['server_push_tcp_stall_ms']:.0f} ms")
    port = {True: "SNAT port CHANGED", False: "SNAT port kept", None: "SNAT port unknown"}[f["snat_port_changed"]]
    return [label, f["fresh_udp_sent"], f["fresh_udp_lost"], outage, tcp, ", ".join(f["fresh_udp_sources"]) or "-",
            port]


def run(args: argparse.Namespace) -> int:
    parser = argparse.ArgumentParser(prog="egressgw lab demo", description=__doc__.splitlines()[0])
    parser.add_argument("--topology", type=Path, default=DEFAULT_TOPOLOGY,
                        help="the lab topology (default lab/topologies/default.clab.yml)")
    parser.add_argument("--scenario", type=Path, default=None,
                        help="the scenario file (default: NAME.scenario.yml beside the topology)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the lab running (remove it with `egressgw lab down`)")
    parser.add_argument("--plots", type=Path, default=Path("out/demo-plots"),
                        help="directory for one timeline SVG per failover event (default out/demo-plots)")
    opts = parser.parse_args(getattr(args, "demo_args", []) or [])
    started = time.monotonic()
    system = System.up(opts.topology, opts.scenario, progress=_say)
    ok = False
    try:
        ok = _demo(system, plots=opts.plots)
    finally:
        if opts.keep:
            api = next(n for n, v in system.nodes.items() if v.role == "kube-api")
            name = system.lab.name
            _say(f"lab kept. kubectl from inside the lab: egressgw lab exec --lab {name} {api} -- kubectl "
                 f"--kubeconfig {system.lab.kubeconfig()} get egw,egp -A ; remove it with: egressgw lab down {name}")
        else:
            _say("tearing the lab down")
            system.down()
    _say(f"demo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def _demo(system: System, *, plots: Path | None = None) -> bool:
    _say(f"kubectl works against the lab's API server: kubectl --kubeconfig {system.kubeconfig} get egw,egp -A")
    pods = demo_pods(system)
    spec = system.scenario
    eip4, eip6 = spec.default_eip_v4, spec.default_eip_v6
    _say(f"applying the EgressGateway `{spec.gateway}` (cluster default) and the policy shop/web-egress (app=web)")
    system.ensure_namespace("shop")
    system.ensure_namespace("blog")
    system.apply([scenario_gateway(spec), policy_manifest("shop", "web-egress", match_labels={"app": "web"})])
    for p in pods:
        system.create_pod(p.namespace, p.name, p.lab_pod, dict(p.labels))
    _say("waiting for the agents and gateways to converge")
    first = next(p for p in pods if p.selected)
    wait_until(lambda: system.seen_source(first.lab_pod) == eip4,
               timeout=90, what="the EIP at the server", interval=0.2)
    rows = []
    all_good = True
    for p in pods:
        node = system.nodes[p.lab_pod]
        worker = system.nodes[node.worker]
        want4 = eip4 if p.selected else str(worker.address(4, system.underlay(node.worker)))
        want6 = eip6 if p.selected else str(worker.address(6, system.underlay(node.worker)))
        seen4 = system.wait_source(p.lab_pod, want4, timeout=20)
        seen6 = system.wait_source(p.lab_pod, want6, version=6, timeout=20)
        good = seen4 == want4 and seen6 == want6
        all_good &= good
        rows.append([f"{p.namespace}/{p.name}", node.worker, "yes" if p.selected else "no", seen4, seen6,
                     "ok" if good else f"expected {want4} / {want6}"])
    print(render_table(["pod", "worker", "selected", "server saw (IPv4)", "server saw (IPv6)", "check"], rows,
                       title="Source address seen by the external server"))
    primary = stable_primary(system, eip4)
    _say(f"starting one probe in {first.namespace}/{first.name}: a UDP datagram every 10 ms and a long-lived TCP "
         "stream, through the tunnel, the gateway's SNAT and the router")
    monitor = RouteMonitor(system, eip4).start()  # the router's route changes, for the plots
    probe = RawProbe(system.lab, first.lab_pod, server=system.external_address(4), port=system.ext_port).start()
    fresh = FreshFlows(system, first.lab_pod)
    events: list[tuple[str, float, float]] = []
    try:
        time.sleep(1.0)
        _say(f"the router sends {eip4} to {primary}; cutting {primary}'s uplink (hard failure)")
        t0 = time.time()
        system.lab.cut_link(primary, system.uplink(primary))
        time.sleep(3.0)
        events.append((f"uplink of {primary} cut", t0, time.time()))
        after_cut = router_next_hop(system, eip4)
        all_good &= bool(after_cut) and after_cut != primary
        _say(f"restoring {primary}'s uplink: it returns as a backup, then takes its primaries back after the hold-down")
        t0 = time.time()
        system.lab.restore_link(primary, system.uplink(primary))
        wait_until(lambda: router_next_hop(system, eip4) == primary, timeout=60,
                   what=f"{primary} to take its primaries back after the hold-down", interval=0.2)
        time.sleep(1.0)
        events.append((f"{primary} returns (hold-down, take-back)", t0, time.time()))
        fresh.start()
        fresh.prepare()  # a fresh UDP flow and server-push TCP connection through the primary, right before the drain
        _say(f"draining {primary} (`egressgw gateway drain`): withdraw, wait for the router, then stop")
        t0 = time.time()
        out = system.drain(primary)
        _say("drain: " + " / ".join(line.strip() for line in out.splitlines() if line.strip()))
        time.sleep(1.0)
        events.append((f"drain of {primary}", t0, time.time()))
    finally:
        raw = probe.stop()
        fresh_raw = fresh.stop() if fresh.proc is not None else None
        fresh.kill()
        monitor.stop()
    event_rows: list[list[object]] = []
    for label, t0, t1 in events:
        w = window(raw, t0 - 0.2, t1)
        eip_ok = w.sources == (eip4,)
        all_good &= eip_ok and w.tcp_survived
        if label.startswith("drain") or "returns" in label:
            all_good &= w.udp.lost == 0
        event_rows.append(_event_row(label, w, "unchanged" if eip_ok else "CHANGED"))
        if label.startswith("drain") and fresh_raw is not None:
            f = analyse_fresh(fresh_raw, fault_at=t0, fault_end=t1, returned=t1)
            sync = default_sync_mode().name
            if sync == "on":  # the member taking over holds the fresh flows' entries before the router moves
                all_good &= f["fresh_udp_lost"] == 0 and bool(f["server_push_tcp_survived"])
            event_rows.append(_fresh_row(f"{label}: fresh flows (state sync {sync})", f))
    print(render_table(["event", "UDP sent", "lost", "outage", "TCP stream", "source seen", "EIP"], event_rows,
                       title=f"Failover, seen by one long-lived probe in {first.namespace}/{first.name}"))
    _say("(outage = the longest run of lost 10 ms datagrams; figures over many runs: egressgw bench failover)")
    if plots is not None:
        files = write_event_plots(system, raw, events, plots, route_events=monitor.since(0))
        _say(f"timeline plots (probes, route changes, BGP/BFD/drain events): {', '.join(map(str, files))}")
    return all_good


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(demo_args=sys.argv[1:])))
