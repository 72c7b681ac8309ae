"""The worker's security checks on the real kernel: source binding (bridged and routed pods), the tunnel guard after
steering ends, and the order of NAT chains. IPv4 and IPv6.

Topology: lab/testbeds/datapath.py with the routed pod (prefix `egt-dp-s`): pod1, pod2 on w1's bridge, pod4 on a
routed veth of w1. What the external server receives is recorded by a small nft table in its namespace (sources of
UDP to the attack port 7001 and the push port 7009), independent of the server process.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from appliance.core.intent import Intent
from appliance.core.waiting import wait_until
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.conntrack import flush_pod_conntrack
from appliance.datapath.apply.netlink import Shell
from appliance.datapath.apply.pod_interfaces import PodInterfaceDiscovery
from appliance.datapath.apply.worker_guards import BridgeBindingApplier, foreign_nat_chains
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway
from appliance.datapath.plan.nat_order import WORKER_SNAT_PRIORITY
from appliance.datapath.plan.tunnel import worker_vni
from appliance.datapath.plan.worker import SkipReason, SourceBinding, WorkerPlan, WorkerSettings, plan_worker
from appliance.datapath.plan.worker_nft import worker_bridge_table
from lab.testbeds.datapath import EXT_V4, EXT_V6, GATEWAY_ADDR, PODS, ROUTED_PODS, WORKER_ADDR, Testbed
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent

pytestmark = pytest.mark.netns

EIP4, EIP6 = "203.0.113.130", "2001:db8:e1::2"
NODE = {"w1": "worker1", "w2": "worker2"}
WORKERS = {NODE[w]: tuple(ip_address(a) for a in addrs) for w, addrs in WORKER_ADDR.items()}
MEMBER = {"g1": "gw1", "g2": "gw2"}
GW = Gw(eips=(EIP4, EIP6), members=("gw1", "gw2"),
        member_addresses={"gw1": GATEWAY_ADDR["g1"][0], "gw2": GATEWAY_ADDR["g2"][0]})
ALL_PODS = {**PODS, **ROUTED_PODS}
ATTACK_PORT, PUSH_PORT, POD_PORT = 7001, 7009, 41000
#: records every source of UDP to the attack and push ports as the external server's namespace receives it
SEEN_NFT = f"""table inet egt_seen {{
\tset s4 {{ type ipv4_addr . inet_service; flags dynamic; size 4096; }}
\tset s6 {{ type ipv6_addr . inet_service; flags dynamic; size 4096; }}
\tchain pre {{
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tudp dport {{ {ATTACK_PORT}, {PUSH_PORT} }} update @s4 {{ ip saddr . udp dport }}
\t\tudp dport {{ {ATTACK_PORT}, {PUSH_PORT} }} update @s6 {{ ip6 saddr . udp dport }}
\t}}
}}
"""


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    for binary in ("ip", "nft", "sysctl"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is missing (apt-get install iproute2 nftables procps)", pytrace=False)
    tb = Testbed(prefix="egt-dp-s", routed=True)
    try:
        tb.up()
        for eip in (EIP4, EIP6):
            tb.route_eip(eip, "g1")
        tb.run("ext", "nft", "-f", "-", input=SEEN_NFT)
        yield tb
    finally:
        tb.down()


def addr(pod: str, v6: bool = False) -> str:
    return ALL_PODS[pod][2 if v6 else 1]


def sels(*pods: str, extra: tuple[str, ...] = ()) -> list[Sel]:
    out = []
    for pod in pods:
        node = NODE[ALL_PODS[pod][0]]
        out.append(Sel(pod_ip=addr(pod), node=node, eip=EIP4, partner=EIP6))
        out.append(Sel(pod_ip=addr(pod, True), node=node, eip=EIP6, partner=EIP4))
    out += [Sel(pod_ip=ip, node="worker1", eip=EIP4, partner=EIP6) for ip in extra]
    return out


def discover(bed: Testbed) -> tuple[SourceBinding, ...]:
    return PodInterfaceDiscovery(Shell(bed.ns("w1"))).discover()


def apply(bed: Testbed, intent: Intent, *, gateways: bool = True) -> WorkerPlan:
    """Gateways plain; w1 the way the agent does it (discover, bridge table, plan with bindings); returns w1's plan."""
    if gateways:
        for g, member in MEMBER.items():
            result = DataPathApplier(bed.ns(g)).apply(plan_gateway(intent, member=member, workers=WORKERS,
                                                                   settings=GatewaySettings()))
            assert result.failures == (), result.failures
    plan = plan_worker(intent, node="worker1", underlay=WORKERS["worker1"][0], settings=WorkerSettings(),
                       source_bindings=discover(bed))
    bridge = BridgeBindingApplier(Shell(bed.ns("w1"))).apply(worker_bridge_table(plan.bridged))
    assert bridge.failures == (), bridge.failures
    result = DataPathApplier(bed.ns("w1")).apply(plan)
    assert result.failures == (), result.failures
    return plan


