"""Micro-benchmark of the agent's cluster-wide pod watch (`k8s_sync.store.REMOTE_PODS`): how many pod events per
second one agent ingests (JSON decode of a full pod as the API server sends it + trim + parse + coverage check +
store), and the store's memory after 100,000 pods with 0 and with 10,000 stray pod IPs. Pure CPU, no API server:
`python -m lab.bench.remote_strays [n_pods] [n_strays]`. Figures are reported, not asserted (docs/cluster-sync.md).
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from typing import Any

from k8s_sync.reflector import trim_pod_ips
from k8s_sync.store import REMOTE_PODS, Store

KINDS = ["EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo", "Pod", "Namespace", "Node",
         "Lease", "IPPool", "ServiceCIDR", REMOTE_PODS]
N_NODES = 100


def _node(i: int, v6: bool) -> dict[str, Any]:
    cidrs = [f"100.64.{i}.0/24"] + ([f"2001:db8:64:{i:x}::/64"] if v6 else [])
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"w{i}", "resourceVersion": "1"},
            "spec": {"podCIDRs": cidrs}, "status": {"addresses": [{"type": "InternalIP",
                                                                   "address": f"100.127.0.{i}"}]}}


def _pod_line(i: int, rv: int, *, event: str = "ADDED") -> bytes:
    """A watch event line with a pod as big as a typical Deployment pod (~4 kB: managedFields, a container spec)."""
    node = i % N_NODES
    host = i // N_NODES
    ips = [f"100.64.{node}.{host % 250 + 2}", f"2001:db8:64:{node:x}::{host:x}"]
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"web-{i}", "namespace": f"ns-{i % 100}", "uid": f"00000000-0000-0000-0000-{i:012d}",
                     "resourceVersion": str(rv), "labels": {"app": f"app-{i % 50}", "pod-template-hash": "5d8f7c"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c",
                                          "uid": "11111111-2222-3333-4444-555555555555", "controller": True}],
                     "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                        "apiVersion": "v1", "fieldsType": "FieldsV1",
                                        "fieldsV1": {f"f:field{k}": {} for k in range(40)}}] * 2},
        "spec": {"nodeName": f"w{node}", "containers": [{
            "name": "web", "image": "registry.example/web:1.2.3", "ports": [{"containerPort": 8080}],
            "env": [{"name": f"VAR_{k}", "value": "x" * 20} for k in range(10)],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io"}]}],
            "serviceAccountName": "default", "tolerations": [{"key": "node.kubernetes.io/not-ready"}] * 2},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": a} for a in ips],
                   "hostIP": f"100.127.0.{node}", "startTime": "2026-01-01T00:00:00Z",
                   "conditions": [{"type": t, "status": "True"} for t in ("Ready", "Initialized", "PodScheduled")],
                   "containerStatuses": [{"name": "web", "ready": True, "restartCount": 0,
                                          "image": "registry.example/web:1.2.3", "imageID": "sha256:" + "a" * 64,
                                          "containerID": "containerd://" + "b" * 64}]},
    }
    return json.dumps({"type": event, "object": pod}).encode()


def _store(n_v6_nodes: int) -> Store:
    """An agent store whose first `n_v6_nodes` nodes list their IPv6 pod CIDR too (the others' IPv6 pods stray)."""
    s = Store(KINDS)
    for kind in KINDS:
        nodes = [_node(i, i < n_v6_nodes) for i in range(N_NODES)] if kind == "Node" else []
        if kind != REMOTE_PODS:
            s.replace(kind, nodes, "1")
    s.replace(REMOTE_PODS, [], "1")
    return s


def _ingest(store: Store, lines: list[bytes]) -> float:
    t0 = time.perf_counter()
    for line in lines:
        event = json.loads(line)
        store.apply(REMOTE_PODS, event["type"], trim_pod_ips(event["object"]))
    return time.perf_counter() - t0


def bench(n_pods: int = 100_000, n_strays: int = 10_000) -> dict[str, Any]:
    lines = [_pod_line(i, i + 10) for i in range(n_pods)]
    out: dict[str, Any] = {"pods": n_pods, "event_bytes": sum(map(len, lines)) // len(lines)}
    # strays: the pods of the nodes without an IPv6 pod CIDR (N_NODES - v6 nodes of them, n_pods / N_NODES each)
    stray_nodes = round(n_strays * N_NODES / n_pods)
    for label, v6_nodes in (("0_strays", N_NODES), (f"{n_strays}_strays", N_NODES - stray_nodes)):
        tracemalloc.start()  # memory of one store (tracing slows allocations: timed on another, untraced)
        base = tracemalloc.get_traced_memory()[0]
        _ingest(traced := _store(v6_nodes), lines)
        memory = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del traced
        store = _store(v6_nodes)
        seconds = _ingest(store, lines)
        kept = len(store.snapshot().remote_strays)
        modified = [_pod_line(i, n_pods + i + 10, event="MODIFIED") for i in range(0, n_pods, 10)]
        mod_seconds = _ingest(store, modified)
        out[label] = {"kept_pods": kept, "events_per_s": round(n_pods / seconds),
                      "us_per_event": round(seconds / n_pods * 1e6, 1),
                      "modified_events_per_s": round(len(modified) / mod_seconds),
                      "store_memory_mb": round(memory / 1e6, 2), "revision": store.revision}
    decode = time.perf_counter()
    for line in lines[:20_000]:
        json.loads(line)
    out["json_decode_us_per_event"] = round((time.perf_counter() - decode) / 20_000 * 1e6, 1)
    return out


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(bench(*args), indent=2))
