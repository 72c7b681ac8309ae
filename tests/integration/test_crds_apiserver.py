"""The CRDs against the real kube-apiserver (v1.20): established, what the schema rejects (422) and what it silently
prunes (unknown fields: so `appliance.api.validation` must be the guard), the status subresource, the examples."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.api.validation import validate_all
from lab.kube_apiserver import ApiServer

pytestmark = pytest.mark.apiserver

ROOT = Path(__file__).resolve().parents[2]
G, V = "egressgw.io", "v1alpha1"
PLURALS = {
    "EgressGateway": "egressgateways",
    "EgressPolicy": "egresspolicies",
    "EgressClusterPolicy": "egressclusterpolicies",
    "EgressClusterInfo": "egressclusterinfos",
}
#: invalid examples the API server itself refuses (types, enums, ranges, formats); the others it accepts, and only
#: egressgw's own validation catches them
SERVER_REJECTS = {"bad-selector-operator", "negative-priority", "overflowing-priority", "policy-malformed-eip",
                  "unknown-allocator-policy", "unknown-tunnel-type", "wrong-type", "wrong-type-priority"}


def create(kube_client: Any, obj: dict[str, Any], namespace: str, *, dry_run: bool = False) -> dict[str, Any]:
    from kubernetes import client

    api = client.CustomObjectsApi(kube_client)
    kwargs = {"dry_run": "All"} if dry_run else {}
    if obj["kind"] == "EgressPolicy":
        body = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        out: dict[str, Any] = api.create_namespaced_custom_object(G, V, namespace, PLURALS[obj["kind"]], body,
                                                                  **kwargs)
    else:
        out = api.create_cluster_custom_object(G, V, PLURALS[obj["kind"]], obj, **kwargs)
    return out


def status_code(call: Any) -> int:
    from kubernetes.client.rest import ApiException

    try:
        call()
    except ApiException as e:
        return int(e.status)
    return 200


def test_crds_are_established(kube_client: Any) -> None:
    from kubernetes import client

    resp = client.ApiextensionsV1Api(kube_client).list_custom_resource_definition(_preload_content=False)
    crds = {c["metadata"]["name"]: c for c in json.loads(resp.data)["items"]}
    for kind, plural in PLURALS.items():
        crd = crds[f"{plural}.{G}"]
        assert crd["spec"]["names"]["kind"] == kind
        conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conds["Established"] == "True" and conds["NamesAccepted"] == "True"


def test_examples_apply_cleanly(kube_client: Any, kube_namespace: str) -> None:
    objects = [d for p in sorted((ROOT / "examples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
               if d and d["apiVersion"] == f"{G}/{V}"]
    assert len(objects) >= 8
    for obj in objects:
        stored = create(kube_client, obj, kube_namespace, dry_run=True)
        assert stored["spec"] == obj["spec"]  # nothing pruned or defaulted away


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_what_the_server_refuses(kube_client: Any, kube_namespace: str, path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    ours = [d for d in docs if d["apiVersion"] == f"{G}/{V}"]  # (a spidernet manifest has no CRD here)
    codes = [status_code(lambda d=d: create(kube_client, d, kube_namespace, dry_run=True)) for d in ours]
    if path.stem in SERVER_REJECTS:
        assert codes[-1] == 422
    else:
        assert set(codes) <= {200}
    assert validate_all(docs).problems  # whatever the server does, egressgw's validation refuses it


def test_unknown_fields_are_pruned_not_rejected(kube_client: Any, kube_namespace: str) -> None:
    obj = {"apiVersion": f"{G}/{V}", "kind": "EgressPolicy", "metadata": {"name": "typo"},
           "spec": {"egressIp": {"ipv4": "203.0.113.130"}, "appliedTo": {"podSelector": {}, "podSelectr": {}}}}
    stored = create(kube_client, obj, kube_namespace)
    assert stored["spec"] == {"appliedTo": {"podSelector": {}}}
    fields = {p.field for p in validate_all([obj]).problems}
    assert fields == {"spec.egressIp", "spec.appliedTo.podSelectr"}


def test_wrong_types_are_rejected_with_the_field(kube_client: Any, kube_namespace: str) -> None:
    from kubernetes.client.rest import ApiException

    obj = {"apiVersion": f"{G}/{V}", "kind": "EgressGateway", "metadata": {"name": f"{kube_namespace}-types"},
           "spec": {"clusterDefault": "yes", "ippools": {"ipv4": "203.0.113.130"}, "tunnel": {"vni": "7700"}}}
    with pytest.raises(ApiException) as err:
        create(kube_client, obj, kube_namespace, dry_run=True)
    assert err.value.status == 422
    message = json.loads(err.value.body)["message"]
    for field in ("spec.clusterDefault", "spec.ippools.ipv4", "spec.tunnel.vni"):
        assert re.search(re.escape(field) + r": Invalid value", message), message


def test_status_subresource(kube_client: Any, kube_namespace: str) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi(kube_client)
    name, plural = "status-test", "egresspolicies"
    obj = {"apiVersion": f"{G}/{V}", "kind": "EgressPolicy", "metadata": {"name": name},
           "spec": {"appliedTo": {"podSelector": {"matchLabels": {"app": "a"}}}},
           "status": {"gateway": "ignored-on-create"}}
    created = create(kube_client, obj, kube_namespace)
    assert "status" not in created and created["metadata"]["generation"] == 1

    status = {"eip": {"ipv4": "203.0.113.130"}, "gateway": "default", "primary": "gw1", "selectedIPs": 2,
              "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "EIP assigned",
                              "lastTransitionTime": "2026-11-27T08:00:00Z", "observedGeneration": 1}]}
    patched = api.patch_namespaced_custom_object_status(G, V, kube_namespace, plural, name, {"status": status})
    assert patched["status"] == status
    assert patched["metadata"]["generation"] == 1  # status writes never bump the generation

    # a spec change bumps the generation and keeps the status; status sent to the main resource is ignored
    current = api.get_namespaced_custom_object(G, V, kube_namespace, plural, name)
    current["spec"]["priority"] = 5
    current["status"] = {"gateway": "overwritten?"}
    replaced = api.replace_namespaced_custom_object(G, V, kube_namespace, plural, name, current)
    assert replaced["metadata"]["generation"] == 2
    assert replaced["status"] == status

    # spec sent to /status is ignored
    current = api.get_namespaced_custom_object(G, V, kube_namespace, plural, name)
    current["spec"]["priority"] = 9
    current["status"]["selectedIPs"] = 3
    after = api.replace_namespaced_custom_object_status(G, V, kube_namespace, plural, name, current)
    assert after["spec"]["priority"] == 5 and after["status"]["selectedIPs"] == 3
    assert after["metadata"]["generation"] == 2


def test_cluster_scoped_status_and_printer_columns(kube_client: Any, kube_namespace: str,
                                                   apiserver: ApiServer) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi(kube_client)
    name = f"{kube_namespace}-gw"[:63]
    obj = {"apiVersion": f"{G}/{V}", "kind": "EgressGateway", "metadata": {"name": name},
           "spec": {"ippools": {"ipv4": ["203.0.113.192/28"], "ipv4DefaultEIP": "203.0.113.193"},
                    "nodeSelector": {"selector": {"matchLabels": {"egressgw.io/gateway": "true"}}}}}
    create(kube_client, obj, kube_namespace)
    try:
        status = {"members": [{"name": "gw1", "kind": "Node", "healthy": True, "eips": ["203.0.113.193"]}],
                  "eips": [{"ip": "203.0.113.193", "primary": "gw1", "backups": ["gw2"]}],
                  "ipUsage": {"ipv4Total": 16, "ipv4Free": 15, "ipv6Total": 0, "ipv6Free": 0}}
        out = api.patch_cluster_custom_object_status(G, V, "egressgateways", name, {"status": status})
        assert out["status"] == status
        resp = kube_client.call_api(
            f"/apis/{G}/{V}/egressgateways/{name}", "GET", header_params={
                "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
            auth_settings=["BearerToken"], _preload_content=False)
        table = json.loads(resp[0].data)
        columns = [c["name"] for c in table["columnDefinitions"]]
        row = dict(zip(columns, table["rows"][0]["cells"], strict=True))
        assert row["IPv4DefaultEIP"] == "203.0.113.193" and row["IPv4Total"] == 16 and row["IPv4Free"] == 15
    finally:
        api.delete_cluster_custom_object(G, V, "egressgateways", name)
