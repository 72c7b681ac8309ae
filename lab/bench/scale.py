"""`egressgw bench scale [--quick] [--sizes 10000,100000] --out FILE.json`: the figures of issue 16 at scale.

Per size (10k pods / 1,000 policies / 256 EIPs / 100 nodes; 100k / 5,000 / 1,000 / 500; other sizes take the
nearest row's proportions) one lab is brought up (`lab.system.System`, services stopped) and its real kube-apiserver
gets the cluster of `egressgw bench sync` (`lab.bench.sync._objects`: 100 namespaces, 90 % namespaced policies, pods
with IPs), moved clear of the lab's own addresses and served by one EgressGateway whose members are the lab's
gateways. Then:

1. **In-process figures** (a gateway-role `ClusterSync` on that API server -> snapshot -> `resolve`; kernel writes in
   the namespaces of a separate `lab.testbeds.datapath.Testbed`), CPU seconds of this process and its children:
   `cpu_s.full_plan_apply` (gateway member = a lab gateway, worker = one cluster node: plan + apply from empty),
   `cpu_s.resync_no_change` (the full pass the services run on resync, nothing changed), `cpu_s.pod_add` /
   `cpu_s.pod_remove` (incremental resolution + the fast path of gateway and worker, kernel writes included) and
   `s.new_policy_5k_pods` (wall: an EgressClusterPolicy selecting pods/20 pods written -> in the store -> resolved ->
   planned -> in the kernel).
2. **Rollout** with every service running (the lab's `egressgw gateway` and `egressgw agent` processes): `rollout`
   pods are created, given their IP (status merge-patch) and deleted by 8 client threads as fast as the API server
   takes them; a poller lists the first gateway's pod set (`nft list set ... pods4`: one element per selected pod,
   updated in the same pass as the SNAT map, which has one per pod and destination) in its namespace; it stamps when
   each pod IP appears and disappears (resolution: one listing + 0.1 s). CPU of each service from /proc/<pid>/stat
   (children included) before/after; API requests from `apiserver_request_total` (the API server's /metrics) minus
   the bench's own requests; `rss_mb_peak` = VmHWM of the first gateway process.

`--quick`: 10k pods only (unless `--sizes` says otherwise) and a rollout of 100 pods with each phase (IPs written,
pods deleted) cut after 120 s; ~2.5 min at 10k. Without it: 10k and 100k, 300 rollout pods (they take their IPs from
the lab workers' /24 pod CIDRs), phases cut after 300 s. Events a cut phase did not see in the kernel count as not
applied (`rollout.kernel_events_seen`).
Machine load (load average, cores) goes into the JSON: figures from a loaded machine compare by ratio only.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from appliance.core.intent import Intent
from appliance.core.snapshot import Snapshot
from appliance.core.waiting import poll_until, wait_until
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.incremental import IncrementalGateway, IncrementalWorker
from appliance.datapath.plan.gateway import GatewaySettings, workers_of
from appliance.datapath.plan.nft_rendering import FAMILY, TABLE
from appliance.policy.incremental import pod_changed
from appliance.policy.resolution import resolve
from k8s_sync.cluster import ClusterSync
from k8s_sync.kubeapi import JSON, KubeApi, make_api_client
from k8s_sync.parsing import parse_pod_obj
from k8s_sync.reflector import ReflectorSettings
from k8s_sync.resources import RESOURCES, Role
from lab.bench.datapath import CPU, _timed, _worker_settings
from lab.bench.stats import percentile
from lab.bench.sync import _complete, _objects, _write_all
from lab.system import GATEWAY_LABEL, System
from lab.tables import render_table
from lab.testbeds.datapath import WORKER_ADDR, Testbed

LAB_PREFIX = "egt-sc-"
BED_PREFIX = "egt-sc-t"
#: the cluster of `bench sync` uses 100.64.x pods and 100.127.x nodes, as the lab does: move it by these offsets
POD_V4_SHIFT = 16 << 16  # 100.64.n.m -> 100.80.n.m
POD_V6_SHIFT = 0x40 << 80  # 2001:db8:64:: -> 2001:db8:a4::
NODE_V4_BASE = ip_address("100.110.0.10")
EIP_V4_BASE = ip_address("100.120.0.1")
EIP_V6_BASE = ip_address("2001:db8:e5::1")
ROLLOUT_FIRST_HOST = 100  # in each lab worker's pod CIDR (the lab's own pods sit low)
ROLLOUT_NAMESPACE = "bench-000"  # selected by the policies on app-0 (lab.bench.sync's cluster)
NEW_POLICY_DEST = "100.126.0.0/16"
GATEWAY_NAME = "scale"
WRITERS = 8
CHURN_REPS = 3
#: resources only the API server's own loops request (priority and fairness, admission): not egressgw's
APISERVER_OWN = frozenset({"flowschemas", "prioritylevelconfigurations", "limitranges", "resourcequotas"})
POLL_INTERVAL_S = 0.1


# ----- sizes and the cluster (pure) -----

@dataclass(frozen=True, slots=True)
class Size:
    pods: int
    policies: int
    eips: int
    nodes: int


#: the issue's two rows; other sizes scale the nearest row's proportions
ROWS = (Size(10_000, 1_000, 256, 100), Size(100_000, 5_000, 1_000, 500))


def size_for(pods: int) -> Size:
    """The cluster shape for `pods` pods: the issue's rows exactly, linear in between, proportional beyond."""
    if pods <= 0:
        raise ValueError(f"--sizes: pod count must be positive, got {pods}")
    low, high = ROWS
    if low.pods <= pods <= high.pods:
        f = (pods - low.pods) / (high.pods - low.pods)
        return Size(pods, *(round(a + (b - a) * f) for a, b in ((low.policies, high.policies),
                                                                 (low.eips, high.eips), (low.nodes, high.nodes))))
    row, f = (low, pods / low.pods) if pods < low.pods else (high, pods / high.pods)
    return Size(pods, max(1, round(row.policies * f)), max(1, round(row.eips * f)), max(1, round(row.nodes * f)))


