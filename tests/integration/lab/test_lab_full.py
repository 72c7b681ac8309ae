"""The whole default lab through the command line, API node included: `lab up` (etcd + kube-apiserver inside the
API node's namespace, CRDs applied, BIRD ready), `lab status`, `lab exec`, the API reachable from a worker on
100.127.0.10:6443, and `lab down` removing everything."""

from __future__ import annotations

import subprocess
import sys

import pytest
from labtest_support import PREFIX, ROOT, TOPOLOGIES, lab_leftovers, require

from lab import state
from lab.kube_apiserver import default_apiserver_binary

EGRESSGW = str(ROOT / ".venv" / "bin" / "egressgw")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EGRESSGW, "lab", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.lab
@pytest.mark.apiserver
def test_default_lab_with_api_node_via_cli() -> None:
    require("bird", "birdc", "etcd", str(default_apiserver_binary()))
    prefix, name = f"{PREFIX}d-", "egt-lb-d"
    try:
        up = cli("up", str(TOPOLOGIES / "default.clab.yml"), "--name-prefix", prefix)
        assert up.returncode == 0, up.stderr
        print(up.stdout)
        status = cli("status", name)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "kube-apiserver:" in status.stdout and "etcd:" in status.stdout
        assert "gw4" in status.stdout  # BIRD answered `show protocols`
        kubeconfig = state.lab_dir(name) / "nodes" / "api" / "kube" / "kubeconfig"
        assert "https://100.127.0.10:6443" in kubeconfig.read_text()
        crds = cli("exec", "--lab", name, "worker1", "--", "kubectl", "--kubeconfig", str(kubeconfig), "get", "crd",
                   "-o", "name")
        assert crds.returncode == 0, crds.stderr
        assert "customresourcedefinition.apiextensions.k8s.io/egressgateways.egressgw.io" in crds.stdout
        seen = cli("exec", "--lab", name, "w1p1", "--", sys.executable, "-m", "lab.extclient", "source")
        assert seen.stdout.strip() == "100.127.0.11"
    finally:
        down = cli("down", name)
    assert down.returncode == 0, down.stderr
    assert lab_leftovers(prefix) == []
    assert not state.lab_dir(name).exists()
