"""Fixtures for the service-shell integration tests: the sync tests' raw-JSON `Kube` helper on the session API
server, with the lease namespace created."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from k8s_sync.kubeapi import ApiError, KubeApi, make_api_client
from k8s_sync.leases import DEFAULT_NAMESPACE
from lab.kube_apiserver import ApiServer
from tests.integration.sync.conftest import Kube


@pytest.fixture(scope="session")
def service_api(apiserver: ApiServer) -> Iterator[KubeApi]:
    client = make_api_client(str(apiserver.kubeconfig_path))
    api = KubeApi(client)
    try:
        api.create("/api/v1/namespaces", {"metadata": {"name": DEFAULT_NAMESPACE}})
    except ApiError as e:
        if e.status != 409:
            raise
    try:
        yield api
    finally:
        client.close()


@pytest.fixture
def kube(service_api: KubeApi) -> Iterator[Kube]:
    k = Kube(service_api)
    try:
        yield k
    finally:
        k.finish()