def w1_counters(bed: Testbed) -> dict[str, int]:
    raw = {**DataPathApplier(bed.ns("w1")).counters(), **BridgeBindingApplier(Shell(bed.ns("w1"))).counters()}
    return {k: v[0] for k, v in raw.items()}


def seen(bed: Testbed, port: int) -> set[str]:
    """Source addresses the external namespace received on `port` since the last `reset_seen`."""
    out: set[str] = set()
    for name in ("s4", "s6"):
        listing = json.loads(bed.run("ext", "nft", "-j", "list", "set", "inet", "egt_seen", name))
        for item in listing.get("nftables", []):
            for e in (item.get("set") or {}).get("elem", []):
                key = e.get("elem", {}).get("val", e) if isinstance(e, dict) and "elem" in e else e
                src, dport = key["concat"]
                if int(dport) == port:
                    out.add(str(src))
    return out


def reset_seen(bed: Testbed) -> None:
    for name in ("s4", "s6"):
        bed.run("ext", "nft", "flush", "set", "inet", "egt_seen", name)


def spoof(bed: Testbed, attacker: str, victim_ip: str, count: int = 3) -> None:
    dst = EXT_V6 if ":" in victim_ip else EXT_V4[0]
    bed.run(attacker, sys.executable, "-m", "lab.attack", "spoof", "--src", victim_ip, "--dst", dst,
            "--dport", str(ATTACK_PORT), "--count", str(count), "--interval", "0.01")


def test_discovery_finds_bridged_and_routed_pods(bed: Testbed) -> None:
    found = {(str(b.pod_ip), b.interface, b.bridge) for b in discover(bed)}
    for pod in ("pod1", "pod2"):
        assert {(addr(pod), f"v-{pod}", "cni0"), (addr(pod, True), f"v-{pod}", "cni0")} <= found
    assert {(addr("pod4"), "r-pod4", ""), (addr("pod4", True), "r-pod4", "")} <= found
    assert not any(ip == ALL_PODS["pod3"][1] for ip, _, _ in found)  # pod3 lives on w2


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_spoofed_sources_are_dropped_and_counted_real_pods_keep_the_eip(bed: Testbed, v6: bool) -> None:
    plan = apply(bed, build_intent([GW], sels("pod1", "pod4")))
    assert {str(b.pod_ip) for b in plan.bridged} == {addr("pod1"), addr("pod1", True)}
    assert plan.unbound == () and plan.skipped == ()
    ext, eip = (EXT_V6, EIP6) if v6 else (EXT_V4[0], EIP4)
    assert bed.source("pod1", ext) == eip  # the real pods still leave with the EIP
    assert bed.source("pod4", ext) == eip
    cases = [
        ("pod2", addr("pod1", v6), "drop_source_spoofed"),  # same bridge, another port
        ("pod2", addr("pod4", v6), "drop_source_rpf"),  # bridged attacker, routed victim
        ("pod4", addr("pod1", v6), "drop_source_rpf"),  # routed attacker, bridged victim
    ]
    for attacker, victim, counter in cases:
        reset_seen(bed)
        before = w1_counters(bed).get(counter, 0)
        spoof(bed, attacker, victim)
        wait_until(lambda c=counter, b=before: w1_counters(bed).get(c, 0) >= b + 3, timeout=10,  # type: ignore[misc]
                   what=f"{counter} counts {attacker} sending as {victim}", describe=lambda: w1_counters(bed))
        assert seen(bed, ATTACK_PORT) == set(), (attacker, victim)  # neither the EIP nor any other source left


def test_unknown_binding_is_reported_and_its_steered_traffic_dropped(bed: Testbed) -> None:
    ghost = "100.64.1.99"  # selected, but no pod interface of the node has it
    plan = apply(bed, build_intent([GW], sels("pod1", extra=(ghost,))))
    assert [(str(s.pod_ip), s.reason) for s in plan.skipped] == [(ghost, SkipReason.SOURCE_BINDING_UNKNOWN)]
    assert plan.unbound == (ip_address(ghost),)
    reset_seen(bed)
    before = w1_counters(bed).get("drop_source_unbound", 0)
    spoof(bed, "pod2", ghost)
    wait_until(lambda: w1_counters(bed).get("drop_source_unbound", 0) >= before + 3, timeout=10,
               what="drop_source_unbound counts", describe=lambda: w1_counters(bed))
    assert seen(bed, ATTACK_PORT) == set()
    assert bed.source("pod1", EXT_V4[0]) == EIP4


