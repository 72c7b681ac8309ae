"""The status writer's lag gauges (`k8s_sync.status_metrics`) against the real API server and one nobody answers for:
writes that fail stay pending and the last-caught-up time stands still; a pass that writes everything clears the
pending count and moves the time; a follower exports neither."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from appliance.core.intent import Intent
from appliance.core.snapshot import Snapshot
from k8s_sync.kubeapi import KubeApi, make_api_client
from k8s_sync.oneshot import read_cluster
from k8s_sync.status_metrics import register_status_metrics
from k8s_sync.status_writer import StatusWriter
from lab.kube_apiserver import kubeconfig
from tests.kube_support import Kube

pytestmark = pytest.mark.apiserver

PENDING = "egressgw_status_pending_objects"
LAST_WRITE = "egressgw_status_last_write_timestamp_seconds"


def _registry(writer: StatusWriter) -> CollectorRegistry:
    reg = CollectorRegistry()
    register_status_metrics(writer, reg)
    return reg


def test_failed_writes_stay_pending_and_the_time_stands_still(tmp_path: Path) -> None:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(yaml.safe_dump(kubeconfig("https://127.0.0.1:9", "x")))  # nothing listens there
    dead = KubeApi(make_api_client(str(cfg)))
    objects: list[dict[str, Any]] = [{"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway",
                                      "metadata": {"name": "g", "resourceVersion": "1"}, "spec": {}}]
    clock = [1_800_000_000.0]
    writer = StatusWriter(dead, lambda kind: objects if kind == "EgressGateway" else [], clock=lambda: clock[0])
    reg = _registry(writer)
    assert reg.get_sample_value(PENDING) == 0 and reg.get_sample_value(LAST_WRITE) == 1_800_000_000.0
    clock[0] += 60
    report = writer.write_once(Snapshot(), Intent(steerings=(), outcomes=(), instances=(), cluster_cidrs=()))
    assert report.failed == 1
    assert reg.get_sample_value(PENDING) == 1
    assert reg.get_sample_value(LAST_WRITE) == 1_800_000_000.0  # not caught up since the start


def test_a_pass_that_writes_everything_clears_the_lag(sync_api: KubeApi, kube: Kube, kube_namespace: str) -> None:
    kube.policy(kube_namespace, "p", {"egressGatewayName": "none-such",
                                      "appliedTo": {"podSelector": {"matchLabels": {"a": "b"}}}})
    current = kube.get("EgressPolicy", "p", kube_namespace)
    view = read_cluster(sync_api, probe_service_cidr=False)
    clock = [1_800_000_000.0]
    writer = StatusWriter(sync_api, lambda kind: [current] if kind == "EgressPolicy" else [],
                          clock=lambda: clock[0])
    writer.pending_objects = 3  # as if an earlier pass had left writes behind
    reg = _registry(writer)
    clock[0] += 60
    report = writer.write_once(view.snapshot, view.intent)
    assert report.written == 1 and report.failed == 0
    assert reg.get_sample_value(PENDING) == 0
    assert reg.get_sample_value(LAST_WRITE) == 1_800_000_060.0


def test_a_follower_exports_no_lag(sync_api: KubeApi) -> None:
    writer = StatusWriter(sync_api, lambda kind: [], is_leader=lambda: False)
    reg = _registry(writer)
    assert reg.get_sample_value(PENDING) is None and reg.get_sample_value(LAST_WRITE) is None
