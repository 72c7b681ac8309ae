"""Pytest fixtures for a real etcd + kube-apiserver (v1.20) with the egressgw CRDs applied.

Register with ``pytest_plugins = ["tests.fixtures_apiserver"]``. Fixtures:

- ``apiserver`` (session): etcd + kube-apiserver on free 127.0.0.1 ports, our CRDs applied and Established; yields
  a `lab.kube_apiserver.ApiServer` (``.kubeconfig_path``, ``.url``, ``.token``, ``.restart_apiserver()``). FAILS (never
  skips) when the binaries are missing: run ``scripts/ensure-kube-apiserver.sh``.
- ``kube_client`` (session): a `kubernetes.client.ApiClient` for it (admin token, TLS not verified).
- ``role_kubeconfigs`` (session): the shipped deploy/rbac/ applied unchanged and one kubeconfig per role
  (``{"agent": path, "gateway": path}``) with a token of the role's ServiceAccount from the TokenRequest API: run a
  service with these, never with the admin kubeconfig (the server runs ``--authorization-mode=Node,RBAC``).
- ``kube_namespace`` (function): a fresh namespace name per test (namespaces never finish deleting here - there is
  no namespace controller - so they are left behind; the session's etcd is thrown away at the end).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.kube_apiserver import ApiServer, ApiServerConfig, ApiServerError, apply_crds, start_apiserver

_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    # the test apiserver's certificate is self-signed by design (kubeconfig: insecure-skip-tls-verify)
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    workdir = tmp_path_factory.mktemp("kube-apiserver")
    try:
        server = start_apiserver(ApiServerConfig(workdir=workdir, die_with_parent=True))
    except ApiServerError as e:
        pytest.fail(f"cannot start the test kube-apiserver: {e}", pytrace=False)
    try:
        apply_crds(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def role_kubeconfigs(apiserver: ApiServer) -> dict[str, Path]:
    return apiserver.service_account_kubeconfigs()


@pytest.fixture(scope="session")
def kube_client(apiserver: ApiServer) -> Iterator[Any]:
    from kubernetes import client, config  # lazy import: the Kubernetes client (~0.4 s); unit tests never pay for it

    api = config.new_client_from_config(config_file=str(apiserver.kubeconfig_path))
    assert isinstance(api, client.ApiClient)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def kube_namespace(kube_client: Any, request: pytest.FixtureRequest) -> str:
    from kubernetes import client  # lazy import: as in kube_client

    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t{os.getpid() % 10000}-{next(_counter)}-{base}"[:63].strip("-")
    client.CoreV1Api(kube_client).create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": name}})
    return name