RESPONDER = f"""
import socket, sys
server = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", {POD_PORT}))
s.sendto(b"hello", (server, {PUSH_PORT}))
while True:
    _, peer = s.recvfrom(2048)
    s.sendto(b"echo", peer)
"""
PUSHER = f"""
import socket, sys, time
eip, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in eip else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", {PUSH_PORT}))
for _ in range(count):
    s.sendto(b"push", (eip, {POD_PORT}))
    time.sleep(0.02)
"""


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_server_push_after_steering_ends_is_dropped_on_the_worker(bed: Testbed, v6: bool) -> None:
    ext, eip = (EXT_V6, EIP6) if v6 else (EXT_V4[0], EIP4)
    intent = build_intent([GW], sels("pod1", "pod2"))
    # both families' pods are tunnelled to the IPv4 endpoint (IPv4 underlay), with worker1's keyed VNI
    ep = f"ep_203_0_113_130_{worker_vni(intent.instances[0], 'worker1')}"
    apply(bed, intent)
    flush_pod_conntrack([ip_address(addr("pod1", v6))], netns=bed.ns("w1"))
    reset_seen(bed)
    responder = bed.start("pod1", [sys.executable, "-c", RESPONDER, ext])
    try:
        wait_until(lambda: eip in seen(bed, PUSH_PORT), timeout=10, what="the pod's first datagram arrives")
        before = w1_counters(bed).get(ep, 0)
        bed.run("ext", sys.executable, "-c", PUSHER, eip, "5")
        # while steered: the pushes reach the pod (replies of its steered flow) and its echoes leave with the EIP
        wait_until(lambda: w1_counters(bed).get(ep, 0) >= before + 3, timeout=10, what="echoes steered",
                   describe=lambda: (before, w1_counters(bed)))
        # steering of pod1 ends on the worker; the gateways keep their entry and reply route (worst case)
        apply(bed, build_intent([GW], sels("pod2")), gateways=False)
        flush_pod_conntrack([ip_address(addr("pod1", v6))], netns=bed.ns("w1"))
        reset_seen(bed)
        dropped = w1_counters(bed).get("drop_tunnel_unsolicited", 0)
        bed.run("ext", sys.executable, "-c", PUSHER, eip, "5")
        wait_until(lambda: w1_counters(bed).get("drop_tunnel_unsolicited", 0) >= dropped + 5, timeout=10,
                   what="pushes dropped on the worker", describe=lambda: w1_counters(bed))
        assert seen(bed, PUSH_PORT) == set()  # no raw pod IP (nor anything else) answered the pushes
    finally:
        responder.terminate()
        responder.wait(timeout=5)
        bed.procs.remove(responder)


FOREIGN_NFT = """table ip egt_foreign {
\tchain postrouting { type nat hook postrouting priority %s; policy accept;
\t\tip saddr 100.64.0.0/16 masquerade
\t}
}
table ip6 egt_foreign {
\tchain postrouting { type nat hook postrouting priority %s; policy accept;
\t\tip6 saddr 2001:db8:64::/48 masquerade
\t}
}
"""


def test_foreign_nat_chain_at_our_old_priority_loses_and_an_earlier_one_is_detected(bed: Testbed) -> None:
    apply(bed, build_intent([GW], sels("pod1")))
    w1 = Shell(bed.ns("w1"))
    try:
        # created after our table, at srcnat - 10 (where our chain used to be): it would have won the tie
        bed.run("w1", "nft", "-f", "-", input=FOREIGN_NFT % ("srcnat - 10", "srcnat - 10"))
        assert foreign_nat_chains(w1) == ()
        assert bed.source("pod1", EXT_V4[0], "tcp") == EIP4
        assert bed.source("pod1", EXT_V6, "tcp") == EIP6
        bed.run("w1", "nft", "delete", "table", "ip", "egt_foreign")
        bed.run("w1", "nft", "delete", "table", "ip6", "egt_foreign")
        early = WORKER_SNAT_PRIORITY - 5
        bed.run("w1", "nft", "-f", "-", input=FOREIGN_NFT % (early, WORKER_SNAT_PRIORITY))
        assert [(c.name, c.priority) for c in foreign_nat_chains(w1)] == [
            ("ip egt_foreign postrouting", early), ("ip6 egt_foreign postrouting", WORKER_SNAT_PRIORITY)]
    finally:
        for family in ("ip", "ip6"):
            bed.run("w1", "nft", "delete", "table", family, "egt_foreign", check=False)
