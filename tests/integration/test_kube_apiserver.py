"""lab.kube_apiserver itself: start, kubeconfig, restart of the apiserver alone (data kept, old watches get 410),
stop leaves no process, a clear error when a binary is missing. Uses its own instance (restarts would disturb the
session one)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lab.kube_apiserver import ApiServerConfig, BinaryMissing, apply_crds, start_apiserver
from lab.kube_http import request

pytestmark = pytest.mark.apiserver


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state != "Z"


def test_start_restart_stop(tmp_path: Path) -> None:
    api = start_apiserver(ApiServerConfig(workdir=tmp_path, die_with_parent=True))
    etcd_pid, first_pid = api.etcd_pid, api.apiserver_pid
    try:
        cfg = yaml.safe_load(api.kubeconfig_path.read_text())
        assert cfg["clusters"][0]["cluster"] == {"server": api.url, "insecure-skip-tls-verify": True}
        assert cfg["users"][0]["user"]["token"] == api.token
        apply_crds(api)
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kept"}}
        assert request(f"{api.url}/api/v1/namespaces", api.token, "POST", ns)[0] == 201
        status, listing = request(f"{api.url}/api/v1/namespaces", api.token)
        old_rv = listing["metadata"]["resourceVersion"]
        for i in range(3):  # move etcd's revision on, then compact, so the old resourceVersion is gone
            request(f"{api.url}/api/v1/namespaces", api.token, "POST",
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"n{i}"}})
        api.restart_apiserver()
        assert api.apiserver_pid != first_pid and api.etcd_pid == etcd_pid
        assert not _alive(first_pid)
        status, _ = request(f"{api.url}/api/v1/namespaces/kept", api.token)
        assert status == 200  # etcd kept the data
        status, crd = request(f"{api.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                              "egressgateways.egressgw.io", api.token)
        assert status == 200 and crd["spec"]["group"] == "egressgw.io"
        # a watch from a resourceVersion older than the restarted apiserver's watch cache is told 410 Gone
        status, body = request(f"{api.url}/api/v1/namespaces?watch=1&timeoutSeconds=2&resourceVersion={old_rv}",
                               api.token)
        first = json.loads(body.splitlines()[0]) if isinstance(body, str) else body
        assert first["type"] == "ERROR" and first["object"]["code"] == 410, body
        # kubectl works with the written kubeconfig
        out = subprocess.run(["kubectl", "--kubeconfig", str(api.kubeconfig_path), "get", "ns", "kept", "-o", "json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["metadata"]["name"] == "kept"
    finally:
        api.stop()
    assert not _alive(api.apiserver_pid) and not _alive(etcd_pid)
    assert api.apiserver_pid is None and api.etcd_pid is None


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BinaryMissing, match=r"scripts/ensure-kube-apiserver\.sh"):
        start_apiserver(ApiServerConfig(workdir=tmp_path, apiserver_binary=tmp_path / "nope"))
    with pytest.raises(BinaryMissing, match="etcd not found"):
        start_apiserver(ApiServerConfig(workdir=tmp_path, etcd_binary=tmp_path / "no-etcd"))
