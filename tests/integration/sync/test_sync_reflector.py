"""Reflectors and the store against the real kube-apiserver: order, relist on 410, API server restart (network
failures retried on the short interval, never the back-off; lease renewals failing fast and logged), synced gate,
and a pod's life (created, IP set by a status merge-patch, deleted) followed by the snapshot."""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

import pytest

from appliance.core.waiting import wait_until
from k8s_sync.kubeapi import JSON, KubeApi
from k8s_sync.leases import MemberIdentity, MemberLease
from k8s_sync.reflector import Gone, Reflector, ReflectorSettings, WatchSpec
from k8s_sync.resources import RESOURCES, Role
from k8s_sync.store import Store
from lab.kube_apiserver import ApiServer
from tests.kube_support import Kube

from .conftest import FAST

pytestmark = pytest.mark.apiserver


class Recorder:
    """A ReflectorSink that records what it is told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any, Any]] = []

    def replace(self, key: str, objects: list[JSON], resource_version: str) -> None:
        with self.lock:
            self.calls.append(("LIST", sorted(o["metadata"]["name"] for o in objects), resource_version))

    def apply(self, key: str, event_type: str, obj: JSON) -> None:
        with self.lock:
            self.calls.append((event_type, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))

    def events(self) -> list[tuple[str, Any, Any]]:
        with self.lock:
            return [c for c in self.calls if c[0] != "LIST"]


def pod_spec(namespace: str) -> WatchSpec:
    return WatchSpec(key="Pod", resource=RESOURCES["Pod"], namespace=namespace)


def test_events_arrive_in_order_from_the_lists_resource_version(sync_api: KubeApi, kube: Kube,
                                                                kube_namespace: str) -> None:
    kube.pod(kube_namespace, "before")
    rec = Recorder()
    r = Reflector(sync_api, pod_spec(kube_namespace), rec, settings=FAST)
    r.start()
    try:
        assert r.wait_synced(10)
        listed = rec.calls[0]
        assert listed[0] == "LIST" and listed[1] == ["before"]
        for i in range(5):
            kube.pod(kube_namespace, f"p{i}")
        kube.patch("Pod", "p1", {"metadata": {"labels": {"x": "y"}}}, kube_namespace)
        kube.delete("Pod", "p0", kube_namespace)
        wait_until(lambda: any(e[0] == "DELETED" for e in rec.events()), timeout=10, what="the DELETED event")
        events = rec.events()
        seen = [(e[0], e[1]) for e in events]
        # a deletion may first show as MODIFIED (deletionTimestamp set), then DELETED
        assert [e for e in seen if e != ("MODIFIED", "p0")] == [("ADDED", f"p{i}") for i in range(5)] + [
            ("MODIFIED", "p1"), ("DELETED", "p0")]
        rvs = [int(e[2]) for e in events]
        assert rvs == sorted(rvs) and rvs[0] > int(listed[2])
    finally:
        r.stop()


def test_stale_resource_version_relists(sync_api: KubeApi, kube: Kube, kube_namespace: str,
                                        apiserver: ApiServer) -> None:
    kube.pod(kube_namespace, "gone-soon")
    rec = Recorder()
    r = Reflector(sync_api, pod_spec(kube_namespace), rec, settings=FAST)
    stale = r._list()  # what a reflector held before a long outage
    kube.delete("Pod", "gone-soon", kube_namespace)
    kube.pod(kube_namespace, "new")
    apiserver.restart_apiserver()  # the watch cache restarts at etcd's current revision: `stale` is now too old
    with pytest.raises(Gone):
        r._watch(stale)
    # the watch cut short by the 410 must not hand a connection with a pending response back to the shared pool:
    # the next requests of the process (lease renewals, status patches) would fail with ResponseNotReady
    for _ in range(3):
        assert kube.get("Pod", "new", kube_namespace)["metadata"]["name"] == "new"
    # the running loop turns that into a relist: the deleted pod disappears, the new one appears
    r2 = Reflector(sync_api, pod_spec(kube_namespace), rec, settings=FAST, resource_version=stale)
    r2.start()
    try:
        wait_until(lambda: any(c[0] == "LIST" and c[1] == ["new"] for c in rec.calls), timeout=10, what="relist")
        assert r2.stats["relists"] >= 1
    finally:
        r2.stop()


def test_apiserver_restart_keeps_state_and_resumes(sync_api: KubeApi, kube: Kube, kube_namespace: str,
                                                   apiserver: ApiServer) -> None:
    kube.pod(kube_namespace, "a")
    store = Store(["Pod"])
    r = Reflector(sync_api, pod_spec(kube_namespace), store, settings=FAST)
    r.start()
    try:
        assert r.wait_synced(10)
        apiserver.stop_apiserver()
        wait_until(lambda: r.stats["errors"] >= 1, timeout=10, what="a connection error")
        assert [p["metadata"]["name"] for p in store.raw_objects("Pod")] == ["a"]  # last good state kept
        apiserver.restart_apiserver()
        kube.pod(kube_namespace, "b")
        wait_until(lambda: len(store.raw_objects("Pod")) == 2, timeout=20, what="pod b after the restart")
    finally:
        r.stop()


def sync_events(caplog: pytest.LogCaptureFixture, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    return [(r.egressgw_event, r.egressgw_fields) for r in list(caplog.records)  # type: ignore[attr-defined]
            if getattr(r, "egressgw_event", "").startswith(prefix)]


def test_apiserver_away_is_retried_on_the_short_interval_and_leases_say_so(
        sync_api: KubeApi, kube: Kube, kube_namespace: str, apiserver: ApiServer,
        caplog: pytest.LogCaptureFixture) -> None:
    # a back-off that would be obvious (5 s, then 10 s...): a refused connection must never wait for it
    settings = ReflectorSettings(watch_timeout_seconds=30, backoff_initial=5.0, backoff_max=30.0, network_retry_s=0.2)
    kube.pod(kube_namespace, "a")
    store = Store(["Pod"])
    r = Reflector(sync_api, pod_spec(kube_namespace), store, settings=settings)
    lease = MemberLease(sync_api, MemberIdentity(name=kube.unique("m")), renew_every=0.2)
    caplog.set_level(logging.INFO)
    r.start()
    lease.start()
    try:
        assert r.wait_synced(10)
        apiserver.stop_apiserver()
        wait_until(lambda: r.stats["errors"] >= 5, timeout=30, what="five failed reconnects while the server is away")
        wait_until(lambda: sync_events(caplog, "lease.renew_failed"), timeout=30, what="a logged lease failure")
        assert not sync_api.connectivity.reachable
        # while the server is down (refused): a starting server may then answer errors, which do back off
        reconnects = sync_events(caplog, "watch.reconnecting")
        apiserver.restart_apiserver()
        kube.pod(kube_namespace, "b")
        wait_until(lambda: len(store.raw_objects("Pod")) == 2, timeout=30, what="pod b after the restart")
        wait_until(lambda: sync_events(caplog, "lease.renew_recovered"), timeout=30, what="the lease's recovery")
    finally:
        lease.stop()
        r.stop()
    assert len(reconnects) >= 5
    assert {f["cause"] for _, f in reconnects} == {"network_error"}
    assert max(f["delay_s"] for _, f in reconnects) <= 0.2  # the short interval every time, however many failures
    failed = sync_events(caplog, "lease.renew_failed")
    # logged at the first failure, saying whether it was the network; that first failure may be the stopping
    # server's own answer to a renewal in flight (network=False): "nobody answers" is `connectivity` above
    assert failed[0][1]["failures"] == 1 and isinstance(failed[0][1]["network"], bool)
    recovered = sync_events(caplog, "lease.renew_recovered")
    assert recovered[0][1]["failures"] >= 2
    assert len(failed) < recovered[0][1]["failures"]  # rate-limited: not one line per failed renewal
    assert sync_api.connectivity.reachable


def test_nothing_is_synced_before_every_kind_is_listed(sync_api: KubeApi, kube_namespace: str) -> None:
    store = Store(["Pod", "Namespace"])
    pods = Reflector(sync_api, pod_spec(kube_namespace), store, settings=FAST)
    namespaces = Reflector(sync_api, WatchSpec(key="Namespace", resource=RESOURCES["Namespace"]), store,
                           settings=FAST)
    notified: list[str] = []
    store.subscribe(notified.append)
    pods.start()
    try:
        assert pods.wait_synced(10)
        assert not store.synced() and store.missing() == {"Namespace"}
        namespaces.start()
        assert namespaces.wait_synced(10)
        assert store.synced() and not store.missing()
        assert "Pod/LISTED" in notified and "Namespace/LISTED" in notified
    finally:
        pods.stop()
        namespaces.stop()


def test_pod_lifecycle_is_followed_by_the_snapshot(start_sync: Any, kube: Kube, kube_namespace: str) -> None:
    sync = start_sync(Role.GATEWAY)

    def pod() -> Any:
        return next((p for p in sync.store.snapshot().pods if p.namespace == kube_namespace), None)

    kube.pod(kube_namespace, "web", labels={"app": "web"}, node="worker-x")
    created = wait_until(pod, timeout=10, what="pod in the snapshot")
    assert created.ips == () and created.node_name == "worker-x"
    kube.set_pod_ips(kube_namespace, "web", ("100.64.1.10", "2001:db8:64:1::10"))
    running = wait_until(lambda: (p := pod()) is not None and p.ips and p, timeout=10, what="pod IPs")
    assert running.ips == (ipaddress.ip_address("100.64.1.10"), ipaddress.ip_address("2001:db8:64:1::10"))
    assert running.phase == "Running" and running.label_map == {"app": "web"}
    kube.set_pod_ips(kube_namespace, "web", ("100.64.1.10",), phase="Succeeded")  # finished: filtered by the server
    wait_until(lambda: pod() is None, timeout=10, what="finished pod gone")
    kube.pod(kube_namespace, "db", node="worker-x", ips=("100.64.1.11",))
    wait_until(pod, timeout=10, what="second pod")
    kube.delete("Pod", "db", kube_namespace)
    wait_until(lambda: pod() is None, timeout=10, what="deleted pod gone")


def test_agent_sees_only_its_nodes_pods(start_sync: Any, kube: Kube, kube_namespace: str) -> None:
    node = kube.unique("worker")
    sync = start_sync(Role.AGENT, node_name=node)
    kube.pod(kube_namespace, "mine", node=node, ips=("100.64.1.20",))
    kube.pod(kube_namespace, "other", node="somewhere-else", ips=("100.64.2.20",))
    wait_until(lambda: any(p.name == "mine" for p in sync.store.snapshot().pods), timeout=10, what="own pod")
    assert [p.name for p in sync.store.snapshot().pods if p.namespace == kube_namespace] == ["mine"]
