"""`egressgw bench datapath`: data-path throughput and plan/apply time, measured in network namespaces.

Figures (all from one run on the same testbed, so ratios compare like with like):
- iperf3 TCP throughput, pod -> external server: through the tunnel + SNAT (selected pod) vs the direct routed path
  (unselected pod, CNI masquerade) - ratio, goal >= 0.7;
- the same tunnel throughput with 1,000 policies / 10,000 selected pod IPs / 256 EIPs in the maps and rules vs
  with 1 policy - ratio, goal >= 0.95 (the per-packet cost must not grow with the policies);
- the same tunnel throughput with the gateway's tunnel source check (strict reverse path) on vs off - ratio;
- plan + apply time of a full worker and gateway state (10k pods / 1k policies / 256 EIPs) from empty - goal <= 1 s
  - and of one added pod on top of it - goal <= 50 ms.
Both ends share the machine's cores, so absolute Gbit/s are relative figures only.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

from appliance.core.intent import Intent
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.incremental import IncrementalGateway, IncrementalWorker
from appliance.datapath.apply.netlink import Shell
from appliance.datapath.apply.pod_interfaces import PodInterfaceDiscovery
from appliance.datapath.apply.worker_guards import BridgeBindingApplier
from appliance.datapath.plan.gateway import GatewayPlan, GatewaySettings, TunnelSourceCheck, plan_gateway
from appliance.datapath.plan.tunnel import MarkSettings
from appliance.datapath.plan.worker import SourceValidation, WorkerPlan, WorkerSettings, plan_worker
from appliance.datapath.plan.worker_nft import worker_bridge_table
from lab.testbeds.datapath import EXT_V4, GATEWAY_ADDR, WORKER_ADDR, Testbed
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent, scale_intent

T = TypeVar("T")
EIP4 = "203.0.113.130"
WORKERS = {"worker1": (ip_address(WORKER_ADDR["w1"][0]),), "worker2": (ip_address(WORKER_ADDR["w2"][0]),)}


#: label -> CPU seconds (this process + the ip/nft processes it ran): robust against a loaded machine
CPU: dict[str, float] = {}

#: the worker's default mark layout has 254 endpoint slots (clear of Calico's, kube-proxy's and Cilium's bits); the
#: bench's 256 EIPs need more: the wider layout a node without those CNIs may use (docs/datapath.md)
SCALE_MARKS = MarkSettings(mark_base=0x0E6E0000, mark_mask=0xFFFF0000, slot_mask=0x3FF)


def _worker_settings(**kwargs: Any) -> WorkerSettings:
    return WorkerSettings(marks=SCALE_MARKS, **kwargs)


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(fn: Callable[[], T], label: str = "") -> tuple[T, float]:
    t0, c0 = time.perf_counter(), _cpu()
    out = fn()
    if label:
        CPU[label] = _cpu() - c0
    return out, time.perf_counter() - t0


def _plans(intent: Intent) -> tuple[WorkerPlan, GatewayPlan]:
    w = plan_worker(intent, node="worker1", underlay=ip_address(WORKER_ADDR["w1"][0]), settings=_worker_settings())
    g = plan_gateway(intent, member="gw1", workers=WORKERS, settings=GatewaySettings())
    return w, g


def _apply(appliers: dict[str, DataPathApplier], w: WorkerPlan, g: GatewayPlan, *, observe: bool = True) -> None:
    for node, plan in (("g1", g), ("w1", w)):
        result = appliers[node].apply(plan, observe=observe)
        if result.failures:
            raise RuntimeError(f"apply failed on {node}: {result.failures[:5]}")


RETRANSMITS: dict[str, int] = {}


def _iperf(bed: Testbed, pod: str, seconds: int, label: str = "") -> float:
    out = bed.run(pod, "iperf3", "-c", EXT_V4[0], "-p", "5201", "-t", str(seconds), "-J", timeout=seconds + 30)
    end = json.loads(out)["end"]
    RETRANSMITS[label or pod] = int(end.get("sum_sent", {}).get("retransmits", 0))
    return float(end["sum_received"]["bits_per_second"]) / 1e9


def run_datapath_bench(out_path: Path, *, quick: bool = False, prefix: str = "egt-dp-b") -> dict[str, Any]:
    seconds = 1 if quick else 3
    pods, policies, eips = (2_000, 200, 64) if quick else (10_000, 1_000, 256)
    gw = Gw(eips=(EIP4,), members=("gw1", "gw2"), member_addresses={"gw1": GATEWAY_ADDR["g1"][0]})
    one = build_intent([gw], [Sel(pod_ip="100.64.1.10")])
    pod1 = Sel(pod_ip="100.64.1.10", policy="real")
    many = scale_intent(pods=pods, policies=policies, eips=eips, workers=1, node="worker1", extra=(pod1,))
    # one more pod, as the resolution's pod-event path produces it: the same Steering objects plus one new one
    added = build_intent([gw], [Sel(pod_ip="100.64.1.99", policy="real")]).steerings
    bigger = replace(many, steerings=many.steerings + added)
    figures: dict[str, Any] = {"sizes": {"pods": pods, "policies": policies, "eips": eips}, "seconds": seconds}
    bed = Testbed(prefix=prefix)
    try:
        bed.up()
        bed.route_eip(EIP4, "g1")
        server = bed.start("ext", ["iperf3", "-s", "-p", "5201"])
        time.sleep(0.5)
        appliers = {n: DataPathApplier(bed.ns(n)) for n in ("w1", "g1")}
        _apply(appliers, *_plans(one))
        direct = _iperf(bed, "pod2", seconds, "direct")
        tunnel_1 = _iperf(bed, "pod1", seconds, "tunnel_1")
        # every anti-spoofing check off vs on (the defaults), same state otherwise: the worker's source binding
        # (strict: reverse path on steered packets + the bridge-port table from the discovered pod interfaces) and
        # the gateway's tunnel source check; off and on alternate so a load change does not favour one side
        bridge = BridgeBindingApplier(Shell(bed.ns("w1")))
        bindings = PodInterfaceDiscovery(Shell(bed.ns("w1"))).discover()
        checks: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(1 if quick else 2):
            for mode in ("off", "on"):
                on = mode == "on"
                validation = SourceValidation.STRICT if on else SourceValidation.OFF
                wplan = plan_worker(one, node="worker1", underlay=ip_address(WORKER_ADDR["w1"][0]),
                                    settings=_worker_settings(source_validation=validation), source_bindings=bindings)
                gsettings = GatewaySettings() if on else GatewaySettings(source_check=TunnelSourceCheck.OFF)
                gplan = plan_gateway(one, member="gw1", workers=WORKERS, settings=gsettings)
                for result in (appliers["w1"].apply(wplan), appliers["g1"].apply(gplan),
                               bridge.apply(worker_bridge_table(wplan.bridged)) if on else bridge.remove()):
                    if result.failures:
                        raise RuntimeError(f"apply failed: {result.failures[:5]}")
                checks[mode].append(_iperf(bed, "pod1", seconds, f"tunnel_checks_{mode}"))
        bridge.remove()
        # full state from empty: plan + apply of worker and gateway
        for a in appliers.values():
            a.remove_all()
        (w, g), plan_s = _timed(lambda: _plans(many), "plan_full")
        _, apply_s = _timed(lambda: _apply(appliers, w, g), "apply_full")
        (w2, g2), plan1_s = _timed(lambda: _plans(bigger), "plan_one_pod_added")
        _, apply1_s = _timed(lambda: _apply(appliers, w2, g2, observe=False), "apply_one_pod_added")
        _, noop_s = _timed(lambda: _apply(appliers, w2, g2), "resync_no_change")
        # the next resync: the previous one verified the kernel, so the fingerprint answers (applier docstring)
        _, verified_s = _timed(lambda: _apply(appliers, w2, g2), "resync_no_change_verified")
        # the pod-churn fast path (appliance.datapath.apply.incremental): full pass, then one pod added / removed
        inc_w = IncrementalWorker(appliers["w1"], node="worker1", underlay=ip_address(WORKER_ADDR["w1"][0]),
                                  settings=_worker_settings())
        inc_g = IncrementalGateway(appliers["g1"], member="gw1", settings=GatewaySettings())
        inc_w.converge(many, full=True)
        inc_g.converge(many, workers=WORKERS, full=True)

        def churn(intent: Intent) -> None:
            for r in (inc_g.converge(intent, workers=WORKERS, full=False), inc_w.converge(intent, full=False)):
                if r.failures or any("replaced" in c for c in r.changes):
                    raise RuntimeError(f"fast path not taken or failed: {r}")

        _, fast_add_s = _timed(lambda: churn(bigger), "fast_path_one_pod_added")
        _, fast_remove_s = _timed(lambda: churn(many), "fast_path_one_pod_removed")
        realistic = scale_intent(pods=pods, policies=policies, eips=eips, workers=100, node="worker1")
        _, plan_worker_100_s = _timed(lambda: plan_worker(realistic, node="worker1",
                                                          underlay=ip_address(WORKER_ADDR["w1"][0]),
                                                          settings=_worker_settings()), "plan_worker_100_local_pods")
        # the gateway with pod-CIDR reply routes (Node.spec.podCIDRs known): full state from empty
        cidrs = {"worker1": (ip_network("100.64.1.0/24"), ip_network("100.80.0.0/16"))}
        appliers["g1"].remove_all()

        def gateway_with_cidrs() -> None:
            plan = plan_gateway(many, member="gw1", workers=WORKERS, settings=GatewaySettings(),
                                worker_pod_cidrs=cidrs)
            result = appliers["g1"].apply(plan)
            if result.failures:
                raise RuntimeError(f"apply failed: {result.failures[:5]}")

        _, gw_cidr_s = _timed(gateway_with_cidrs, "gateway_full_pod_cidr_routes")
        tunnel_many = _iperf(bed, "pod1", seconds, "tunnel_many")
        server.terminate()
        figures["throughput_gbps"] = {"direct": direct, "tunnel_snat_1_policy": tunnel_1,
                                      "tunnel_snat_many_policies": tunnel_many}
        on_gbps, off_gbps = sum(checks["on"]) / len(checks["on"]), sum(checks["off"]) / len(checks["off"])
        figures["throughput_gbps"] |= {"anti_spoofing_checks_on": on_gbps, "anti_spoofing_checks_off": off_gbps}
        figures["ratios"] = {"tunnel_vs_direct": tunnel_1 / direct if direct else 0.0,
                             "many_vs_1_policy": tunnel_many / tunnel_1 if tunnel_1 else 0.0,
                             "checks_on_vs_off": on_gbps / off_gbps if off_gbps else 0.0}
        figures["time_s"] = {
            "plan_full": plan_s, "apply_full": apply_s, "plan_apply_full": plan_s + apply_s,
            "plan_one_pod_added": plan1_s, "apply_one_pod_added": apply1_s,
            "plan_apply_one_pod_added": plan1_s + apply1_s, "resync_no_change": noop_s,
            "resync_no_change_verified": verified_s,
            "plan_worker_100_local_pods": plan_worker_100_s,
            "fast_path_one_pod_added": fast_add_s, "fast_path_one_pod_removed": fast_remove_s,
            "gateway_full_pod_cidr_routes": gw_cidr_s,
        }
        figures["cpu_s"] = dict(CPU)
        figures["cpu_s"]["plan_apply_full"] = CPU["plan_full"] + CPU["apply_full"]
        figures["retransmits"] = dict(RETRANSMITS)
        figures["load_average"] = os.getloadavg()[0]
        figures["state"] = {"worker_rules": len(w.kernel.rules), "worker_routes": len(w.kernel.routes),
                            "worker_map_elements": len(w.steer), "gateway_routes": len(g.kernel.routes),
                            "gateway_snat_elements": len(g.snat), "gateway_eips": len(g.eips)}
    finally:
        bed.down()
    out_path.write_text(json.dumps(figures, indent=2) + "\n")
    _print(figures)
    return figures


def _print(f: dict[str, Any]) -> None:
    t, r, s, c = f["throughput_gbps"], f["ratios"], f["time_s"], f["cpu_s"]
    rows = [
        ("direct routed path (Gbit/s)", f"{t['direct']:.2f}", ""),
        ("tunnel + SNAT, 1 policy (Gbit/s)", f"{t['tunnel_snat_1_policy']:.2f}", ""),
        (f"tunnel + SNAT, {f['sizes']['policies']} policies / {f['sizes']['pods']} pods (Gbit/s)",
         f"{t['tunnel_snat_many_policies']:.2f}", ""),
        ("ratio tunnel / direct", f"{r['tunnel_vs_direct']:.2f}", ">= 0.7"),
        ("ratio many / 1 policy", f"{r['many_vs_1_policy']:.2f}", ">= 0.95"),
        ("ratio anti-spoofing checks on / off (worker + gateway)", f"{r['checks_on_vs_off']:.2f}", ">= 0.95"),
        ("plan + apply, full state: wall (cpu) s", f"{s['plan_apply_full']:.3f} ({c['plan_apply_full']:.3f})", "<= 1"),
        ("  of which plan / apply (s)", f"{s['plan_full']:.3f} / {s['apply_full']:.3f}", ""),
        ("one pod added, fast path: wall (cpu) s",
         f"{s['fast_path_one_pod_added']:.3f} ({c['fast_path_one_pod_added']:.3f})", "<= 0.05"),
        ("one pod removed, fast path: wall (cpu) s",
         f"{s['fast_path_one_pod_removed']:.3f} ({c['fast_path_one_pod_removed']:.3f})", "<= 0.05"),
        ("one pod added, full plan + cached apply (s)", f"{s['plan_apply_one_pod_added']:.3f}", ""),
        ("  of which plan / apply (s)", f"{s['plan_one_pod_added']:.3f} / {s['apply_one_pod_added']:.3f}", ""),
        ("gateway full state, pod-CIDR routes: wall (cpu) s",
         f"{s['gateway_full_pod_cidr_routes']:.3f} ({c['gateway_full_pod_cidr_routes']:.3f})", ""),
        ("resync pass, nothing to do, after an event pass (full observation): wall (cpu) s",
         f"{s['resync_no_change']:.3f} ({c['resync_no_change']:.3f})", ""),
        ("resync pass, nothing to do, fingerprint unchanged: wall (cpu) s",
         f"{s['resync_no_change_verified']:.3f} ({c['resync_no_change_verified']:.3f})", "<= 0.3"),
        ("plan a worker with 100 local pods of 10k (s)", f"{s['plan_worker_100_local_pods']:.3f}", ""),
    ]
    width = max(len(a) for a, _, _ in rows)
    print(f"{'datapath benchmark'.ljust(width)}  {'value':>15}  goal")
    for a, b, g in rows:
        print(f"{a.ljust(width)}  {b:>15}  {g}")
    print(f"(machine load average at the end: {f.get('load_average', '?')})")