def parse_sizes(text: str) -> list[int]:
    """`--sizes 10000,100000` -> [10000, 100000] (error names the option)."""
    try:
        out = [int(p.replace("_", "")) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--sizes: expected comma-separated pod counts, got {text!r}") from None
    if not out or any(n <= 0 for n in out):
        raise ValueError(f"--sizes: expected positive pod counts, got {text!r}")
    return out


def _shift(address: str, offset: int) -> str:
    return str(ip_address(address) + offset)


def _shift_cidr(cidr: str, offset: int) -> str:
    net = ipaddress.ip_network(cidr)
    return f"{net.network_address + offset}/{net.prefixlen}"


def cluster_objects(size: Size) -> dict[str, list[JSON]]:
    """`bench sync`'s cluster at `size`, moved clear of the lab's addresses; its EgressGateway replaced by one with
    `size.eips` EIPs per family whose members are the nodes carrying the lab's gateway label (the lab's gateways)."""
    objs = _objects(size.pods, size.policies, size.eips, size.nodes)
    for i, node in enumerate(objs["Node"]):
        node["metadata"]["name"] = "scale-" + node["metadata"]["name"]
        node["metadata"]["labels"] = {}
        node["spec"]["podCIDR"] = _shift_cidr(node["spec"]["podCIDR"], POD_V4_SHIFT)
        # both families, as a dual-stack cluster has them (the v1.20 API server keeps only the first without its
        # IPv6DualStack gate: hence also the EgressClusterInfo below)
        node["spec"]["podCIDRs"] = [node["spec"]["podCIDR"], _shift_cidr(f"2001:db8:64:{i:x}::/64", POD_V6_SHIFT)]
        node["_ip"] = str(NODE_V4_BASE + i)  # (bench sync's own node addresses run past .255 beyond 246 nodes)
    for pod in objs["pods"]:
        pod["spec"]["nodeName"] = "scale-" + pod["spec"]["nodeName"]
        pod["_ips"] = [_shift(ip, POD_V4_SHIFT if ":" not in ip else POD_V6_SHIFT) for ip in pod["_ips"]]
    objs["EgressGateway"] = [{
        "apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": GATEWAY_NAME},
        "spec": {"clusterDefault": True,
                 "nodeSelector": {"selector": {"matchLabels": {GATEWAY_LABEL[0]: GATEWAY_LABEL[1]}}},
                 "ippools": {"ipv4": [f"{EIP_V4_BASE}-{EIP_V4_BASE + size.eips - 1}"],
                             "ipv6": [f"{EIP_V6_BASE}-{EIP_V6_BASE + size.eips - 1}"]}}}]
    # the pods' IPv6 range is cluster-internal: declared, so that no pod IPv6 is a "stray" (a cluster range of its
    # own, which changes the intent's cluster CIDRs on every pod event and sends the data paths to a full pass)
    objs["EgressGateway"].append({
        "apiVersion": "egressgw.io/v1alpha1", "kind": "EgressClusterInfo", "metadata": {"name": "default"},
        "spec": {"extraCidr": [_shift_cidr("2001:db8:64::/48", POD_V6_SHIFT)]}})
    return objs


