"""The worker's defaults against real CNIs' NAT and mark rules, on the real kernel without an API server.

The data-path testbed (lab/testbeds/datapath.py, prefix `egt-cni-`): the worker and gateway plans applied by the
real appliers, the CNI stand-ins of lab/cni.py (with kube-proxy's chains) on worker w1 instead of the testbed's nft
masquerade, installed before our state exists and after it. With the default marks a selected pod leaves with the
EIP (IPv4 and IPv6) and an unselected one with the node address under every stand-in. With the worker's former
layout (0x0e6e0000/0xffff0000) the Calico stand-in breaks steering (its chains rewrite bits under 0xffff0000): the
reason the default changed (docs/operations.md "CNI compatibility").
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from ipaddress import ip_address, ip_network

import pytest

from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway
from appliance.datapath.plan.tunnel import MarkSettings
from appliance.datapath.plan.worker import WorkerSettings, plan_worker
from lab import cni
from lab.cni import CniKind, CniNetworks
from lab.testbeds.datapath import EXT_V4, EXT_V6, GATEWAY_ADDR, PODS, WORKER_ADDR, Testbed
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent

pytestmark = pytest.mark.netns

EIP4, EIP6 = "203.0.113.130", "2001:db8:e1::2"
NODE = {"w1": "worker1", "w2": "worker2"}
WORKERS = {NODE[w]: tuple(ip_address(a) for a in addrs) for w, addrs in WORKER_ADDR.items()}
INTENT = build_intent(
    [Gw(eips=(EIP4, EIP6), members=("gw1",), member_addresses={"gw1": GATEWAY_ADDR["g1"][0]})],
    [Sel(pod_ip=PODS["pod1"][1], eip=EIP4, partner=EIP6), Sel(pod_ip=PODS["pod1"][2], eip=EIP6, partner=EIP4)],
)
NETS = CniNetworks(pods=(ip_network("100.64.1.0/24"), ip_network("2001:db8:64:1::/64")),
                   cluster=(ip_network("100.64.0.0/16"), ip_network("2001:db8:64::/48")),
                   services=(ip_network("100.100.0.0/16"),))
FORMER = MarkSettings(mark_base=0x0E6E0000, mark_mask=0xFFFF0000, slot_mask=0xFFFF)
STAND_INS = [k for k in cni.MATRIX if k is not CniKind.NFT]


class _Runner:
    """lab.cni's runner on a testbed node."""

    def __init__(self, bed: Testbed) -> None:
        self.bed = bed

    def exec(self, node: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.bed.ns(node), *argv], input=input, text=True,
                              capture_output=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    for binary in ("ip", "nft", "iptables-nft-restore", "iptables-legacy-restore", "ipset"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is missing (scripts/install-system-deps.sh)", pytrace=False)
    tb = Testbed(prefix="egt-cni-")
    try:
        tb.up()
        for eip in (EIP4, EIP6):
            tb.route_eip(eip, "g1")
        result = DataPathApplier(tb.ns("g1")).apply(
            plan_gateway(INTENT, member="gw1", workers=WORKERS, settings=GatewaySettings()))
        assert result.failures == (), result.failures
        yield tb
    finally:
        tb.down()


def apply_worker(bed: Testbed, marks: MarkSettings) -> None:
    plan = plan_worker(INTENT, node="worker1", underlay=ip_address(WORKER_ADDR["w1"][0]),
                       settings=WorkerSettings(marks=marks))
    result = DataPathApplier(bed.ns("w1")).apply(plan)
    assert result.failures == (), result.failures


def install(bed: Testbed, kind: CniKind, order: str, marks: MarkSettings) -> None:
    """`cni-first`: our worker state removed, the CNI's rules installed, then ours; `agent-first`: the reverse."""
    if order == "cni-first":
        DataPathApplier(bed.ns("w1")).remove_all()
        cni.install(_Runner(bed), "w1", kind, NETS)
        apply_worker(bed, marks)
    else:
        apply_worker(bed, marks)
        cni.install(_Runner(bed), "w1", kind, NETS)
    bed.run("w1", "conntrack", "-F", check=False)  # every probe below is a new flow through the rules as they are


@pytest.mark.parametrize("order", ["cni-first", "agent-first"])
@pytest.mark.parametrize("kind", STAND_INS, ids=[k.value for k in STAND_INS])
def test_default_marks_keep_the_eip_under_every_cni(bed: Testbed, kind: CniKind, order: str) -> None:
    install(bed, kind, order, MarkSettings())
    assert bed.source("pod1", EXT_V4[0]) == EIP4
    assert bed.source("pod1", EXT_V6) == EIP6
    assert bed.source("pod1", EXT_V4[1], proto="tcp") == EIP4
    assert bed.source("pod2", EXT_V4[0]) == WORKER_ADDR["w1"][0]  # masqueraded by the stand-in
    assert bed.source("pod2", EXT_V6) == WORKER_ADDR["w1"][1]


@pytest.mark.parametrize("order", ["cni-first", "agent-first"])
def test_the_former_marks_lose_the_eip_under_calico(bed: Testbed, order: str) -> None:
    install(bed, CniKind.CALICO, order, FORMER)
    assert bed.source("pod1", EXT_V4[0], check=False) != EIP4
    # the same node with the default layout: the EIP again
    install(bed, CniKind.CALICO, order, MarkSettings())
    assert bed.source("pod1", EXT_V4[0]) == EIP4
