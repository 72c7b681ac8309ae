"""The tunnel family on the real kernel: dual-stack Nodes, an underlay that carries IPv6 VXLAN only.

Topology: lab/testbeds/datapath.py (prefix `egt-dp-6`); the router drops (and counts) every IPv4 VXLAN packet, so
the IPv4 underlay between workers and gateways is gone while the Nodes keep both InternalIPs, as a dual-stack kubelet
registers them. The intent comes from the real resolution of a snapshot (Nodes, an EgressGateway with
`spec.tunnel.family: ipv6`, a policy, pods); the worker is planned with its IPv4 address as its tunnel source, the
agent's default on a dual-stack node: the instance's family must win on both ends.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_address

import pytest

from appliance.core.model import TunnelFamily
from appliance.core.snapshot import Snapshot
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway, workers_of
from appliance.datapath.plan.worker import WorkerSettings, plan_worker
from appliance.policy.resolution import resolve
from lab.testbeds.datapath import EXT_V4, EXT_V6, GATEWAY_ADDR, PODS, WORKER_ADDR, Testbed
from tests.unit.resolution_builders import gateway, node, pod, policy

pytestmark = pytest.mark.netns

EIP4, EIP6 = "203.0.113.130", "2001:db8:e1::2"
NODE = {"w1": "worker1", "w2": "worker2"}
MEMBER = {"g1": "gw1", "g2": "gw2"}
#: the router drops IPv4 VXLAN: only the IPv6 underlay is left between workers and gateways
NO_V4_UNDERLAY = """table ip egt_no_v4_underlay {
\tcounter vxlan4 { }
\tchain forward { type filter hook forward priority filter; policy accept;
\t\tudp dport 4789 counter name vxlan4 drop
\t}
}
"""


def snapshot(family: TunnelFamily | None) -> Snapshot:
    gw = gateway("egw", v4=(EIP4,), v6=(EIP6,), selector={"role": "gateway"})
    gw = replace(gw, tunnel=replace(gw.tunnel, family=family), uid="4b0a6a8e-5d33-4a55-9f65-0f7e6bd1c2aa")
    w1, a4, a6 = PODS["pod1"]
    return Snapshot(
        gateways=(gw,),
        policies=(policy("sel", gateway="egw", app="sel"),),
        nodes=(
            *(node(MEMBER[g], *GATEWAY_ADDR[g], lbl={"role": "gateway"}) for g in MEMBER),
            node("worker1", *WORKER_ADDR["w1"], pod_cidrs=("100.64.1.0/24", "2001:db8:64:1::/64")),
            node("worker2", *WORKER_ADDR["w2"], pod_cidrs=("100.64.2.0/24", "2001:db8:64:2::/64")),
        ),
        pods=(pod("default", "pod1", a4, a6, lbl={"app": "sel"}, node_name=NODE[w1]),),
    )


def apply(bed: Testbed, snap: Snapshot) -> None:
    intent = resolve(snap)
    for g, member in MEMBER.items():
        plan = plan_gateway(intent, member=member, workers=workers_of(snap), settings=GatewaySettings())
        assert DataPathApplier(bed.ns(g)).apply(plan).failures == ()
    for w, name in NODE.items():
        # the agent's default tunnel source on a dual-stack node: its IPv4 address
        wplan = plan_worker(intent, node=name, underlay=ip_address(WORKER_ADDR[w][0]), settings=WorkerSettings())
        assert DataPathApplier(bed.ns(w)).apply(wplan).failures == ()


def dropped_v4_vxlan(bed: Testbed) -> int:
    out = bed.run("r", "nft", "list", "counter", "ip", "egt_no_v4_underlay", "vxlan4")
    return int(out.split("packets", 1)[1].split()[0])


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    for binary in ("ip", "nft", "sysctl"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is missing (apt-get install iproute2 nftables procps)", pytrace=False)
    tb = Testbed(prefix="egt-dp-6")
    try:
        tb.up()
        for eip in (EIP4, EIP6):
            tb.route_eip(eip, "g1")
        tb.run("r", "nft", "-f", "-", input=NO_V4_UNDERLAY)
        yield tb
    finally:
        tb.down()


def test_dual_stack_nodes_over_an_ipv6_only_underlay(bed: Testbed) -> None:
    apply(bed, snapshot(TunnelFamily.IPV6))
    for proto in ("udp", "tcp"):
        assert bed.source("pod1", EXT_V4[0], proto) == EIP4  # an IPv4 pod IP through the IPv6 tunnel
        assert bed.source("pod1", EXT_V6, proto) == EIP6
        assert bed.source("pod2", EXT_V4[0], proto) == WORKER_ADDR["w1"][0]  # unselected: the node's address
    assert dropped_v4_vxlan(bed) == 0  # neither end tried the IPv4 underlay
    gw = DataPathApplier(bed.ns("g1")).counters()
    assert gw["eip_203_0_113_130"][0] >= 4 and gw["eip_2001_db8_e1__2"][0] >= 4


def test_without_the_family_dual_stack_nodes_tunnel_over_ipv4_and_get_nothing_here(bed: Testbed) -> None:
    """The control (and the default rule): unset, dual-stack Nodes tunnel over IPv4, which this underlay drops."""
    try:
        before = dropped_v4_vxlan(bed)
        apply(bed, snapshot(None))
        assert bed.source("pod1", EXT_V4[0], "udp", check=False) == ""
        assert dropped_v4_vxlan(bed) > before
    finally:
        apply(bed, snapshot(TunnelFamily.IPV6))
    assert bed.source("pod1", EXT_V4[0], "udp") == EIP4
