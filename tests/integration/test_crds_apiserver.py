"""The CRDs against the real kube-apiserver (v1.20): established, schema behaviour, status subresource."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lab.kube_apiserver import ApiServer

pytestmark = pytest.mark.apiserver

KINDS = {
    "egressgateways": "EgressGateway",
    "egresspolicies": "EgressPolicy",
    "egressclusterpolicies": "EgressClusterPolicy",
    "egressclusterinfos": "EgressClusterInfo",
}


def test_crds_are_established(kube_client: Any) -> None:
    from kubernetes import client

    api = client.ApiextensionsV1Api(kube_client)
    resp = api.list_custom_resource_definition(_preload_content=False)
    crds = {c["metadata"]["name"]: c for c in json.loads(resp.data)["items"]}
    for plural, kind in KINDS.items():
        crd = crds[f"{plural}.egressgw.io"]
        assert crd["spec"]["names"]["kind"] == kind
        conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conds["Established"] == "True"
        assert conds["NamesAccepted"] == "True"


def test_namespace_fixture_gives_a_fresh_namespace(kube_client: Any, kube_namespace: str,
                                                   apiserver: ApiServer) -> None:
    from kubernetes import client

    ns = client.CoreV1Api(kube_client).read_namespace(kube_namespace)
    assert ns.metadata.name == kube_namespace
    assert apiserver.kubeconfig_path.exists()
