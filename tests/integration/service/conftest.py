"""Fixtures for the service-shell integration tests: the raw-JSON `Kube` helper (`tests.kube_support`) on the
session API server, with the lease namespace created."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from k8s_sync.kubeapi import KubeApi
from lab.kube_apiserver import ApiServer
from tests.kube_support import Kube, kube_session, lease_namespace_api


@pytest.fixture(scope="session")
def service_api(apiserver: ApiServer) -> Iterator[KubeApi]:
    with lease_namespace_api(apiserver) as api:
        yield api


@pytest.fixture
def kube(service_api: KubeApi) -> Iterator[Kube]:
    with kube_session(service_api) as k:
        yield k
