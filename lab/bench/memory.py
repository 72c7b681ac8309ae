"""Resident memory per 10k pods of a gateway's cluster view: the store's caches plus the resolved intent.

`measure_rss_per_10k(pods)` runs a fresh Python process (so nothing the caller allocated counts) that:
1. imports what a gateway imports and records its RSS (the baseline);
2. feeds a real `k8s_sync.store.Store` the objects the sync benchmark writes (`lab.bench.sync._objects`: nodes,
   100 namespaces, one gateway, policies 90 % namespaced / 10 % cluster-wide, and `pods` pods), the pods shaped as
   the API server returns them (uid, resourceVersion, managedFields, spec defaults, status conditions and container
   statuses: ~3 KB of JSON each), one watch event at a time and trimmed by the gateway's Pod watch spec, as its
   reflector catching up would;
3. builds the snapshot and resolves it through the reconcile loop's `IntentTracker` (pod index + steerings);
4. reports VmRSS after each step and VmHWM (peak), and `per_10k_mb` = (RSS after resolution - baseline) x 10,000 /
   pods. tracemalloc is off: it would double the memory it measures.

Used by `egressgw bench scale` (lab/bench/scale.py) and runnable by hand: `python -m lab.bench.memory 10000 50000`.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from appliance.policy.intent_tracking import IntentTracker
from k8s_sync.kubeapi import JSON
from k8s_sync.resources import Role, watch_specs
from k8s_sync.store import Store
from lab.bench.sync import _objects

EGRESS_KINDS = ("EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo")
EXPECTED = ("Node", "Pod", "Namespace", *EGRESS_KINDS)


def default_shape(pods: int) -> dict[str, int]:
    """Policies, EIPs and nodes for a pod count, after issue 16's sizes (10k: 1,000 / 256 / 100; 100k: 5,000 /
    1,000 / 500). EIPs are capped at 256: the sync benchmark's IPv4 pool is one /24 (they barely weigh anyway)."""
    return {"policies": min(5000, max(100, pods // 10)), "eips": 256, "nodes": 100 if pods <= 10_000 else 500}


def _status_kb() -> dict[str, float]:
    values: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def api_shaped_pod(manifest: JSON, rv: int) -> JSON:
    """A pod as a watch delivers it (what the reflector hands the store), from a benchmark manifest with `_ips`."""
    meta = manifest["metadata"]
    ips = manifest["_ips"]
    ts = "2026-01-01T00:00:00Z"
    container = {"name": "c", "image": "example.invalid/x:1.0", "imagePullPolicy": "IfNotPresent",
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                 "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                 "volumeMounts": [{"name": "kube-api-access", "readOnly": True,
                                   "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}
    conditions = [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": ts}
                  for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            **meta, "uid": f"00000000-0000-4000-8000-{rv:012d}", "resourceVersion": str(rv),
            "creationTimestamp": ts, "generateName": f"{meta['name'][:-2]}-",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u",
                                 "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": ts,
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                                                        "f:spec": {"f:containers": {'k:{"name":"c"}': {}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": ts,
                 "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {}, "f:podIP": {}, "f:podIPs": {}}}},
            ],
        },
        "spec": {**manifest["spec"], "containers": [container], "restartPolicy": "Always",
                 "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
                 "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
                 "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
                 "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                  "effect": "NoExecute", "tolerationSeconds": 300}],
                 "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                     {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]},
        "status": {"phase": "Running", "conditions": conditions, "hostIP": "100.127.0.10",
                   "podIP": ips[0], "podIPs": [{"ip": i} for i in ips], "startTime": ts, "qosClass": "Burstable",
                   "containerStatuses": [{"name": "c", "state": {"running": {"startedAt": ts}}, "ready": True,
                                          "restartCount": 0, "image": "example.invalid/x:1.0", "started": True,
                                          "imageID": "example.invalid/x@sha256:" + "0" * 64,
                                          "containerID": "containerd://" + f"{rv:064d}"}]},
    }


def _with_rv(obj: JSON, rv: int) -> JSON:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(rv)}}


def load(pods: int, *, policies: int, eips: int, nodes: int) -> dict[str, Any]:
    """Fill a store and resolve it, in this process; the RSS figures (MB) along the way."""
    gc.collect()
    figures: dict[str, Any] = {"pods": pods, "policies": policies, "eips": eips, "nodes": nodes,
                               "baseline_mb": round(_status_kb()["VmRSS"], 1)}
    store = Store(EXPECTED)
    objs = _objects(pods, policies, eips, nodes)
    manifests = objs.pop("pods")
    rv = 1
    for kind in ("Node", "Namespace", "EgressGateway"):
        store.replace(kind, [_with_rv(o, rv := rv + 1) for o in objs[kind]], str(rv))
    for kind in ("EgressPolicy", "EgressClusterPolicy"):
        store.replace(kind, [_with_rv(o, rv := rv + 1) for o in objs["policies"] if o["kind"] == kind], str(rv))
    store.replace("EgressClusterInfo", [], str(rv))
    store.replace("Pod", [], str(rv))
    del objs
    spec = next(s for s in watch_specs(Role.GATEWAY) if s.key == "Pod")
    trim = spec.trim or (lambda o: o)
    t0 = time.process_time()
    while manifests:  # one watch event at a time, trimmed as the reflector does; the manifest is dropped as it goes
        store.apply("Pod", "ADDED", trim(api_shaped_pod(manifests.pop(), rv := rv + 1)))
    figures["ingest_cpu_s"] = round(time.process_time() - t0, 2)
    gc.collect()
    figures["store_mb"] = round(_status_kb()["VmRSS"], 1)
    tracker = IntentTracker()
    t0 = time.process_time()
    intent = tracker.next(store.snapshot()).intent
    figures["resolve_cpu_s"] = round(time.process_time() - t0, 2)
    figures["steerings"] = len(intent.steerings)
    del intent
    gc.collect()
    status = _status_kb()
    figures["resolved_mb"] = round(status["VmRSS"], 1)
    figures["peak_mb"] = round(status["VmHWM"], 1)
    figures["per_10k_mb"] = round((status["VmRSS"] - figures["baseline_mb"]) * 10_000 / max(pods, 1), 1)
    figures["peak_per_10k_mb"] = round((status["VmHWM"] - figures["baseline_mb"]) * 10_000 / max(pods, 1), 1)
    return figures


def measure_rss_per_10k(pods: int, *, policies: int | None = None, eips: int | None = None,
                        nodes: int | None = None, timeout: float = 1800.0) -> dict[str, Any]:
    """`load` in a fresh process; returns its figures (`per_10k_mb`, `peak_mb`, `store_mb`, ...)."""
    shape = default_shape(pods)
    args = [str(pods), str(policies or shape["policies"]), str(eips or shape["eips"]), str(nodes or shape["nodes"])]
    out = subprocess.run([sys.executable, "-m", "lab.bench.memory", "--child", *args], capture_output=True,
                         text=True, timeout=timeout, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        pods, policies, eips, nodes = (int(a) for a in argv[1:5])
        print(json.dumps(load(pods, policies=policies, eips=eips, nodes=nodes)))
        return
    for pods in (int(a) for a in argv or ["10000"]):
        print(json.dumps(measure_rss_per_10k(pods)))


if __name__ == "__main__":  # pragma: no cover - manual run
    main(sys.argv[1:])
