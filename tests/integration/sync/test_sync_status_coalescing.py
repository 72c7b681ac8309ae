"""The status writer coalesces: against the real API server, a burst of pod events (each one a new intent handed to
the writer, as a reconcile pass after every event would) produces at most one status patch per object per window;
the first change after a quiet window is written at once, the rest of the burst in one pass when the window ends.
The window's clock is injected, so nothing here depends on how fast the machine is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from appliance.core.waiting import wait_until
from appliance.policy.intent_tracking import IntentTracker
from k8s_sync.cluster import ClusterSync
from k8s_sync.kubeapi import JSON, KubeApi
from k8s_sync.resources import RESOURCES, Role
from k8s_sync.status_writer import StatusWriter
from tests.integration.sync.test_sync_status import gateway_env
from tests.kube_support import Kube

pytestmark = pytest.mark.apiserver

EVENTS = 12


class CountingApi:
    """The real API client, with the status patches it sends counted per path."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.patches: dict[str, int] = {}

    def merge_patch(self, path: str, body: JSON) -> JSON:
        self.patches[path] = self.patches.get(path, 0) + 1
        return self.api.merge_patch(path, body)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)


def test_a_burst_of_pod_events_is_one_patch_per_object_per_window(
        start_sync: Callable[..., ClusterSync], sync_api: KubeApi, kube: Kube, kube_namespace: str) -> None:
    ns = kube_namespace
    gw, _ = gateway_env(kube, pool=["203.0.113.136/29"])
    kube.policy(ns, "web", {"egressGatewayName": gw, "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}})
    sync = start_sync(Role.GATEWAY)
    api = CountingApi(sync_api)
    now = [0.0]
    writer = StatusWriter(api, sync.store.raw_objects, identity="test", window_s=60.0,  # type: ignore[arg-type]
                          monotonic=lambda: now[0])
    policy_path = RESOURCES["EgressPolicy"].path(ns, "web", "status")
    tracker = IntentTracker()

    def selected() -> int:
        status = kube.get("EgressPolicy", "web", ns).get("status") or {}
        return int(status.get("selectedIPs") or 0)

    def submit_current() -> None:
        snap = sync.store.snapshot()
        writer.submit(snap, tracker.next(snap).intent)

    writer.start()
    try:
        wait_until(lambda: any(p.ref.name == "web" for p in sync.store.snapshot().policies), timeout=30,
                   what="the policy in the store")
        submit_current()  # the first change after a quiet window: written at once
        wait_until(lambda: api.patches.get(policy_path, 0) == 1 and not writer.holding and writer.pending_objects == 0,
                   timeout=30, what="the first status write")
        for i in range(EVENTS):  # the burst: one pod event, one pass, one submission each
            kube.pod(ns, f"web-{i}", labels={"app": "web"}, node="worker1", ips=(f"100.64.7.{10 + i}",))
            wait_until(lambda i=i: any(p.name == f"web-{i}" and p.ips for p in sync.store.snapshot().pods),
                       timeout=30, what=f"pod web-{i} with its IP in the store")
            submit_current()
            wait_until(lambda: writer.holding, timeout=30, what="the writer holding the burst until the window ends")
        assert api.patches.get(policy_path) == 1, "a pod event inside the window was written on its own"
        assert selected() == 0
        now[0] += 60.0  # the window ends: the whole burst is one pass
        writer.poke()
        wait_until(lambda: api.patches.get(policy_path, 0) == 2 and not writer.holding, timeout=30,
                   what="the coalesced write at the end of the window")
        assert writer.flush(timeout=30)
        assert selected() == EVENTS
        assert all(count <= 2 for count in api.patches.values()), api.patches  # two windows: at most two each
    finally:
        writer.stop()