def new_policy(selected_app: str = "app-3") -> JSON:
    """A cluster policy selecting every pod with `app: selected_app` (pods/20 of the cluster) for one destination."""
    return {"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressClusterPolicy",
            "metadata": {"name": "scale-new-policy"},
            "spec": {"egressGatewayName": GATEWAY_NAME, "priority": 9, "destSubnet": [NEW_POLICY_DEST],
                     "appliedTo": {"podSelector": {"matchLabels": {"app": selected_app}}}}}


def rollout_pods(count: int, pod_cidrs: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(name, worker node, IPv4) of the rollout's pods, alternating over the workers, each IP inside its worker's pod
    CIDR from host ROLLOUT_FIRST_HOST on (clear of the lab's own pods); an error when a CIDR is too small (pure)."""
    workers = sorted(pod_cidrs)
    per_worker = -(-count // len(workers))
    hosts = {w: list(ipaddress.ip_network(pod_cidrs[w]).hosts())[ROLLOUT_FIRST_HOST - 1:] for w in workers}
    if any(len(h) < per_worker for h in hosts.values()):
        raise ValueError(f"rollout of {count} pods: the workers' pod CIDRs {dict(pod_cidrs)} hold fewer than "
                         f"{per_worker} addresses each from host {ROLLOUT_FIRST_HOST}")
    return [(f"roll-{i:06d}", workers[i % len(workers)], str(hosts[workers[i % len(workers)]][i // len(workers)]))
            for i in range(count)]


# ----- parsing and aggregation (pure) -----

def proc_cpu_seconds(stat: str, ticks: int) -> float:
    """utime + stime + cutime + cstime of one /proc/<pid>/stat line, in seconds."""
    rest = stat.rsplit(")", 1)[1].split()
    return sum(int(v) for v in rest[11:15]) / ticks


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def requests_by(metrics: str) -> dict[str, float]:
    """`apiserver_request_total` of a Prometheus text exposition, summed per "VERB resource[/subresource]"."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if not (line.startswith("apiserver_request_total{") or line.startswith("apiserver_request_total ")):
            continue
        labels = dict(_LABEL.findall(line.partition("}")[0]))
        key = f"{labels.get('verb', '?')} {labels.get('resource', '') or '-'}"
        if labels.get("subresource"):
            key += "/" + labels["subresource"]
        out[key] = out.get(key, 0.0) + float(line.rsplit(None, 1)[1])
    return out


def requests_total(metrics: str) -> float:
    """The sum of every `apiserver_request_total` series in a Prometheus text exposition."""
    return sum(requests_by(metrics).values())


def request_delta(before: Mapping[str, float], after: Mapping[str, float],
                  own: Mapping[str, float]) -> dict[str, float]:
    """Requests per "VERB resource" between two scrapes minus the bench's own (`own`) and the API server's own
    (`APISERVER_OWN`), largest first, no zeros."""
    keys = set(before) | set(after)
    keys = {k for k in keys if k.partition(" ")[2].partition("/")[0] not in APISERVER_OWN}
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) - own.get(k, 0.0) for k in keys}
    return dict(sorted(((k, v) for k, v in delta.items() if v > 0), key=lambda kv: (-kv[1], kv[0])))


_V4 = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")
_CLUSTER_V4 = re.compile(r"\b100\.8[01]\.\d{1,3}\.\d{1,3}\b")  # the moved cluster's pods (POD_V4_SHIFT)


def rollout_ips_in(listing: str, wanted: Collection[str]) -> set[str]:
    """The `wanted` IPv4 addresses present in an `nft list` listing."""
    return set(_V4.findall(listing)).intersection(wanted)


def _r(v: float, digits: int = 4) -> float:
    return round(v, digits)


def rollout_figures(*, written: Mapping[str, float], appeared: Mapping[str, float],
                    deleted: Mapping[str, float], vanished: Mapping[str, float], write_s: float,
                    apply_span_s: float, requests_written: int, egressgw_requests: float,
                    cpu_s: Mapping[str, float]) -> dict[str, Any]:
    """The `rollout` object of one size: latencies event -> kernel (IP written -> in the kernel, delete -> gone),
    rates, CPU and API requests per 1,000 pod events (a pod event = one create, status patch or delete written)."""
    lat = [appeared[k] - written[k] for k in written if k in appeared]
    lat += [vanished[k] - deleted[k] for k in deleted if k in vanished]
    events = requests_written
    per_k = 1000.0 / events if events else 0.0
    return {
        "pods": len(written),
        "pod_events_written": events,
        "kernel_events": len(written) + len(deleted),
        "kernel_events_seen": len(lat),
        "events_per_s_written": _r(events / write_s if write_s > 0 else 0.0, 1),
        "events_per_s_applied": _r(len(lat) / apply_span_s if apply_span_s > 0 else 0.0, 1),
        "p50_event_to_kernel_s": _r(percentile(lat, 50)) if lat else None,
        "p99_event_to_kernel_s": _r(percentile(lat, 99)) if lat else None,
        "max_event_to_kernel_s": _r(max(lat)) if lat else None,
        "cpu_s_per_1000_events": {k: _r(v * per_k) for k, v in cpu_s.items()},
        "api_requests_per_1000_events": _r(egressgw_requests * per_k, 1),
    }


def machine_load() -> dict[str, Any]:
    return {"loadavg": [round(v, 2) for v in os.getloadavg()], "cores": os.cpu_count()}


#: (label, JSON path, unit, goal at 10k, goal at 100k) of the printed table
TABLE_ROWS: tuple[tuple[str, tuple[str, ...], str, str, str], ...] = (
    ("full plan + apply, gateway + worker (CPU)", ("cpu_s", "full_plan_apply"), "s", "<= 1", "<= 2"),
    ("  of which gateway", ("cpu_s", "full_plan_apply_gateway"), "s", "", ""),
    ("resync, nothing to do (CPU)", ("cpu_s", "resync_no_change"), "s", "<= 0.3", "<= 0.5"),
    ("one pod added, fast path + kernel (CPU)", ("cpu_s", "pod_add"), "s", "<= 0.02", "<= 0.02"),
    ("one pod removed, fast path + kernel (CPU)", ("cpu_s", "pod_remove"), "s", "<= 0.02", "<= 0.02"),
    ("new policy (pods/20 selected) -> kernel", ("s", "new_policy_5k_pods"), "s", "<= 0.5", "<= 1"),
    ("gateway process RSS peak", ("rss_mb_peak",), "MB", "<= 200", "<= 600"),
    ("  per 10k pods", ("rss_mb_per_10k_pods",), "MB", "", ""),
    ("rollout: pod events/s written", ("rollout", "events_per_s_written"), "/s", "", ""),
    ("rollout: kernel events/s applied (gateway)", ("rollout", "events_per_s_applied"), "/s", ">= 200", ">= 200"),
    ("rollout: event -> kernel p50", ("rollout", "p50_event_to_kernel_s"), "s", "", ""),
    ("rollout: event -> kernel p99", ("rollout", "p99_event_to_kernel_s"), "s", "<= 1", "<= 1"),
    ("rollout: gateway CPU per 1,000 events", ("rollout", "cpu_s_per_1000_events", "gateway"), "s", "", ""),
    ("rollout: agent CPU per 1,000 events", ("rollout", "cpu_s_per_1000_events", "agent"), "s", "", ""),
    ("rollout: API requests by egressgw / 1,000 events", ("rollout", "api_requests_per_1000_events"), "", "~0", "~0"),
)


def lookup(doc: Mapping[str, Any], path: Sequence[str]) -> Any:
    """doc[path[0]][path[1]]... or None when a key is missing."""
    cur: Any = doc
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def render(doc: Mapping[str, Any]) -> str:
    """The printed table: one column per size, the goal columns of the issue."""
    sizes = doc["sizes"]
    headers = ["figure", *(f"{s['pods'] // 1000}k pods" for s in sizes), "goal 10k", "goal 100k"]
    rows: list[list[str]] = [["policies / EIPs / nodes",
                              *(f"{s['policies']} / {s['eips']} / {s['nodes']}" for s in sizes), "", ""]]
    for label, path, unit, g10, g100 in TABLE_ROWS:
        cells = [_cell(lookup(s, path)) for s in sizes]
        rows.append([f"{label} ({unit})" if unit else label, *cells, g10, g100])
    load = doc.get("machine", {})
    title = f"egressgw bench scale (load average {load.get('loadavg')}, {load.get('cores')} cores)"
    return render_table(headers, rows, title=title)


# ----- the in-process figures (imperative) -----

def churn_pod(node: JSON, i: int) -> JSON:
    """A pod like the cluster's own on `node` (IPv4 + IPv6 inside its pod CIDRs, above the hosts the cluster uses),
    selected by the policies on app-0: what a rollout adds, so the fast path sees an ordinary pod."""
    v4, v6 = (ipaddress.ip_network(c) for c in node["spec"]["podCIDRs"])
    ips = [str(v4.network_address + 240 + i), str(v6.network_address + 240 + i)]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"scale-one-{i}", "namespace": ROLLOUT_NAMESPACE, "labels": {"app": "app-0"}},
            "spec": {"nodeName": node["metadata"]["name"], "containers": [{"name": "c", "image": "example.invalid/x"}]},
            "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}}


def in_process_figures(api: KubeApi, sync: ClusterSync, *, member: str, worker_node: JSON, size: Size,
                       say: Callable[[str], None]) -> dict[str, Any]:
    worker = worker_node["metadata"]["name"]
    snapshot: Snapshot = sync.store.snapshot()
    intent: Intent = resolve(snapshot)
    workers = workers_of(snapshot)
    bed = Testbed(prefix=BED_PREFIX)
    out: dict[str, Any] = {"cpu_s": {}, "s": {}, "steerings": len(intent.steerings)}
    try:
        bed.up()
        gw_applier, w_applier = DataPathApplier(bed.ns("g1")), DataPathApplier(bed.ns("w1"))
        inc_g = IncrementalGateway(gw_applier, member=member, settings=GatewaySettings())
        inc_w = IncrementalWorker(w_applier, node=worker, underlay=ip_address(WORKER_ADDR["w1"][0]),
                                  settings=_worker_settings())

        def check(result: Any, what: str) -> None:
            if result.failures:
                raise RuntimeError(f"{what}: apply failed: {result.failures[:3]}")

        say("full plan + apply from empty (gateway, worker)")
        _, g_wall = _timed(lambda: check(inc_g.converge(intent, workers=workers, full=True), "gateway"), "g_full")
        _, w_wall = _timed(lambda: check(inc_w.converge(intent, full=True), "worker"), "w_full")
        out["cpu_s"] |= {"full_plan_apply": _r(CPU["g_full"] + CPU["w_full"]),
                         "full_plan_apply_gateway": _r(CPU["g_full"]), "full_plan_apply_worker": _r(CPU["w_full"])}
        out["s"]["full_plan_apply"] = _r(g_wall + w_wall)
        out["gateway_snat_elements"] = len(inc_g.plan.snat) if inc_g.plan else 0
        out["selected_pod_ips_v4"] = len({s.pod_ip for s in intent.steerings if s.pod_ip.version == 4})

        def resync() -> None:
            check(inc_g.converge(intent, workers=workers, full=True), "gateway resync")
            check(inc_w.converge(intent, full=True), "worker resync")

        _timed(resync)  # the first pass after the full one may still settle caches
        _, wall = _timed(resync, "resync")
        out["cpu_s"]["resync_no_change"], out["s"]["resync_no_change"] = _r(CPU["resync"]), _r(wall)

        state: dict[str, Intent] = {}

        fell_back = {"gateway": 0, "worker": 0}

        def churn(old: Any, new: Any, base: Intent) -> None:
            nxt = pod_changed(snapshot, base, old, new)
            plans = (inc_g.plan, inc_w.plan)
            for r in (inc_g.converge(nxt, workers=workers, full=False), inc_w.converge(nxt, full=False)):
                if r.failures:
                    raise RuntimeError(f"pod churn failed: {r.failures[:3]}")
            # the fast path keeps the last full plan; a fallback to the full plan + apply replaces it
            fell_back["gateway"] += inc_g.plan is not plans[0]
            fell_back["worker"] += inc_w.plan is not plans[1]
            state["intent"] = nxt

        say(f"one pod added / removed (fast path), {CHURN_REPS} times each")
        samples: dict[str, list[tuple[float, float]]] = {"pod_add": [], "pod_remove": []}
        for i in range(CHURN_REPS):
            pod = parse_pod_obj(churn_pod(worker_node, i))
            _, wall = _timed(functools.partial(churn, None, pod, intent), "pod_add")
            samples["pod_add"].append((CPU["pod_add"], wall))
            _, wall = _timed(functools.partial(churn, pod, None, state["intent"]), "pod_remove")
            samples["pod_remove"].append((CPU["pod_remove"], wall))
        out["churn_full_fallbacks"] = dict(fell_back)  # of 2 x CHURN_REPS passes each
        for key, pairs in samples.items():  # the median of the repetitions (the first may fill caches)
            out["cpu_s"][key] = _r(statistics.median(c for c, _ in pairs))
            out["s"][key] = _r(statistics.median(w for _, w in pairs))

        say(f"new policy selecting {size.pods // 20} pods -> kernel")
        before = len(inc_g.plan.snat) if inc_g.plan else 0
        policy = new_policy()
        res = RESOURCES["EgressClusterPolicy"]
        t0 = time.monotonic()
        api.create(res.path(None), policy)
        wait_until(lambda: any(o["metadata"]["name"] == "scale-new-policy"
                               for o in sync.store.raw_objects("EgressClusterPolicy")),
                   timeout=60, interval=0.002, what="the new policy in the store")
        snap2 = sync.store.snapshot()
        intent2 = resolve(snap2, previous=intent)
        check(inc_g.converge(intent2, workers=workers_of(snap2), full=True), "gateway, new policy")
        check(inc_w.converge(intent2, full=True), "worker, new policy")
        out["s"]["new_policy_5k_pods"] = _r(time.monotonic() - t0)
        out["new_policy_selected_pods"] = size.pods // 20
        out["new_policy_snat_elements_added"] = (len(inc_g.plan.snat) if inc_g.plan else 0) - before
        api.delete(res.path(None, "scale-new-policy"))
    finally:
        bed.down()
    return out


# ----- the rollout (imperative) -----

def _read(path: str) -> str:
    return Path(path).read_text()


def _service_pids(system: System) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"gateway": [], "agent": []}
    for node in system.gateways:
        rec = system.lab.daemon(node, "egressgw-gateway")
        if rec is not None:
            out["gateway"].append(rec.pid)
    for node in system.workers:
        rec = system.lab.daemon(node, "egressgw-agent")
        if rec is not None:
            out["agent"].append(rec.pid)
    return out


def _cpu_of(pids: Iterable[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(proc_cpu_seconds(_read(f"/proc/{p}/stat"), ticks) for p in pids)


def _vm_hwm_mb(pid: int) -> float:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _metrics(api: KubeApi) -> str:
    resp = api.client.call_api("/metrics", "GET", header_params={"Accept": "text/plain"},
                               auth_settings=["BearerToken"], _preload_content=False,
                               _return_http_data_only=True)
    try:
        return str(resp.data.decode())
    finally:
        resp.release_conn()


class PodSetPoller:
    """Lists the gateway's set of (worker slot . pod IPv4) in its namespace in a loop (one element per pod; the SNAT
    map has one per pod and destination range: ~10x more to list); stamps when each rollout IP appears / vanishes."""

    def __init__(self, netns: str, wanted: Collection[str] = ()) -> None:
        self.argv = ["ip", "netns", "exec", netns, "nft", "list", "set", FAMILY, TABLE, "pods4"]
        self.wanted = frozenset(wanted)
        self.appeared: dict[str, float] = {}
        self.vanished: dict[str, float] = {}
        self.present: set[str] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            done = subprocess.run(self.argv, capture_output=True, text=True, check=False)
            now = time.time()
            self.polls += 1
            if done.returncode == 0:
                seen = rollout_ips_in(done.stdout, self.wanted)
                for ip in seen - self.present:
                    self.appeared.setdefault(ip, now)
                for ip in self.present - seen:
                    self.vanished.setdefault(ip, now)
                self.present = seen
            self._stop.wait(POLL_INTERVAL_S)


def _write_rollout(api: KubeApi, pods: Sequence[tuple[str, str, str]]) -> tuple[dict[str, float], float]:
    path = RESOURCES["Pod"]
    written: dict[str, float] = {}

    def one(spec: tuple[str, str, str]) -> None:
        name, node, ip = spec
        api.create(path.path(ROLLOUT_NAMESPACE), {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ROLLOUT_NAMESPACE, "labels": {"app": "app-0"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "example.invalid/x"}]}})
        api.merge_patch(path.path(ROLLOUT_NAMESPACE, name, "status"),
                        {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
        written[ip] = time.time()

    t0 = time.monotonic()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(one, pods))
    return written, time.monotonic() - t0


def _delete_rollout(api: KubeApi, pods: Sequence[tuple[str, str, str]]) -> tuple[dict[str, float], float]:
    path = RESOURCES["Pod"]
    deleted: dict[str, float] = {}

    def one(spec: tuple[str, str, str]) -> None:
        name, _, ip = spec
        api.delete(path.path(ROLLOUT_NAMESPACE, name), query={"gracePeriodSeconds": 0})
        deleted[ip] = time.time()

    t0 = time.monotonic()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(one, pods))
    return deleted, time.monotonic() - t0


def rollout(system: System, api: KubeApi, count: int, *, expected_pods: int | None, phase_s: float,
            say: Callable[[str], None]) -> dict[str, Any]:
    gw = system.gateways[0]
    cidrs = {w: api.get(RESOURCES["Node"].path(None, w))["spec"]["podCIDR"] for w in system.workers}
    pods = rollout_pods(count, cidrs)
    poller = PodSetPoller(system.lab.netns(gw), [ip for _, _, ip in pods])
    if expected_pods:
        say(f"waiting for the gateway's pod set to hold the cluster's {expected_pods} selected pod IPv4s")

        def filled() -> bool:
            text = subprocess.run(poller.argv, capture_output=True, text=True, check=False).stdout
            return len(_CLUSTER_V4.findall(text)) >= expected_pods

        t0 = time.monotonic()
        wait_until(filled, timeout=900, interval=2.0, what="the gateway's pod set to hold the whole cluster")
        say(f"  services converged on the cluster in {time.monotonic() - t0:.1f} s")
    time.sleep(3.0)  # let the first full passes, status writes and leases settle
    pids = _service_pids(system)
    poller.start()
    cpu0 = {role: _cpu_of(p) for role, p in pids.items()}
    req0 = requests_by(_metrics(api))
    say(f"rollout: {count} pods created + IP written, 8 threads")
    t_start = time.time()
    written, create_s = _write_rollout(api, pods)
    # a phase that does not finish within `phase_s` is cut short: the events not seen count as not applied
    poll_until(lambda: len(poller.appeared) >= count, timeout=phase_s, interval=0.1)
    seen = max(poller.appeared.values(), default=t_start)
    say(f"  written in {create_s:.1f} s; {len(poller.appeared)}/{count} in the kernel, the last "
        f"{seen - t_start:.1f} s after the start")
    deleted, delete_s = _delete_rollout(api, pods)
    poll_until(lambda: len(poller.vanished) >= count, timeout=phase_s, interval=0.1)
    t_end = max([*poller.vanished.values(), seen])
    poller.stop()
    req1 = requests_by(_metrics(api))
    cpu1 = {role: _cpu_of(p) for role, p in pids.items()}
    say(f"  deleted in {delete_s:.1f} s; {len(poller.vanished)}/{count} gone from the kernel "
        f"({poller.polls} kernel listings)")
    # the bench's own requests: create + status patch + delete per pod, and the first /metrics scrape
    own = {"POST pods": count, "PATCH pods/status": count, "DELETE pods": count, "GET -": 1}
    by_egressgw = request_delta(req0, req1, own)
    cpu = {role: (cpu1[role] - cpu0[role]) / max(1, len(pids[role])) for role in pids}
    figures = rollout_figures(written=written, appeared=poller.appeared, deleted=deleted, vanished=poller.vanished,
                              write_s=create_s + delete_s, apply_span_s=t_end - t_start,
                              requests_written=3 * count, egressgw_requests=sum(by_egressgw.values()),
                              cpu_s=cpu)
    figures["api_requests_by_verb_resource"] = dict(list(by_egressgw.items())[:12])
    figures["services"] = {role: len(p) for role, p in pids.items()}
    figures["poll_listings"] = poller.polls
    figures["gateway_rss_mb_peak"] = round(_vm_hwm_mb(pids["gateway"][0]), 1) if pids["gateway"] else None
    return figures


# ----- one size, the run -----

def run_size(size: Size, *, rollout_pods_n: int, phase_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    doc: dict[str, Any] = {"pods": size.pods, "policies": size.policies, "eips": size.eips, "nodes": size.nodes}
    say(f"{size.pods} pods: bringing up the lab (services stopped)")
    system = System.up(prefix=LAB_PREFIX, start_services=False)
    try:
        client = make_api_client(str(system.kubeconfig))
        api = KubeApi(client)
        objs = cluster_objects(size)
        worker_node = objs["Node"][0]
        say(f"writing {size.pods} pods, {size.policies} policies, {size.nodes} nodes ({WRITERS * 2} threads)")
        t0 = time.monotonic()
        _write_all(api, objs)
        doc["write_s"] = _r(time.monotonic() - t0, 1)
        del objs
        sync = ClusterSync(api, role=Role.GATEWAY, settings=ReflectorSettings(backoff_initial=0.05, backoff_max=1.0))
        sync.start()
        wait_until(lambda: sync.store.synced() and _complete(sync, size.pods, size.policies), timeout=900,
                   interval=0.5, what="the store to hold the whole cluster")
        doc |= in_process_figures(api, sync, member=system.gateways[0], worker_node=worker_node, size=size, say=say)
        sync.stop()
        say("starting the gateways and agents")
        for gw in system.gateways:
            system.start_gateway(gw)
        for w in system.workers:
            system.start_agent(w)
        doc["rollout"] = rollout(system, api, rollout_pods_n, expected_pods=doc.get("selected_pod_ips_v4"),
                                 phase_s=phase_s, say=say)
        peak = doc["rollout"].pop("gateway_rss_mb_peak")
        doc["rss_mb_peak"] = peak
        doc["rss_mb_per_10k_pods"] = _r(peak * 10_000 / size.pods, 1) if peak else None
        client.close()
    finally:
        system.down()
    return doc


def run_scale_bench(out_path: Path, *, quick: bool = False, sizes: str | None = None) -> dict[str, Any]:
    try:
        counts = parse_sizes(sizes) if sizes else ([10_000] if quick else [10_000, 100_000])
    except ValueError as e:
        raise SystemExit(f"egressgw bench scale: {e}") from None
    roll, phase_s = (100, 120.0) if quick else (300, 300.0)
    started = time.time()

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - started:5.0f}s] {msg}", flush=True)

    doc: dict[str, Any] = {"benchmark": "scale", "quick": quick, "rollout_pods": roll, "rollout_phase_max_s": phase_s,
                           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                           "machine_before": machine_load(), "sizes": []}
    for n in counts:
        doc["sizes"].append(run_size(size_for(n), rollout_pods_n=roll, phase_s=phase_s, say=say))
        out_path.write_text(json.dumps(doc, indent=2) + "\n")  # a partial run still leaves its figures
    doc["machine"] = machine_load()
    doc["duration_s"] = round(time.time() - started, 1)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(render(doc))
    return doc
