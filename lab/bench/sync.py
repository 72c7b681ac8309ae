"""`egressgw bench sync --out FILE.json`: cluster sync + resolution at scale against a real kube-apiserver.

Starts its own etcd + kube-apiserver (lab.kube_apiserver), starts a gateway-role `ClusterSync` on the empty cluster,
then writes `nodes` nodes, 100 namespaces, one gateway with `eips` IPv4+IPv6 EIPs, `policies` policies (90 %
namespaced, 10 % cluster-wide, a quarter `rr`) and `pods` pods with IPs (create + status merge-patch, as a kubelet
does), from parallel threads. Figures:

- `watch_catchup_s`: from the last object written to a complete snapshot in the watching store;
- `cold_list_s`: a new ClusterSync listing the full cluster until synced, plus its first snapshot;
- `snapshot_build_s`: building the typed Snapshot from a store that changed (one pod);
- `full_resolution_s`: `resolve(snapshot)` (median of 3, CPU time of the calling thread: one core);
- `incremental_pod_add_s`: one pod created and its IP set -> in the snapshot (`api_to_store_s`), then snapshot
  build (`snapshot_build_s`) and `appliance.policy.incremental.pod_added` (`incremental_resolution_s`), CPU time;
- `rss_mb` (VmRSS after everything) and `peak_rss_mb` (VmHWM) of this process (client, store, snapshot, intent).
Goals (issue 3): full resolution <= 1 s, incremental <= 50 ms, RSS <= 200 MB. Reported, never asserted.
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from appliance.core.waiting import wait_until
from appliance.policy.incremental import pod_added
from appliance.policy.resolution import resolve
from k8s_sync.cluster import ClusterSync
from k8s_sync.kubeapi import JSON, ApiError, KubeApi, make_api_client
from k8s_sync.reflector import ReflectorSettings
from k8s_sync.resources import RESOURCES, Role
from lab.kube_apiserver import ApiServerConfig, apply_crds, start_apiserver

N_NAMESPACES = 100
N_APPS = 20
THREADS = 16


def _rss_mb() -> tuple[float, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def _parallel(fn: Callable[[Any], object], items: Iterable[Any]) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        for _ in pool.map(fn, items):
            pass


def _objects(pods: int, policies: int, eips: int, nodes: int) -> dict[str, list[JSON]]:
    ns_names = [f"bench-{i:03d}" for i in range(N_NAMESPACES)]
    out: dict[str, list[JSON]] = {"Namespace": [], "Node": [], "EgressGateway": [], "policies": [], "pods": []}
    for i, ns in enumerate(ns_names):
        out["Namespace"].append({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": ns, "labels": {"tier": f"t{i % 5}"}}})
    for i in range(nodes):
        labels = {"egressgw.io/gateway": "true"} if i < 4 else {}
        out["Node"].append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{i:03d}",
                                                                              "labels": labels},
                            "spec": {"podCIDR": f"100.{64 + i // 256}.{i % 256}.0/24"},
                            "_ip": f"100.127.{i // 250}.{10 + i % 250}"})
    out["EgressGateway"].append({
        "apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "bench"},
        "spec": {"clusterDefault": True, "nodeSelector": {"selector": {"matchLabels": {"egressgw.io/gateway": "true"}}},
                 "ippools": {"ipv4": [f"203.0.113.0-203.0.113.{eips - 1}"],
                             "ipv6": [f"2001:db8:e1::-2001:db8:e1::{eips - 1:x}"]}}})
    for i in range(policies):
        eip: JSON = {"allocatorPolicy": "rr"} if i % 4 == 0 else {}
        if i % 10 == 9:
            out["policies"].append({
                "apiVersion": "egressgw.io/v1alpha1", "kind": "EgressClusterPolicy", "metadata": {"name": f"cp-{i}"},
                "spec": {"egressIP": eip, "priority": i % 7, "appliedTo": {
                    "namespaceSelector": {"matchLabels": {"tier": f"t{i % 5}"}},
                    "podSelector": {"matchLabels": {"app": f"app-{i % N_APPS}"}}}}})
        else:
            spec: JSON = {"egressIP": eip, "priority": i % 3,
                          "appliedTo": {"podSelector": {"matchLabels": {"app": f"app-{i % N_APPS}"}}}}
            if i % 3 == 1:
                spec["destSubnet"] = [f"198.51.100.{(i * 8) % 256}/29"]
            out["policies"].append({"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressPolicy",
                                    "metadata": {"name": f"p-{i}", "namespace": ns_names[i % N_NAMESPACES]},
                                    "spec": spec})
    for i in range(pods):
        node = i % nodes
        out["pods"].append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod-{i}", "namespace": ns_names[i % N_NAMESPACES],
                         "labels": {"app": f"app-{i % N_APPS}", "idx": str(i % 7)}},
            "spec": {"nodeName": f"node-{node:03d}", "containers": [{"name": "c", "image": "example.invalid/x"}]},
            "_ips": [f"100.{64 + node // 256}.{node % 256}.{(i // nodes) % 250 + 2}",
                     f"2001:db8:64:{node:x}::{i // nodes + 2:x}"],
        })
    return out


def _write_all(api: KubeApi, objs: dict[str, list[JSON]]) -> None:
    def create(obj: JSON) -> None:
        body = {k: v for k, v in obj.items() if not k.startswith("_")}
        res = RESOURCES[obj["kind"]]
        ns = obj["metadata"].get("namespace")
        try:
            api.create(res.path(ns), body)
        except ApiError as e:
            if e.status != 409:
                raise
        if obj["kind"] == "Node":
            api.merge_patch(res.path(None, obj["metadata"]["name"], "status"),
                            {"status": {"addresses": [{"type": "InternalIP", "address": obj["_ip"]}]}})
        if obj["kind"] == "Pod":
            ips = obj["_ips"]
            api.merge_patch(res.path(ns, obj["metadata"]["name"], "status"),
                            {"status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": i} for i in ips]}})

    for key in ("Namespace", "Node", "EgressGateway", "policies", "pods"):
        _parallel(create, objs[key])


def _complete(sync: ClusterSync, pods: int, policies: int) -> bool:
    """Cheap check on the store's parsed pods (building a snapshot or raw stubs on every poll would slow what we
    measure)."""
    store = sync.store
    with_ips = sum(1 for p in store.typed_objects("Pod") if p.ips)
    n_policies = len(store.raw_objects("EgressPolicy")) + len(store.raw_objects("EgressClusterPolicy"))
    return with_ips >= pods and n_policies >= policies


def run_sync_bench(out_path: Path, *, quick: bool = False, pods: int = 10000, policies: int = 1000, eips: int = 256,
                   nodes: int = 100) -> dict[str, Any]:
    if quick:
        pods, policies, eips, nodes = 1000, 100, 64, 20
    figures: dict[str, Any] = {"pods": pods, "policies": policies, "eips": eips, "nodes": nodes}
    settings = ReflectorSettings(backoff_initial=0.05, backoff_max=1.0)
    with tempfile.TemporaryDirectory(prefix="egt-sy-bench-") as tmp:
        server = start_apiserver(ApiServerConfig(workdir=Path(tmp)))
        try:
            apply_crds(server)
            client = make_api_client(str(server.kubeconfig_path))
            api = KubeApi(client)
            sync = ClusterSync(api, role=Role.GATEWAY, settings=settings)
            sync.start()
            wait_until(sync.store.synced, timeout=60, interval=0.02, what="the store's first sync")
            objs = _objects(pods, policies, eips, nodes)
            started = time.monotonic()
            _write_all(api, objs)
            written = time.monotonic()
            del objs  # the generated manifests are the benchmark's, not the store's: keep them out of the RSS
            figures["write_s"] = round(written - started, 3)
            wait_until(lambda: _complete(sync, pods, policies), timeout=300, interval=0.05,
                       what="the watching store to hold every object written")
            sync.store.snapshot()
            figures["watch_catchup_s"] = round(time.monotonic() - written, 3)

            cold = ClusterSync(api, role=Role.GATEWAY, settings=settings)
            t0 = time.monotonic()
            cold.start()
            wait_until(cold.store.synced, timeout=300, interval=0.02, what="a cold list of the whole cluster")
            cold.store.snapshot()
            figures["cold_list_s"] = round(time.monotonic() - t0, 3)
            cold.stop()
            del cold
            gc.collect()

            snap = sync.store.snapshot()
            times = []
            intent = resolve(snap)
            for _ in range(3):
                t0 = time.thread_time()
                intent = resolve(snap, previous=intent)
                times.append(time.thread_time() - t0)
            figures["full_resolution_s"] = round(statistics.median(times), 4)
            figures["steerings"] = len(intent.steerings)

            figures.update(_incremental(api, sync, intent))
            rss, peak = _rss_mb()
            figures["rss_mb"] = round(rss, 1)
            figures["peak_rss_mb"] = round(peak, 1)
            sync.stop()
            client.close()
        finally:
            server.stop()
    _report(figures)
    out_path.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _incremental(api: KubeApi, sync: ClusterSync, intent: Any) -> dict[str, Any]:
    api_to_store, build, local = [], [], []
    for i in range(20):
        name, ns = f"late-{i}", "bench-000"
        arrived = threading.Event()
        want = (ns, name)

        def seen(reason: str, want: tuple[str, str] = want, arrived: threading.Event = arrived) -> None:
            raw = sync.store.get_raw("Pod", *want)
            if raw is not None and (raw.get("status") or {}).get("podIP"):
                arrived.set()

        sync.store.subscribe(seen)
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": "app-0"}},
                "spec": {"nodeName": "node-000", "containers": [{"name": "c", "image": "example.invalid/x"}]}}
        api.create(RESOURCES["Pod"].path(ns), body)
        t0 = time.monotonic()
        api.merge_patch(RESOURCES["Pod"].path(ns, name, "status"),
                        {"status": {"phase": "Running", "podIP": f"100.64.0.{200 + i}",
                                    "podIPs": [{"ip": f"100.64.0.{200 + i}"}]}})
        arrived.wait(10)
        api_to_store.append(time.monotonic() - t0)
        t1 = time.thread_time()
        snap = sync.store.snapshot()
        t2 = time.thread_time()
        pod = sync.store.typed_object("Pod", ns, name)  # the store keeps the parsed pod, not its raw object
        assert pod is not None
        intent = pod_added(snap, intent, pod)
        build.append(t2 - t1)
        local.append(time.thread_time() - t2)
    return {
        "api_to_store_s": round(statistics.median(api_to_store), 4),
        "snapshot_build_s": round(statistics.median(build), 4),
        "incremental_resolution_s": round(statistics.median(local), 4),
        "incremental_pod_add_s": round(statistics.median(api_to_store) + statistics.median(build)
                                       + statistics.median(local), 4),
    }


def _report(f: dict[str, Any]) -> None:
    rows = [
        ("cluster", f"{f['pods']} pods, {f['policies']} policies, {f['eips']} EIPs, {f['nodes']} nodes", ""),
        ("writing every object (16 threads)", f"{f['write_s']:.2f} s", ""),
        ("last write -> complete snapshot (watch)", f"{f['watch_catchup_s']:.3f} s", ""),
        ("cold list -> synced + snapshot", f"{f['cold_list_s']:.3f} s", ""),
        ("full resolution (CPU, one core)", f"{f['full_resolution_s'] * 1000:.0f} ms", "goal <= 1000 ms"),
        ("steerings", str(f["steerings"]), ""),
        ("pod IP written -> in the store", f"{f['api_to_store_s'] * 1000:.1f} ms", ""),
        ("snapshot build after one pod change", f"{f['snapshot_build_s'] * 1000:.1f} ms", ""),
        ("incremental resolution (pod_added)", f"{f['incremental_resolution_s'] * 1000:.1f} ms", "goal <= 50 ms"),
        ("pod add end to end (API->store->intent)", f"{f['incremental_pod_add_s'] * 1000:.1f} ms", ""),
        ("RSS after / peak", f"{f['rss_mb']:.0f} MB / {f['peak_rss_mb']:.0f} MB", "goal <= 200 MB"),
    ]
    width = max(len(r[0]) for r in rows)
    print("egressgw bench sync")
    for name, value, goal in rows:
        print(f"  {name:<{width}}  {value:<28} {goal}".rstrip())
