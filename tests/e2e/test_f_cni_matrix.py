"""The CNI matrix (F01): egressgw's defaults coexist with the NAT and mark rules of real CNIs and kube-proxy.

For every CNI stand-in of lab/cni.py (Flannel-like with iptables-nft and with iptables-legacy, Calico-like
natOutgoing with ipsets and marks under 0xffff0000, Cilium-like masquerade with marks in 0x0f00, each with
kube-proxy's chains), in both orders of installation (the CNI's rules before the agent starts, and after it runs),
on worker1 of the shared lab: a selected pod leaves with the EIP over IPv4 and IPv6, an unselected pod on the same
worker leaves with the node's address (masqueraded by the stand-in: the default nft stand-in is gone meanwhile).
The worker gets its default stand-in back afterwards.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from appliance.core.waiting import wait_until
from lab import cni
from lab.cni import CniKind, CniNetworks
from lab.scenarios import policy_manifest
from lab.system import System
from lab.topogen import NOT_MASQUERADED, PODS, SERVICES
from tests.e2e.conftest import DEFAULT_EIP_V4, DEFAULT_EIP_V6, Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

CONVERGE_S = 45.0
WORKER, SELECTED, UNSELECTED = "worker1", "w1p1", "w1p2"
STAND_INS = [k for k in cni.MATRIX if k is not CniKind.NFT]  # the default stand-in runs in every other e2e test


def networks(system: System, worker: str) -> CniNetworks:
    pods = tuple(ifc.network for ifname, ifc in system.nodes[worker].addresses if ifname == "cni0")
    return CniNetworks(pods=pods, cluster=tuple(ipaddress.ip_network(p) for p in PODS),
                       services=tuple(ipaddress.ip_network(s) for s in SERVICES),
                       not_masqueraded=tuple(ipaddress.ip_network(n) for n in NOT_MASQUERADED))


def agent_running(system: System, worker: str) -> bool:
    rec = system.lab.daemon(worker, "egressgw-agent")
    return rec is not None and system.lab.daemon_alive(rec)


def restart_agent_after(system: System, worker: str, kind: CniKind) -> None:
    """The CNI before the agent: stop the agent, remove everything it created (`egressgw agent cleanup`), install
    the stand-in, start the agent (its tables are created after the CNI's)."""
    system.stop_service(worker)
    config = system.lab.node_dir(worker) / "agent.yaml"
    system.lab.exec(worker, system.python_module("appliance.cli", "agent", "cleanup", "--config", str(config)),
                    timeout=60)
    cni.install(system.lab, worker, kind, networks(system, worker))
    system.start_agent(worker)


@pytest.fixture
def worker_cni(system: System) -> Iterator[None]:
    """Give worker1 its default stand-in back (and a running agent) whatever the test did."""
    try:
        yield
    finally:
        cni.install(system.lab, WORKER, CniKind.NFT, networks(system, WORKER))
        if not agent_running(system, WORKER):
            system.start_agent(WORKER)


def expect_source(system: System, lab_pod: str, want: str, *, version: int, what: str) -> None:
    seen = system.wait_source(lab_pod, want, version=version, timeout=CONVERGE_S)
    assert seen == want, f"{what}: {lab_pod} over IPv{version} seen as {seen or 'nothing'}, expected {want}"


@pytest.mark.parametrize("order", ["cni-first", "agent-first"])
@pytest.mark.parametrize("kind", STAND_INS, ids=[k.value for k in STAND_INS])
def test_f01_selected_pod_leaves_with_the_eip_under_every_cni(
    system: System, scenario: Scenario, worker_cni: None, kind: CniKind, order: str
) -> None:
    if order == "cni-first":
        restart_agent_after(system, WORKER, kind)
    else:
        assert agent_running(system, WORKER)
        cni.install(system.lab, WORKER, kind, networks(system, WORKER))
    scenario.pod("selected", SELECTED, {"app": "cni-matrix"})
    scenario.pod("unselected", UNSELECTED, {"app": "other"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "cni-matrix"}))
    what = f"{kind.value}, {order}"
    worker = system.nodes[WORKER]
    expect_source(system, SELECTED, DEFAULT_EIP_V4, version=4, what=what)
    expect_source(system, SELECTED, DEFAULT_EIP_V6, version=6, what=what)
    expect_source(system, UNSELECTED, str(worker.address(4, "eth1")), version=4, what=what)
    expect_source(system, UNSELECTED, str(worker.address(6, "eth1")), version=6, what=what)
    # the stand-in is what masqueraded the unselected pod, and it is still in place (nothing replaced it)
    saved = system.lab.exec(WORKER, ["iptables-legacy-save" if kind is CniKind.FLANNEL_LEGACY
                                     else "iptables-nft-save"]).stdout
    assert "MASQUERADE" in saved and "KUBE-POSTROUTING" in saved, f"{what}: the stand-in's rules are gone"
    # the flows of the selected pod kept their tunnel mark all the way: its TCP also leaves with the EIP
    wait_until(lambda: system.seen_source(SELECTED, proto="tcp") == DEFAULT_EIP_V4, timeout=CONVERGE_S,
               interval=0.3, what=f"{what}: TCP from the selected pod with the EIP")
