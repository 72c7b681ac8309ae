"""What the store keeps per pod (memory at 100k pods): the typed pod with its repeated strings interned, a stub of
the raw object (key, resourceVersion, podIP), and a snapshot tuple that follows every pod event in key order."""

from __future__ import annotations

from typing import Any

from k8s_sync.store import Store


def raw_pod(name: str, rv: int, *, ns: str = "web", app: str = "frontend", ip: str | None = "100.64.1.10",
            node: str = "worker-1") -> dict[str, Any]:
    # labels and names built at run time, as JSON parsing does: equal strings, distinct objects
    status: dict[str, Any] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    if ip:
        status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "".join(ns), "resourceVersion": str(rv), "uid": f"u-{name}",
                         "labels": {"".join(["a", "pp"]): "".join(app), "tier": "".join(["fr", "ont"])}},
            "spec": {"nodeName": "".join(node), "containers": [{"name": "c", "image": "example.invalid/x"}]},
            "status": status}


def store_with_pods(count: int) -> Store:
    store = Store(["Pod", "Namespace", "Node"])
    for kind in ("Namespace", "Node"):
        store.replace(kind, [], "1")
    store.replace("Pod", [], "1")
    for i in range(count):
        store.apply("Pod", "ADDED", raw_pod(f"p-{i:03d}", 10 + i, ip=f"100.64.1.{10 + i}"))
    return store


def test_raw_pods_are_kept_as_stubs_and_typed_pods_share_their_strings() -> None:
    store = store_with_pods(3)
    raw = store.get_raw("Pod", "web", "p-001")
    assert raw == {"metadata": {"name": "p-001", "namespace": "web", "resourceVersion": "11"},
                   "status": {"podIP": "100.64.1.11"}}
    a, b = store.snapshot().pods[:2]
    assert a.namespace is b.namespace and a.node_name is b.node_name
    assert all(x is y for (ka, va), (kb, vb) in zip(a.labels, b.labels, strict=True) for x, y in ((ka, kb), (va, vb)))
    store.apply("Pod", "MODIFIED", raw_pod("p-001", 99, ip=None))  # no IP yet: the stub says so
    assert store.get_raw("Pod", "web", "p-001") == {
        "metadata": {"name": "p-001", "namespace": "web", "resourceVersion": "99"}}


def test_the_snapshot_follows_pod_events_in_key_order() -> None:
    store = store_with_pods(5)
    store.apply("Pod", "DELETED", raw_pod("p-002", 50))
    store.apply("Pod", "ADDED", raw_pod("p-0025", 51, ip="100.64.1.99"))
    store.apply("Pod", "MODIFIED", raw_pod("p-004", 52, app="backend"))
    store.apply("Pod", "ADDED", raw_pod("a-first", 53))
    pods = store.snapshot().pods
    assert [p.name for p in pods] == ["a-first", "p-000", "p-001", "p-0025", "p-003", "p-004"]
    assert dict(pods[-1].labels)["app"] == "backend"
    store.replace("Pod", [raw_pod("p-009", 60), raw_pod("p-008", 61)], "61")  # a relist
    assert [p.name for p in store.snapshot().pods] == ["p-008", "p-009"]


def test_typed_objects_are_the_parsed_pods() -> None:
    store = store_with_pods(3)
    store.apply("Pod", "MODIFIED", raw_pod("p-001", 99, ip=None))
    assert sorted((p.name, len(p.ips)) for p in store.typed_objects("Pod")) == [("p-000", 1), ("p-001", 0),
                                                                                ("p-002", 1)]
    assert store.typed_object("Pod", "web", "p-002").ips[0].compressed == "100.64.1.12"
    assert store.typed_object("Pod", "web", "none-such") is None
