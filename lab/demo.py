"""`egressgw lab demo`: the whole system in the default lab, shown as tables.

1. bring up the lab (kube-apiserver + etcd, BIRD 2 router, two gateways with ExaBGP + BFD, two workers with pods);
2. apply an EgressGateway and a tenant EgressPolicy through the Kubernetes API, create the pods;
3. show which source address the external server sees for each pod (the EIP for selected pods, the node IP for
   the rest), IPv4 and IPv6;
4. cut the primary gateway's uplink with a 10 ms probe running: show the outage and that the EIP did not change;
5. drain the member that took over (`egressgw gateway drain`) with the probe running: show zero loss;
6. tear everything down (unless --keep).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lab.probe import ProbeReport
from lab.scenarios import (
    DEFAULT_EIP_V4,
    DEFAULT_EIP_V6,
    demo_pods,
    gateway_manifest,
    measure_failure,
    policy_manifest,
    router_next_hop,
    wait_for,
)
from lab.system import DEFAULT_TOPOLOGY, System
from lab.tables import render_table


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _outage_row(label: str, r: ProbeReport, eip_before: str, eip_after: str) -> list[object]:
    outage = f"{r.longest_gap_ms:.0f} ms" if r.lost else "none"
    return [label, r.sent, r.lost, outage, eip_before, eip_after]


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
    wait_for(lambda: system.seen_source(first.lab_pod) == DEFAULT_EIP_V4, timeout=90, what="the EIP at the server")
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
    primary = wait_for(lambda: router_next_hop(system, DEFAULT_EIP_V4), timeout=30, what="the router's EIP route")
    _say(f"the router sends {DEFAULT_EIP_V4} to {primary}; cutting {primary}'s uplink with a 10 ms probe running")
    cut = measure_failure(system, first.lab_pod, lambda: system.lab.cut_link(primary, "eth1"), after=3.0)
    after_cut = router_next_hop(system, DEFAULT_EIP_V4)
    eip_after = system.seen_source(first.lab_pod)
    results = [_outage_row(f"uplink of {primary} cut", cut, DEFAULT_EIP_V4, eip_after)]
    all_good &= eip_after == DEFAULT_EIP_V4 and bool(after_cut) and after_cut != primary
    _say(f"restoring {primary}'s uplink; it comes back as a backup (hold-down before it takes primaries back)")
    system.lab.restore_link(primary, "eth1")
    wait_for(lambda: router_next_hop(system, DEFAULT_EIP_V4) == primary, timeout=60,
             what=f"{primary} to take its primaries back after the hold-down")
    now_primary = router_next_hop(system, DEFAULT_EIP_V4)
    _say(f"draining {now_primary} (`egressgw gateway drain`) with the probe running")
    drain = measure_failure(system, first.lab_pod, lambda: print(system.drain(now_primary).strip() or "drained"),
                            after=2.0)
    eip_after = system.seen_source(first.lab_pod)
    results.append(_outage_row(f"drain of {now_primary}", drain, DEFAULT_EIP_V4, eip_after))
    all_good &= drain.lost == 0 and eip_after == DEFAULT_EIP_V4
    print(render_table(["event", "probes sent", "lost", "outage", "EIP before", "EIP after"], results,
                       title="Failover with a 10 ms UDP probe from " + f"{first.namespace}/{first.name}"))
    return all_good


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(demo_args=sys.argv[1:])))
