"""`egressgw lab demo`: the whole system in the default lab, shown as tables.

1. bring up the lab (kube-apiserver + etcd, BIRD 2 router, two gateways with ExaBGP + BFD, two workers with pods);
2. apply an EgressGateway and a tenant EgressPolicy through the Kubernetes API, create the pods;
3. show which source address the external server sees for each pod (the EIP for selected pods, the node IP for
   the rest), IPv4 and IPv6;
4. with one probe running (UDP every 10 ms + a long-lived TCP stream): cut the primary gateway's uplink and show
   the outage and that the EIP did not change; restore it and show the member taking its primaries back after its
   hold-down without loss; drain it (`egressgw gateway drain`) and show zero loss;
5. tear everything down (unless --keep).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from appliance.core.waiting import wait_until
from lab.bench.probes import RawProbe, Window, window
from lab.scenarios import (
    DEFAULT_EIP_V4,
    DEFAULT_EIP_V6,
    demo_pods,
    gateway_manifest,
    policy_manifest,
    router_next_hop,
    stable_primary,
)
from lab.system import DEFAULT_TOPOLOGY, System
from lab.tables import render_table


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _event_row(label: str, w: Window, eip_after: str) -> list[object]:
    outage = f"{w.outage_ms:.0f} ms" if w.udp.lost else "none"
    tcp = ("survived" if w.tcp_survived else "broken") + f", longest stall {w.tcp.longest_stall_ms:.0f} ms"
    return [label, w.udp.sent, w.udp.lost, outage, tcp, ", ".join(w.sources) or "-", eip_after]


def run(args: argparse.Namespace) -> int:
    parser = argparse.ArgumentParser(prog="egressgw lab demo", description=__doc__.splitlines()[0])
    parser.add_argument("--topology", type=Path, default=DEFAULT_TOPOLOGY)
    parser.add_argument("--keep", action="store_true",
                        help="leave the lab running (remove it with `egressgw lab down`)")
    opts = parser.parse_args(getattr(args, "demo_args", []) or [])
    started = time.monotonic()
    system = System.up(opts.topology, progress=_say)
    ok = False
    try:
        ok = _demo(system)
    finally:
        if opts.keep:
            _say(f"lab kept. kubectl from inside the lab: egressgw lab exec api -- kubectl --kubeconfig "
                 f"{system.lab.kubeconfig()} get egw,egp -A ; remove it with: egressgw lab down")
        else:
            _say("tearing the lab down")
            system.down()
    _say(f"demo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def _demo(system: System) -> bool:
    _say(f"kubectl works against the lab's API server: kubectl --kubeconfig {system.kubeconfig} get egw,egp -A")
    pods = demo_pods(system)
    _say("applying the EgressGateway `egw-default` (cluster default) and the policy shop/web-egress (app=web)")
    system.ensure_namespace("shop")
    system.ensure_namespace("blog")
    system.apply([gateway_manifest(), policy_manifest("shop", "web-egress", match_labels={"app": "web"})])
    for p in pods:
        system.create_pod(p.namespace, p.name, p.lab_pod, dict(p.labels))
    _say("waiting for the agents and gateways to converge")
    first = next(p for p in pods if p.selected)
    wait_until(lambda: system.seen_source(first.lab_pod) == DEFAULT_EIP_V4,
               timeout=90, what="the EIP at the server", interval=0.2)
    rows = []
    all_good = True
    for p in pods:
        node = system.nodes[p.lab_pod]
        worker = system.nodes[node.worker]
        want4 = DEFAULT_EIP_V4 if p.selected else str(worker.address(4))
        want6 = DEFAULT_EIP_V6 if p.selected else str(worker.address(6))
        seen4 = system.wait_source(p.lab_pod, want4, timeout=20)
        seen6 = system.wait_source(p.lab_pod, want6, version=6, timeout=20)
        good = seen4 == want4 and seen6 == want6
        all_good &= good
        rows.append([f"{p.namespace}/{p.name}", node.worker, "yes" if p.selected else "no", seen4, seen6,
                     "ok" if good else f"expected {want4} / {want6}"])
    print(render_table(["pod", "worker", "selected", "server saw (IPv4)", "server saw (IPv6)", "check"], rows,
                       title="Source address seen by the external server"))
    primary = stable_primary(system, DEFAULT_EIP_V4)
    _say(f"starting one probe in {first.namespace}/{first.name}: a UDP datagram every 10 ms and a long-lived TCP "
         "stream, through the tunnel, the gateway's SNAT and the router")
    probe = RawProbe(system.lab, first.lab_pod).start()
    events: list[tuple[str, float, float]] = []
    try:
        time.sleep(1.0)
        _say(f"the router sends {DEFAULT_EIP_V4} to {primary}; cutting {primary}'s uplink (hard failure)")
        t0 = time.time()
        system.lab.cut_link(primary, "eth1")
        time.sleep(3.0)
        events.append((f"uplink of {primary} cut", t0, time.time()))
        after_cut = router_next_hop(system, DEFAULT_EIP_V4)
        all_good &= bool(after_cut) and after_cut != primary
        _say(f"restoring {primary}'s uplink: it returns as a backup, then takes its primaries back after the hold-down")
        t0 = time.time()
        system.lab.restore_link(primary, "eth1")
        wait_until(lambda: router_next_hop(system, DEFAULT_EIP_V4) == primary, timeout=60,
                   what=f"{primary} to take its primaries back after the hold-down", interval=0.2)
        time.sleep(1.0)
        events.append((f"{primary} returns (hold-down, take-back)", t0, time.time()))
        _say(f"draining {primary} (`egressgw gateway drain`): withdraw, wait for the router, then stop")
        t0 = time.time()
        out = system.drain(primary)
        _say("drain: " + " / ".join(line.strip() for line in out.splitlines() if line.strip()))
        time.sleep(1.0)
        events.append((f"drain of {primary}", t0, time.time()))
    finally:
        raw = probe.stop()
    event_rows: list[list[object]] = []
    for label, t0, t1 in events:
        w = window(raw, t0 - 0.2, t1)
        eip_ok = w.sources == (DEFAULT_EIP_V4,)
        all_good &= eip_ok and w.tcp_survived
        if label.startswith("drain") or "returns" in label:
            all_good &= w.udp.lost == 0
        event_rows.append(_event_row(label, w, "unchanged" if eip_ok else "CHANGED"))
    print(render_table(["event", "UDP sent", "lost", "outage", "TCP stream", "source seen", "EIP"], event_rows,
                       title=f"Failover, seen by one long-lived probe in {first.namespace}/{first.name}"))
    _say("(outage = the longest run of lost 10 ms datagrams; figures over many runs: egressgw bench failover)")
    return all_good


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(demo_args=sys.argv[1:])))
