"""The gateway's integrity checks on the real kernel (IPv4 and IPv6): steering that ends leaves no pod IP behind,
spoofed VXLAN from another interface is refused, the EIP echo probe answers known workers only, and a worker whose
tunnel traffic is spoofed is counted, logged and reported.

Topology: lab/testbeds/datapath.py (prefix `egt-sp-t`) plus lab/testbeds/spoofing.py (an attacker on a second
interface of g1; a second external server with server push and a wire record).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from appliance.core.intent import Intent
from appliance.core.waiting import wait_until
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.conntrack import flush_pod_conntrack
from appliance.datapath.apply.incremental import IncrementalGateway
from appliance.datapath.plan.gateway import GatewaySettings, TunnelSourceCheck, pod_bindings
from appliance.datapath.plan.tunnel import worker_vni
from appliance.datapath.plan.worker import WorkerSettings, plan_worker
from appliance.gateway.datapath import FlowFlusher, RealGatewayDataPath
from appliance.runtime.config import GatewayConfig
from appliance.runtime.underlay import Underlay
from lab.testbeds.datapath import EXT_V4, EXT_V6, GATEWAY_ADDR, PODS, WORKER_ADDR, Testbed
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent
from lab.testbeds.spoofing import (
    ATT_ADDR,
    ATTACKER,
    PUSH_CONTROL,
    PUSH_PORT,
    add_attacker,
    link_mac,
    remove_attacker,
    send_vxlan,
    start_push_server,
)

pytestmark = pytest.mark.netns

EIP4, EIP4B, EIP6 = "203.0.113.130", "203.0.113.131", "2001:db8:e1::2"
NODE = {"w1": "worker1", "w2": "worker2"}
WORKERS = {NODE[w]: tuple(ip_address(a) for a in addrs) for w, addrs in WORKER_ADDR.items()}
GW = Gw(eips=(EIP4, EIP4B, EIP6), members=("gw1",), member_addresses={"gw1": GATEWAY_ADDR["g1"][0]},
        uid="5e0c2a7d-93b4-4f61-8d2e-0b7a1c6f4e39")


def keyed(node: str = "worker1") -> int:
    """The keyed VNI of `node` and the instance (what only the cluster knows)."""
    return worker_vni(selected().instances[0], node)


class Gateway:
    """g1 driven the way the gateway service drives it: fast-path applier + the conntrack flush of changed pods."""

    def __init__(self, bed: Testbed, source_check: TunnelSourceCheck = TunnelSourceCheck.STRICT) -> None:
        ns = bed.ns("g1")
        self.applier = DataPathApplier(ns)
        self.settings = GatewaySettings(source_check=source_check)
        self.incremental = IncrementalGateway(self.applier, member="gw1", settings=self.settings)
        self.flows = FlowFlusher(lambda ips: flush_pod_conntrack(ips, netns=ns))

    def converge(self, intent: Intent, *, full: bool = True) -> tuple[str, ...]:
        result = self.incremental.converge(intent, workers=WORKERS, full=full)
        assert result.failures == (), result.failures
        changes, failures = self.flows.after_pass(pod_bindings(intent, member="gw1"))
        assert failures == (), failures
        return result.changes + changes


def apply_workers(bed: Testbed, intent: Intent, *, flush: tuple[str, ...] = ()) -> None:
    for w, node in NODE.items():
        plan = plan_worker(intent, node=node, underlay=ip_address(WORKER_ADDR[w][0]), settings=WorkerSettings())
        result = DataPathApplier(bed.ns(w)).apply(plan)
        assert result.failures == (), result.failures
        if w == "w1" and flush:  # what the agent does after the pass
            assert flush_pod_conntrack([ip_address(a) for a in flush], netns=bed.ns(w)).ok


def counters(bed: Testbed, node: str = "g1") -> dict[str, int]:
    return {k: v[0] for k, v in DataPathApplier(bed.ns(node)).counters().items()}


def extclient(bed: Testbed, *args: str) -> object:
    return json.loads(bed.run("ext", sys.executable, "-m", "lab.extclient", *args, "--control", PUSH_CONTROL) or "{}")


def wire_sources(bed: Testbed) -> set[str]:
    doc = extclient(bed, "wire")
    peers = doc.get("peers", []) if isinstance(doc, dict) else doc
    return {str(p["source"]) for p in peers}  # type: ignore[union-attr]


def push_sources(bed: Testbed) -> set[str]:
    doc = extclient(bed, "peers")
    peers = doc.get("peers", []) if isinstance(doc, dict) else []
    return {str(p["source"]) for p in peers if str(p.get("proto", "")).endswith("push")}


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed(prefix="egt-sp-t")
    try:
        tb.up()
        for eip in (EIP4, EIP4B, EIP6):
            tb.route_eip(eip, "g1")
        add_attacker(tb)
        start_push_server(tb)
        wait_until(lambda: bed_ready(tb), timeout=20, what="push server control endpoint")
        yield tb
    finally:
        remove_attacker(tb)
        tb.down()


def bed_ready(tb: Testbed) -> bool:
    return tb.run("ext", sys.executable, "-m", "lab.extclient", "peers", "--control", PUSH_CONTROL,
                  check=False).strip().startswith(("{", "["))


def selected(*, eip4: str = EIP4, pods: tuple[str, ...] = ("pod1",)) -> Intent:
    sels = []
    for pod in pods:
        w, a4, a6 = PODS[pod]
        sels += [Sel(pod_ip=a4, node=NODE[w], eip=eip4, partner=EIP6),
                 Sel(pod_ip=a6, node=NODE[w], eip=EIP6, partner=eip4)]
    return build_intent([GW], sels)


NOTHING = build_intent([GW], [Sel(pod_ip=PODS["pod3"][1], node="worker2", eip=EIP4, partner=EIP6)])


@pytest.mark.parametrize(("v6", "proto", "change"), [
    (False, "udp", "policy deleted"), (False, "tcp", "policy deleted"),
    (True, "udp", "policy deleted"), (True, "tcp", "policy deleted"),
    (False, "udp", "moved to another EIP"), (False, "tcp", "moved to another EIP"),
])
def test_server_push_after_steering_ends_never_sees_the_pod_ip(bed: Testbed, v6: bool, proto: str,
                                                                change: str) -> None:
    gw = Gateway(bed)
    gw.converge(NOTHING)
    gw.converge(selected())
    apply_workers(bed, selected())
    server = EXT_V6 if v6 else EXT_V4[0]
    pod_ip = PODS["pod1"][2 if v6 else 1]
    eip = EIP6 if v6 else EIP4
    extclient(bed, "reset")
    client = subprocess.Popen(["ip", "netns", "exec", bed.ns("pod1"), sys.executable, "-m", "lab.extclient", "push",
                               "--server", server, "--port", str(PUSH_PORT), "--proto", proto, "--duration", "60"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: eip in push_sources(bed), timeout=20, what=f"{proto} push flow through {eip}")
        after = selected(eip4=EIP4B) if change == "moved to another EIP" else NOTHING
        changes = gw.converge(after, full=False)
        assert f"conntrack flush {pod_ip}" in changes
        apply_workers(bed, after, flush=(PODS["pod1"][1], PODS["pod1"][2]))
        before = counters(bed)
        # the server keeps pushing to the EIP: each packet must now die at the gateway, counted
        wait_until(lambda: counters(bed)["drop_eip_unsolicited"] >= before["drop_eip_unsolicited"] + 5,
                   timeout=20, what="server pushes dropped as unsolicited at the gateway")
        seen = push_sources(bed) | wire_sources(bed)
        assert pod_ip not in seen, seen
    finally:
        client.terminate()
        client.wait(10)
        extclient(bed, "push-stop")


def test_spoofed_vxlan_from_another_interface_is_dropped_and_counted(bed: Testbed) -> None:
    apply_workers(bed, selected())
    att_mac_dst = link_mac(bed, "g1", "att0")
    for outer_src, outer_dst, inner_src, server in (
        (WORKER_ADDR["w1"][0], EIP4, PODS["pod1"][1], EXT_V4[0]),
        (WORKER_ADDR["w1"][1], EIP6, PODS["pod1"][2], EXT_V6),
    ):
        # without the check, an attacker who knows the key (the worker's keyed VNI) makes the gateway relay it (so
        # the test can fail): the server sees the EIP
        extclient(bed, "reset")
        gw = Gateway(bed, TunnelSourceCheck.OFF)
        gw.converge(selected())
        send = {"outer_src": outer_src, "outer_dst": outer_dst, "inner_src": inner_src, "inner_dst": server,
                "inner_dport": PUSH_PORT + 100, "vni": keyed()}
        send_vxlan(bed, ATTACKER, "eth0", next_hop_mac=att_mac_dst, **send)
        wait_until(lambda od=outer_dst: od in wire_sources(bed), timeout=10, what="relayed spoofed packet")
        # with the strict reverse-path check: dropped at the gateway, counted, nothing reaches the server
        gw = Gateway(bed, TunnelSourceCheck.STRICT)
        gw.converge(selected())
        extclient(bed, "reset")
        before = counters(bed)
        send_vxlan(bed, ATTACKER, "eth0", next_hop_mac=att_mac_dst, count=5, **send)
        wait_until(lambda b=before: counters(bed)["drop_tunnel_source"] >= b.get("drop_tunnel_source", 0) + 5,
                   timeout=10, what="drop_tunnel_source")
        assert outer_dst not in wire_sources(bed)
        # the real worker path still works
        assert bed.source("pod1", server) == outer_dst


def test_echo_probe_answers_known_workers_only(bed: Testbed) -> None:
    Gateway(bed).converge(selected())
    for v6, eip in ((False, EIP4), (True, EIP6)):
        fam = ["-6"] if v6 else ["-4"]
        w1 = WORKER_ADDR["w1"][1 if v6 else 0]
        assert "1 received" in bed.run("w1", "ping", *fam, "-c1", "-W2", "-I", w1, eip, check=False)
        before = counters(bed)["drop_eip_unsolicited"]
        unknown = bed.run(ATTACKER, "ping", *fam, "-c2", "-W1", "-I", ATT_ADDR[1 if v6 else 0], eip, check=False)
        assert " 0 received" in unknown
        outside = bed.run("ext", "ping", *fam, "-c2", "-W1", eip, check=False)
        assert " 0 received" in outside
        assert counters(bed)["drop_eip_unsolicited"] >= before + 4


def test_spoofed_inner_source_from_a_worker_is_counted_per_worker_and_reported(
    bed: Testbed, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cfg = GatewayConfig(source=tmp_path / "gw.yaml", node_name="gw1")
    uplink = Underlay(interface="eth0", index=0, addresses=(ip_address(GATEWAY_ADDR["g1"][0]),), mtu=1500)
    clock = [1000.0]
    dp = RealGatewayDataPath(cfg, uplink, applier=DataPathApplier(bed.ns("g1")), clock=lambda: clock[0])
    Gateway(bed).converge(selected())
    dp.planned = True
    dp.watch_spoofing()  # baseline
    router_mac = link_mac(bed, "r", "p-w1")
    for outer_dst, inner_src, server in ((EIP4, "100.64.1.99", EXT_V4[0]), (EIP6, "2001:db8:64:1::99", EXT_V6)):
        send_vxlan(bed, "w1", "eth0", next_hop_mac=router_mac, count=3, outer_src=WORKER_ADDR["w1"][0 if ":" not in
                   outer_dst else 1], outer_dst=outer_dst, inner_src=inner_src, inner_dst=server, vni=keyed())
    wait_until(lambda: counters(bed).get("spoofed_worker1", 0) >= 6, timeout=10, what="spoofed_worker1 >= 6")
    assert counters(bed)["drop_spoofed"] >= 6
    assert counters(bed).get("spoofed_worker2", 0) == 0
    clock[0] += 10
    with caplog.at_level(logging.WARNING, logger="egressgw.gateway"):
        dp.watch_spoofing()
    assert any(r.getMessage() == "worker.spoofed_traffic" and "'worker1'" in str(vars(r)) for r in caplog.records), \
        [vars(r) for r in caplog.records]
    (cond,) = dp.conditions()
    assert cond.type == "WorkerTrafficSpoofed" and cond.status and cond.subjects == ("worker1",)
    # legitimate traffic of the same worker keeps flowing
    apply_workers(bed, selected())
    assert bed.source("pod1", EXT_V4[0]) == EIP4


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4-outer", "ipv6-outer"])
def test_forged_vxlan_without_the_key_is_dropped_and_counted_while_real_workers_pass(bed: Testbed, v6: bool) -> None:
    """A gateway with one uplink and no uRPF upstream, as the reverse-path check sees it (check off): the forger
    knows worker1's address, pod1's IP and the spec VNI, not the instance's key."""
    apply_workers(bed, selected())
    gw = Gateway(bed, TunnelSourceCheck.OFF)
    gw.converge(selected())
    outer_src, outer_dst = (WORKER_ADDR["w1"][1], EIP6) if v6 else (WORKER_ADDR["w1"][0], EIP4)
    inner_src, server = (PODS["pod1"][2], EXT_V6) if v6 else (PODS["pod1"][1], EXT_V4[0])
    send = {"outer_src": outer_src, "outer_dst": outer_dst, "inner_src": inner_src, "inner_dst": server,
            "inner_dport": PUSH_PORT + 100}
    att_mac_dst = link_mac(bed, "g1", "att0")
    guesses = [GW.vni, 1, 0xFFFFFF, keyed("worker2"), keyed() ^ 1]  # the spec VNI, a few others, a near miss
    assert keyed() not in guesses
    extclient(bed, "reset")
    before = counters(bed)
    for vni in guesses:
        send_vxlan(bed, ATTACKER, "eth0", next_hop_mac=att_mac_dst, count=4, vni=vni, **send)
    wait_until(lambda: counters(bed)["drop_tunnel_vni"] >= before["drop_tunnel_vni"] + 4 * len(guesses),
               timeout=10, what="drop_tunnel_vni")
    after = counters(bed)
    assert after["drop_spoofed"] == before["drop_spoofed"] and after["drop_unknown_vtep"] == before[
        "drop_unknown_vtep"], "forged packets must stop at admission"
    assert outer_dst not in wire_sources(bed)
    # real workers pass (both, with their own keyed VNIs), in the same gateway state
    assert bed.source("pod1", server) == outer_dst
    assert bed.source("pod3", EXT_V4[0]) == WORKER_ADDR["w2"][0]  # pod3 is not selected: its node's address
    w2 = build_intent([GW], [Sel(pod_ip=PODS["pod3"][1], node="worker2", eip=EIP4, partner=EIP6)])
    apply_workers(bed, w2)
    Gateway(bed, TunnelSourceCheck.OFF).converge(w2)
    assert bed.source("pod3", EXT_V4[0]) == EIP4
    # the control: the same forged packet with worker1's keyed VNI is relayed (the key is what stops it)
    apply_workers(bed, selected())
    Gateway(bed, TunnelSourceCheck.OFF).converge(selected())
    extclient(bed, "reset")
    send_vxlan(bed, ATTACKER, "eth0", next_hop_mac=att_mac_dst, count=3, vni=keyed(), **send)
    wait_until(lambda: outer_dst in wire_sources(bed), timeout=10, what="relayed packet with the keyed VNI")
