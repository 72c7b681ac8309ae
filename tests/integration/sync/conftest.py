"""Fixtures for the k8s_sync integration tests (session kube-apiserver, fresh namespace per test).

`kube`: the raw-JSON helper `tests.kube_support.Kube` (pods, nodes, gateways, policies; cluster-scoped objects are
deleted after the test). `sync`: starts a `ClusterSync` (fast backoff) and stops it after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from k8s_sync.cluster import ClusterSync
from k8s_sync.kubeapi import KubeApi
from k8s_sync.reflector import ReflectorSettings
from k8s_sync.resources import Role
from lab.kube_apiserver import ApiServer
from tests.kube_support import Kube, kube_session, lease_namespace_api

FAST = ReflectorSettings(watch_timeout_seconds=30, backoff_initial=0.05, backoff_max=0.5)


@pytest.fixture(scope="session")
def sync_api(apiserver: ApiServer) -> Iterator[KubeApi]:
    with lease_namespace_api(apiserver) as api:
        yield api


@pytest.fixture
def kube(sync_api: KubeApi) -> Iterator[Kube]:
    with kube_session(sync_api) as k:
        yield k


@pytest.fixture
def start_sync(sync_api: KubeApi) -> Iterator[Callable[..., ClusterSync]]:
    started: list[ClusterSync] = []

    def start(role: Role = Role.GATEWAY, **kw: Any) -> ClusterSync:
        s = ClusterSync(sync_api, role=role, settings=FAST, **kw)
        s.start()
        started.append(s)
        assert s.wait_synced(15), f"not synced: missing {sorted(s.store.missing())}"
        return s

    try:
        yield start
    finally:
        for s in started:
            s.stop()
