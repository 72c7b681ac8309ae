"""kubectl integration against the real API server: the `kubectl-egressgw` plugin found and run by the real kubectl,
`egressgw status -o wide|yaml` and `--watch` (a subprocess that must print each change, and stop on Ctrl-C)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.core.model import DRAIN_ANNOTATION
from appliance.core.waiting import wait_until
from k8s_sync.kubeapi import KubeApi
from k8s_sync.leases import DEFAULT_NAMESPACE, LEASES, MEMBER_PREFIX, MemberIdentity, MemberLease
from lab.kube_apiserver import ApiServer
from tests.kube_support import Kube

pytestmark = pytest.mark.apiserver

BIN = Path(sys.executable).parent


def setup_world(kube: Kube, ns: str, api: KubeApi) -> tuple[str, list[str]]:
    gw = kube.unique("kgw")
    label = f"egressgw.io/member-{gw}"[:63]
    nodes = [kube.unique("knode") for _ in range(2)]
    for i, n in enumerate(nodes):
        kube.node(n, labels={label: "true"}, ips=(f"198.51.100.{41 + i}",))
        MemberLease(api, MemberIdentity(name=n), duration=60).renew_once()
    kube.gateway(gw, {"ippools": {"ipv4": ["203.0.113.180/30"], "ipv4DefaultEIP": "203.0.113.181"},
                      "nodeSelector": {"selector": {"matchLabels": {label: "true"}}}})
    kube.pod(ns, "web-0", labels={"app": "web"}, node="worker1", ips=("100.64.1.40",))
    kube.policy(ns, "web", {"egressGatewayName": gw, "destSubnet": ["203.0.113.0/28"],
                            "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}})
    return gw, nodes


def kubectl(apiserver: ApiServer, *args: str, env_kubeconfig: bool = True) -> subprocess.CompletedProcess[str]:
    kubectl_bin = shutil.which("kubectl")
    assert kubectl_bin is not None, "kubectl is missing: run scripts/setup.sh"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    if env_kubeconfig:
        env["KUBECONFIG"] = str(apiserver.kubeconfig_path)
    else:
        env.pop("KUBECONFIG", None)
    return subprocess.run([kubectl_bin, *args], capture_output=True, text=True, env=env, timeout=120)


def test_kubectl_finds_and_runs_the_plugin(kube: Kube, kube_namespace: str, sync_api: KubeApi,
                                           apiserver: ApiServer) -> None:
    assert (BIN / "kubectl-egressgw").exists(), "kubectl-egressgw is not installed: pip install -e ."
    listed = kubectl(apiserver, "plugin", "list")
    assert str(BIN / "kubectl-egressgw") in listed.stdout, listed.stdout + listed.stderr
    helped = kubectl(apiserver, "egressgw", "--help")
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("status", "explain", "drain")), helped.stderr

    gw, nodes = setup_world(kube, kube_namespace, sync_api)
    # KUBECONFIG from the environment, as kubectl passes it on
    got = kubectl(apiserver, "egressgw", "status", "-o", "json", "-n", kube_namespace)
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    g = next(x for x in doc["gateways"] if x["name"] == gw)
    assert g["ready"] and sorted(m["name"] for m in g["members"]) == sorted(nodes)
    assert {(p["namespace"], p["name"]) for p in doc["policies"] if p["kind"] == "EgressPolicy"} == \
        {(kube_namespace, "web")}  # -n keeps this namespace's policies only

    # --kubeconfig as a flag (before the subcommand), no KUBECONFIG in the environment; yaml output
    got = kubectl(apiserver, "egressgw", "--kubeconfig", str(apiserver.kubeconfig_path), "status", "-o", "yaml",
                  env_kubeconfig=False)
    assert got.returncode == 0, got.stderr
    assert gw in {x["name"] for x in yaml.safe_load(got.stdout)["gateways"]}

    # wide: members with their address and lease renewal
    got = kubectl(apiserver, "egressgw", "status", "-o", "wide")
    assert got.returncode == 0, got.stderr
    member_rows = [ln.split() for ln in got.stdout.split("\n\nMEMBERS\n", 1)[1].split("\n\n")[0].splitlines()[1:]]
    mine = {r[1]: r for r in member_rows if r[0] == gw}
    assert set(mine) == set(nodes)
    assert {mine[n][3] for n in nodes} == {"198.51.100.41", "198.51.100.42"}
    assert all(mine[n][2] == "Node" and mine[n][4] == "yes" and mine[n][5].endswith("s") for n in nodes)

    # explain, kubectl-style: the pod as a positional argument
    got = kubectl(apiserver, "egressgw", "explain", "pod/web-0", "-n", kube_namespace, "--dest", "203.0.113.5",
                  "-o", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["ips"][0]["chosen"]["eip"] == "203.0.113.181"

    # a context that does not exist is refused by name, with exit status 1
    got = kubectl(apiserver, "egressgw", "status", "--context", "no-such-context")
    assert got.returncode == 1 and "no-such-context" in got.stderr


def test_plugin_drain_and_undrain_annotate_the_member(kube: Kube, kube_namespace: str, sync_api: KubeApi,
                                                      apiserver: ApiServer) -> None:
    gw, nodes = setup_world(kube, kube_namespace, sync_api)
    node_path = f"/api/v1/nodes/{nodes[0]}"
    got = kubectl(apiserver, "egressgw", "drain", nodes[0], "--reason", "kernel upgrade")
    assert got.returncode == 0, got.stderr
    assert f"node/{nodes[0]}: set {DRAIN_ANNOTATION}='kernel upgrade'" in got.stdout
    assert sync_api.get(node_path)["metadata"]["annotations"][DRAIN_ANNOTATION] == "kernel upgrade"
    got = kubectl(apiserver, "egressgw", "status", "-o", "json")
    assert got.returncode == 0, got.stderr
    members = {m["name"]: m for g in json.loads(got.stdout)["gateways"] if g["name"] == gw for m in g["members"]}
    assert members[nodes[0]]["maintenance"] == "kernel upgrade" and members[nodes[1]]["maintenance"] is None
    got = kubectl(apiserver, "egressgw", "status")
    assert f"{nodes[0]} (maintenance: kernel upgrade)" in got.stdout, got.stdout

    got = kubectl(apiserver, "egressgw", "undrain", nodes[0])
    assert got.returncode == 0 and f"removed {DRAIN_ANNOTATION}" in got.stdout, got.stdout + got.stderr
    assert DRAIN_ANNOTATION not in (sync_api.get(node_path)["metadata"].get("annotations") or {})
    assert "is not drained; nothing to do" in kubectl(apiserver, "egressgw", "undrain", nodes[0]).stdout

    # an appliance (no Node): its member Lease carries the annotation
    box = kube.unique("kbox")
    MemberLease(sync_api, MemberIdentity(name=box, gateway=gw, address="198.51.100.45"), duration=60).renew_once()
    got = kubectl(apiserver, "egressgw", "drain", box)
    assert got.returncode == 0 and f"lease {DEFAULT_NAMESPACE}/{MEMBER_PREFIX}{box}" in got.stdout, got.stderr
    lease = sync_api.get(LEASES.path(DEFAULT_NAMESPACE, MEMBER_PREFIX + box))
    assert lease["metadata"]["annotations"][DRAIN_ANNOTATION] == "maintenance"

    got = kubectl(apiserver, "egressgw", "drain", "not-a-member", "-n", kube_namespace)
    assert got.returncode == 1 and "is not a gateway member" in got.stderr


def test_status_watch_prints_each_change(kube: Kube, kube_namespace: str, sync_api: KubeApi,
                                         apiserver: ApiServer) -> None:
    gw, _ = setup_world(kube, kube_namespace, sync_api)
    proc = subprocess.Popen([str(BIN / "egressgw"), "status", "--watch", "-o", "json", "-n", kube_namespace,
                             "--kubeconfig", str(apiserver.kubeconfig_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout or ()], daemon=True).start()
    seen: list[dict[str, Any]] = []

    def printed(check: Any) -> bool:
        while not lines.empty():
            seen.append(json.loads(lines.get()))
        return bool(seen) and check(seen[-1])

    def names(doc: dict[str, Any]) -> set[str]:
        return {p["name"] for p in doc["policies"] if p["namespace"] == kube_namespace}

    try:
        wait_until(lambda: printed(lambda d: names(d) == {"web"}), timeout=60, what="the first status",
                   describe=lambda: (seen[-1:], proc.poll()))
        first = len(seen)
        kube.policy(kube_namespace, "late", {"egressGatewayName": gw, "destSubnet": ["203.0.113.16/28"],
                                             "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}})
        wait_until(lambda: printed(lambda d: names(d) == {"web", "late"}), timeout=60,
                   what="the status printed again with the new policy", describe=lambda: seen[-1:])
        kube.delete("EgressPolicy", "web", kube_namespace)
        wait_until(lambda: printed(lambda d: names(d) == {"late"}), timeout=60,
                   what="the status printed again without the deleted policy", describe=lambda: seen[-1:])
        assert len(seen) >= first + 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
