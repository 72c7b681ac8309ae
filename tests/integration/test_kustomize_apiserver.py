"""The kustomize base (deploy/) and the example overlay (overlays/example/): rendered with kubectl's built-in
kustomize, checked for what they promise (one namespace, the image, the configs from deploy/config and the overlay,
the WireGuard Secret wired into the gateway DaemonSet), and applied to the real API server with a server-side dry
run (the server validates every object, CRDs included, without keeping any)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.runtime.config import load_agent_config, load_gateway_config
from k8s_sync.kubeapi import ApiError, KubeApi, make_api_client
from lab.kube_apiserver import ApiServer

pytestmark = pytest.mark.apiserver

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "overlays" / "example"


def kubectl(*args: str, stdin: str | None = None, kubeconfig: Path | None = None) -> str:
    binary = shutil.which("kubectl")
    assert binary is not None, "kubectl is missing: run scripts/setup.sh"
    env = {**os.environ, **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {})}
    proc = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def render(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kubectl("kustomize", str(path))) if d]


def one(docs: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    return found


def pod_spec(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "DaemonSet", name)["spec"]["template"]["spec"]
    return spec


def check_rendering(docs: list[dict[str, Any]], *, namespace: str, image: str, tmp: Path) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Namespace", namespace) in kinds
    assert sum(1 for k, _ in kinds if k == "CustomResourceDefinition") == 4
    namespaced = [d for d in docs if d["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                                                       "ClusterRoleBinding", "ValidatingWebhookConfiguration")]
    assert {d["metadata"].get("namespace") for d in namespaced} == {namespace}
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert {s["namespace"] for s in binding["subjects"]} == {namespace}
    for hook in (d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"):
        assert {w["clientConfig"]["service"]["namespace"] for w in hook["webhooks"]} == {namespace}
    workloads = [d for d in docs if d["kind"] in ("DaemonSet", "Deployment")]
    assert {c["image"] for d in workloads for c in d["spec"]["template"]["spec"]["containers"]} == {image}
    for role in ("agent", "gateway"):
        spec = pod_spec(docs, f"egressgw-{role}")
        assert [c["image"] for c in spec["containers"]] == [image]
        config_map = one(docs, "ConfigMap", f"egressgw-{role}-")  # generated: the name carries a content hash
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
        path = tmp / f"{namespace}-{role}.yaml"
        path.write_text(config_map["data"][f"{role}.yaml"])
        env = {"NODE_NAME": "node1"}
        cfg = load_agent_config(path, env=env) if role == "agent" else load_gateway_config(path, env=env)
        assert cfg.lease_namespace == namespace  # members and agents look for Leases where RBAC allows them
        assert cfg.kube.kubeconfig is None  # in-cluster service account
    gateway = pod_spec(docs, "egressgw-gateway")
    secret = one(docs, "Secret", "egressgw-wireguard-")
    wireguard = next(v for v in gateway["volumes"] if v["name"] == "wireguard")["secret"]
    assert wireguard["secretName"] == secret["metadata"]["name"] and wireguard["optional"] is True
    mount = next(m for m in gateway["containers"][0]["volumeMounts"] if m["name"] == "wireguard")
    gw_cfg = load_gateway_config(tmp / f"{namespace}-gateway.yaml", env={"NODE_NAME": "node1"})
    assert gw_cfg.wireguard.instance_key_dir == Path(mount["mountPath"])
    assert gateway["terminationGracePeriodSeconds"] > gw_cfg.drain_timeout_s + gw_cfg.drain_settle_s


def test_base_renders_from_the_manifests(tmp_path: Path) -> None:
    docs = render(ROOT / "deploy")
    check_rendering(docs, namespace="egressgw-system", image="egressgw:0.1.0", tmp=tmp_path)
    config = one(docs, "ConfigMap", "egressgw-agent-")["data"]["agent.yaml"]
    assert config == (ROOT / "deploy/config/agent.yaml").read_text()  # the file itself, not a copy
    gateway = one(docs, "ConfigMap", "egressgw-gateway-")["data"]["gateway.yaml"]
    assert gateway == (ROOT / "deploy/config/gateway-node.yaml").read_text()
    for path in sorted((ROOT / "deploy/crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert one(docs, "CustomResourceDefinition", crd["metadata"]["name"])["spec"] == crd["spec"]
    webhook = sorted((ROOT / "deploy/webhook").glob("*.yaml")) if (ROOT / "deploy/webhook").is_dir() else []
    for path in webhook:  # the admission webhook's manifests are part of the base when they exist
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            assert any(d["kind"] == doc["kind"] and d["metadata"]["name"].startswith(doc["metadata"]["name"])
                       for d in docs), f"{path.name}: {doc['kind']}/{doc['metadata']['name']} not in the base"


def test_example_overlay_sets_image_namespace_and_config(tmp_path: Path) -> None:
    docs = render(OVERLAY)
    check_rendering(docs, namespace="egressgw", image="registry.example.com/platform/egressgw:0.1.0", tmp=tmp_path)
    gateway = one(docs, "ConfigMap", "egressgw-gateway-")["data"]["gateway.yaml"]
    assert gateway == (OVERLAY / "gateway.yaml").read_text()


def test_overlay_leaves_no_trace_of_the_base_namespace() -> None:
    text = kubectl("kustomize", str(OVERLAY))
    assert "egressgw-system" not in text


def test_overlay_adds_wireguard_keys(tmp_path: Path) -> None:
    """A site overlay on top of the example adds an instance key; the gateway DaemonSet follows the new Secret."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "egw-default.key").write_text("YAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    (site / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(OVERLAY, site)],
        "secretGenerator": [{"name": "egressgw-wireguard", "behavior": "merge", "files": ["egw-default.key"]}],
    }))
    docs = render(site)
    secret = one(docs, "Secret", "egressgw-wireguard-")
    assert set(secret["data"]) == {"egw-default.key"}
    wireguard = next(v for v in pod_spec(docs, "egressgw-gateway")["volumes"] if v["name"] == "wireguard")
    assert wireguard["secret"]["secretName"] == secret["metadata"]["name"]


def test_server_side_dry_run(apiserver: ApiServer) -> None:
    api = KubeApi(make_api_client(str(apiserver.kubeconfig_path)))
    for namespace in ("egressgw-system", "egressgw"):
        # a dry run creates no namespace, and the objects in it need one: create it for real (empty)
        try:
            api.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
        except ApiError as e:
            if e.status != 409:
                raise
    for path in (ROOT / "deploy", OVERLAY):
        out = kubectl("apply", "--dry-run=server", "-k", str(path), kubeconfig=apiserver.kubeconfig_path)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert all(ln.endswith("(server dry run)") for ln in lines), out
        applied = {ln.split()[0].split("/")[0] for ln in lines}
        assert {"daemonset.apps", "configmap", "secret", "clusterrole.rbac.authorization.k8s.io",
                "customresourcedefinition.apiextensions.k8s.io"} <= applied, out
    # nothing was kept
    assert not api.get("/apis/apps/v1/namespaces/egressgw/daemonsets")["items"]
