"""Data path on the real kernel: worker + gateway appliers in namespaces, traffic to an external server.

Topology: lab/testbeds/datapath.py (prefix `egt-dp-t`). Every test applies the plans it needs (apply converges
from whatever the previous test left, which also exercises adoption) and checks what the external server saw.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from appliance.core.intent import Intent
from appliance.core.model import IPNetwork
from appliance.core.waiting import wait_until
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.incremental import IncrementalGateway, IncrementalWorker
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway
from appliance.datapath.plan.tunnel import worker_vni
from appliance.datapath.plan.worker import WorkerSettings, plan_worker
from lab.testbeds.datapath import EXT_V4, EXT_V6, GATEWAY_ADDR, PODS, WORKER_ADDR, Testbed
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent

pytestmark = pytest.mark.netns

EIP4, EIP4B, EIP6 = "203.0.113.130", "203.0.113.131", "2001:db8:e1::2"
NODE = {"w1": "worker1", "w2": "worker2"}
WORKERS = {NODE[w]: tuple(ip_address(a) for a in addrs) for w, addrs in WORKER_ADDR.items()}
MEMBER = {"g1": "gw1", "g2": "gw2"}
GW = Gw(eips=(EIP4, EIP4B, EIP6), members=("gw1", "gw2"),
        member_addresses={"gw1": GATEWAY_ADDR["g1"][0], "gw2": GATEWAY_ADDR["g2"][0]})


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    yield from datapath_bed()


def datapath_bed() -> Iterator[Testbed]:
    """The two-worker, two-gateway testbed with the EIPs routed to g1 (a fixture body; torn down afterwards)."""
    for binary in ("ip", "nft", "iperf3", "sysctl"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is missing (apt-get install iproute2 nftables iperf3 procps)", pytrace=False)
    tb = Testbed(prefix="egt-dp-t")
    try:
        tb.up()
        for eip in (EIP4, EIP4B, EIP6):
            tb.route_eip(eip, "g1")
        yield tb
    finally:
        tb.down()


def apply(bed: Testbed, intent: Intent, *, v6_underlay: bool = False) -> dict[str, tuple[str, ...]]:
    """Plan and apply every node; returns the changes per node."""
    changes = {}
    for g, member in MEMBER.items():
        plan = plan_gateway(intent, member=member, workers=WORKERS, settings=GatewaySettings())
        result = DataPathApplier(bed.ns(g)).apply(plan)
        assert result.failures == (), result.failures
        changes[g] = result.changes
    for w, node in NODE.items():
        underlay = ip_address(WORKER_ADDR[w][1 if v6_underlay else 0])
        wplan = plan_worker(intent, node=node, underlay=underlay, settings=WorkerSettings())
        result = DataPathApplier(bed.ns(w)).apply(wplan)
        assert result.failures == (), result.failures
        changes[w] = result.changes
    return changes


def sel(pod: str, *, v6: bool = False, eip: str | None = EIP4, **kw: object) -> Sel:
    w, a4, a6 = PODS[pod]
    partner = None
    if eip == EIP4:
        partner = EIP6
    elif eip == EIP6:
        partner = EIP4
    return Sel(pod_ip=a6 if v6 else a4, node=NODE[w], eip=eip, partner=partner, **kw)  # type: ignore[arg-type]


def dual(pod: str, **kw: object) -> list[Sel]:
    return [sel(pod, **kw), sel(pod, v6=True, eip=EIP6, **kw)]  # type: ignore[arg-type]


def counters(bed: Testbed, node: str) -> dict[str, int]:
    return {k: v[0] for k, v in DataPathApplier(bed.ns(node)).counters().items()}


def icmp_seen(bed: Testbed, pod: str, server: str) -> set[str]:
    bed.run("ext", sys.executable, "-m", "lab.extclient", "reset", check=False)
    bed.run(pod, "ping", "-c1", "-W2", server, check=False)
    peers = json.loads(bed.run("ext", sys.executable, "-m", "lab.extclient", "peers"))["peers"]
    return {p["source"] for p in peers if p["proto"].startswith("icmp")}


def test_selected_pod_leaves_with_the_eip_unselected_with_the_node_ip(bed: Testbed) -> None:
    apply(bed, build_intent([GW], dual("pod1")))
    for proto in ("udp", "tcp"):
        assert bed.source("pod1", EXT_V4[0], proto) == EIP4
        assert bed.source("pod1", EXT_V6, proto) == EIP6  # IPv6 pod over the IPv4 underlay
        assert bed.source("pod2", EXT_V4[0], proto) == WORKER_ADDR["w1"][0]
        assert bed.source("pod2", EXT_V6, proto) == WORKER_ADDR["w1"][1]
    assert icmp_seen(bed, "pod1", EXT_V4[0]) == {EIP4}
    assert icmp_seen(bed, "pod1", EXT_V6) == {EIP6}
    assert icmp_seen(bed, "pod2", EXT_V4[0]) == {WORKER_ADDR["w1"][0]}
    gw = DataPathApplier(bed.ns("g1")).counters()
    assert gw["eip_203_0_113_130"][0] >= 6 and gw["conn_203_0_113_130"][0] >= 3  # both directions; new connections
    assert gw["eip_2001_db8_e1__2"][0] >= 6
    vni = worker_vni(build_intent([GW], dual("pod1")).instances[0], "worker1")  # the keyed VNI, not the spec's
    assert counters(bed, "w1")[f"ep_203_0_113_130_{vni}"] >= 6


def test_ipv6_underlay_carries_both_families(bed: Testbed) -> None:
    try:
        apply(bed, build_intent([GW], dual("pod1")), v6_underlay=True)
        assert bed.source("pod1", EXT_V4[0], "tcp") == EIP4
        assert bed.source("pod1", EXT_V6, "tcp") == EIP6
        assert bed.source("pod1", EXT_V6, "udp") == EIP6
    finally:
        apply(bed, build_intent([GW], dual("pod1")))


def test_dest_subnet_two_policies_two_eips_and_cluster_internal(bed: Testbed) -> None:
    intent = build_intent([GW], [
        sel("pod1", policy="a", destinations=("203.0.113.0/28",)),
        sel("pod1", policy="b", eip=EIP4B, destinations=("203.0.113.32/28",)),
        sel("pod2", policy="c", destinations=("203.0.113.0/28",)),
    ])
    apply(bed, intent)
    assert bed.source("pod1", EXT_V4[0], "tcp") == EIP4
    assert bed.source("pod1", EXT_V4[1], "tcp") == EIP4B
    assert bed.source("pod2", EXT_V4[0], "udp") == EIP4
    assert bed.source("pod2", EXT_V4[1], "tcp") == WORKER_ADDR["w1"][0]  # destSubnet does not match
    # cluster-internal: the router's cluster LAN address is never steered (and not masqueraded by the CNI)
    bed.start("r", [sys.executable, "-m", "lab.extserver", "--port", "7001", "--control", "127.0.0.1:7081",
                    "--no-icmp"])
    out = wait_until(lambda: bed.run("pod1", sys.executable, "-m", "lab.extclient", "source", "--server", "100.127.0.1",
                                     "--port", "7001", "--timeout", "2", check=False).strip(),
                     timeout=30, what="an answer from the router's cluster LAN address")
    assert out == PODS["pod1"][1]


def test_policy_removed_pod_moved_and_use_node_ip(bed: Testbed) -> None:
    apply(bed, build_intent([GW], [sel("pod1"), sel("pod3")]))
    assert bed.source("pod3", EXT_V4[0]) == EIP4  # a pod on the other worker gets the same EIP
    apply(bed, build_intent([GW], [sel("pod3")]))
    assert bed.source("pod1", EXT_V4[0]) == WORKER_ADDR["w1"][0]  # policy gone: back to normal
    apply(bed, build_intent([GW], [sel("pod1", eip=None, policy="nodeip")]))
    assert bed.source("pod1", EXT_V4[0], "tcp") == GATEWAY_ADDR["g1"][0]


def test_fail_closed_drops_and_counts(bed: Testbed) -> None:
    down = Gw(eips=(EIP4,), members=("gw1",), alive=())
    apply(bed, build_intent([down], [sel("pod1", gateway="gw-a")]))
    before = counters(bed, "w1")["drop_no_gateway"]
    assert bed.source("pod1", EXT_V4[0], check=False) == ""
    assert counters(bed, "w1")["drop_no_gateway"] > before


def test_apply_twice_changes_nothing_and_a_restart_adopts(bed: Testbed) -> None:
    intent = build_intent([GW], [*dual("pod1"), sel("pod3")])
    apply(bed, intent)
    before = {n: bed.run(n, "nft", "list", "table", "inet", "egressgw") for n in ("w1", "g1")}
    again = apply(bed, intent)  # fresh applier objects = a restarted process
    assert all(c == () for c in again.values()), again
    after = {n: bed.run(n, "nft", "list", "table", "inet", "egressgw") for n in ("w1", "g1")}
    assert before == after
    assert bed.source("pod1", EXT_V4[0]) == EIP4


def test_hand_flushed_table_and_chain_are_repaired(bed: Testbed) -> None:
    intent = build_intent([GW], dual("pod1"))
    apply(bed, intent)
    bed.run("w1", "nft", "delete", "table", "inet", "egressgw")
    bed.run("g1", "nft", "flush", "chain", "inet", "egressgw", "postrouting")
    bed.run("g1", "nft", "flush", "set", "inet", "egressgw", "pods4")
    assert bed.source("pod1", EXT_V4[0]) == WORKER_ADDR["w1"][0]
    changes = apply(bed, intent)
    assert "nft table replaced" in changes["w1"] and "nft table replaced" in changes["g1"]
    assert bed.source("pod1", EXT_V4[0], "tcp") == EIP4


def test_security_drops_are_counted_and_the_host_firewall_is_untouched(bed: Testbed) -> None:
    host_tables = {n: bed.run(n, "nft", "list", "table", "ip", "lab_cni") for n in ("w1", "w2")}
    intent = build_intent([GW], [sel("pod1", destinations=("203.0.113.0/28",)), sel("pod3")])
    apply(bed, intent)
    # worker1 wrongly steers pod2 (unselected), pod3's IP (lives on worker2) and pod1 toward another subnet
    rogue = build_intent([GW], [sel("pod1"), sel("pod2"), Sel(pod_ip=PODS["pod3"][1], node="worker1", eip=EIP4)])
    wplan = plan_worker(rogue, node="worker1", underlay=ip_address(WORKER_ADDR["w1"][0]), settings=WorkerSettings())
    assert DataPathApplier(bed.ns("w1")).apply(wplan).failures == ()
    bed.ip("pod2", "addr", "add", f"{PODS['pod3'][1]}/32", "dev", "eth0")
    try:
        c0 = counters(bed, "g1")
        assert bed.source("pod2", EXT_V4[0], check=False) == ""  # unselected pod pushed into the tunnel
        bed.run("pod2", "ping", "-c1", "-W1", "-I", PODS["pod3"][1], EXT_V4[0], check=False)  # spoofed source
        assert bed.source("pod1", EXT_V4[1], "tcp", check=False) == ""  # selected pod, unselected destination
        # VXLAN from an address that is no known worker
        bed.run("ext", sys.executable, "-c", "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                f"[s.sendto(b'\\x08'+bytes(15), ('{EIP4}', 4789)) for _ in range(3)]")
        c1 = counters(bed, "g1")
        assert c1["drop_spoofed"] >= c0["drop_spoofed"] + 2
        assert c1["drop_unselected"] > c0["drop_unselected"]
        assert c1["drop_unknown_vtep"] >= c0["drop_unknown_vtep"] + 3
    finally:
        bed.ip("pod2", "addr", "del", f"{PODS['pod3'][1]}/32", "dev", "eth0", check=False)
    apply(bed, intent)
    assert {n: bed.run(n, "nft", "list", "table", "ip", "lab_cni") for n in ("w1", "w2")} == host_tables
    assert "counter" in bed.run("w1", "nft", "list", "table", "inet", "hostfw")


def test_unsolicited_traffic_to_an_eip_is_dropped_not_answered(bed: Testbed) -> None:
    apply(bed, build_intent([GW], dual("pod1")))
    before = counters(bed, "g1")["drop_eip_unsolicited"]
    proc = subprocess.run(["ip", "netns", "exec", bed.ns("ext"), sys.executable, "-c",
                           "import socket; socket.create_connection(('203.0.113.130', 22), timeout=1)"],
                          capture_output=True, text=True, check=False)
    assert "timed out" in proc.stderr  # no RST from the gateway
    assert counters(bed, "g1")["drop_eip_unsolicited"] > before


def test_failover_to_the_second_gateway_keeps_the_eip(bed: Testbed) -> None:
    apply(bed, build_intent([GW], dual("pod1")))
    try:
        bed.route_eip(EIP4, "g2")
        bed.route_eip(EIP6, "g2")
        assert bed.source("pod1", EXT_V4[0], "tcp") == EIP4
        assert bed.source("pod1", EXT_V6, "tcp") == EIP6
    finally:
        bed.route_eip(EIP4, "g1")
        bed.route_eip(EIP6, "g1")


def test_bulk_tcp_through_the_tunnel_completes(bed: Testbed) -> None:
    apply(bed, build_intent([GW], dual("pod1")))
    server = bed.start("ext", ["iperf3", "-s", "-p", "5201"])
    wait_until(lambda: bed.run("ext", "ss", "-Hltn", "sport = :5201").strip(), timeout=30,
               what="iperf3 listening")
    try:
        for args in ((), ("-R",)):
            out = bed.run("pod1", "iperf3", "-c", EXT_V4[0], "-p", "5201", "-t", "1", "-J", *args, timeout=30)
            end = json.loads(out)["end"]
            assert end["sum_received"]["bytes"] > 1_000_000
    finally:
        server.terminate()


def test_remove_all_leaves_nothing_of_ours(bed: Testbed) -> None:
    apply(bed, build_intent([GW], dual("pod1")))
    for n in ("w1", "w2", "g1", "g2"):
        DataPathApplier(bed.ns(n)).remove_all()
        assert "egw-" not in bed.ip(n, "link", "show")
        assert "proto 230" not in bed.ip(n, "rule", "show") + bed.ip(n, "-6", "rule", "show")
        assert bed.run(n, "nft", "list", "table", "inet", "egressgw", check=False) == ""
    assert "metric 230" not in bed.ip("g1", "addr", "show", "dev", "lo")
    assert bed.source("pod1", EXT_V4[0]) == WORKER_ADDR["w1"][0]
    assert "lab_cni" in bed.run("w1", "nft", "list", "tables")


POD_CIDRS = {"worker1": (ip_network("100.64.1.0/24"), ip_network("2001:db8:64:1::/64")),
             "worker2": (ip_network("100.64.2.0/24"), ip_network("2001:db8:64:2::/64"))}


@pytest.mark.parametrize("cidrs", [None, POD_CIDRS], ids=["pod-routes", "pod-cidr-routes"])
def test_pod_churn_fast_path_equals_the_full_plan(bed: Testbed, cidrs: dict[str, tuple[IPNetwork, ...]] | None
                                                  ) -> None:
    base = build_intent([GW], dual("pod1"))
    workers = {w: IncrementalWorker(DataPathApplier(bed.ns(w)), node=NODE[w],
                                    underlay=ip_address(WORKER_ADDR[w][0]), settings=WorkerSettings())
               for w in ("w1", "w2")}
    gateways = {g: IncrementalGateway(DataPathApplier(bed.ns(g)), member=MEMBER[g], settings=GatewaySettings())
                for g in ("g1", "g2")}

    def converge(intent: Intent, *, full: bool) -> list[str]:
        changes: list[str] = []
        for gw in gateways.values():
            r = gw.converge(intent, workers=WORKERS, full=full, worker_pod_cidrs=cidrs)
            assert r.failures == ()
            changes += r.changes
        for wk in workers.values():
            r = wk.converge(intent, full=full)
            assert r.failures == ()
            changes += r.changes
        return changes

    def nothing_left_to_do(intent: Intent) -> None:
        for g, member in MEMBER.items():
            plan = plan_gateway(intent, member=member, workers=WORKERS, settings=GatewaySettings(),
                                worker_pod_cidrs=cidrs)
            assert DataPathApplier(bed.ns(g)).diff(plan).empty
        for w, node in NODE.items():
            wplan = plan_worker(intent, node=node, underlay=ip_address(WORKER_ADDR[w][0]), settings=WorkerSettings())
            assert DataPathApplier(bed.ns(w)).diff(wplan).empty

    converge(base, full=True)
    assert bed.source("pod1", EXT_V6, "tcp") == EIP6
    assert bed.source("pod2", EXT_V4[0]) == WORKER_ADDR["w1"][0]
    grown = replace(base, steerings=base.steerings + build_intent([GW], [sel("pod2"), sel("pod3")]).steerings)
    changes = converge(grown, full=False)
    assert any("element lines" in c for c in changes) and not any("replaced" in c for c in changes), changes
    assert bed.source("pod2", EXT_V4[0], "tcp") == EIP4
    assert bed.source("pod3", EXT_V4[0], "tcp") == EIP4
    nothing_left_to_do(grown)
    converge(base, full=False)
    assert bed.source("pod2", EXT_V4[0], "tcp") == WORKER_ADDR["w1"][0]
    nothing_left_to_do(base)


# a datagram every 10 ms until the stop file exists; the ready file appears with the first reply (the path works);
# after the stop, replies are collected until all came back or none came for 3 s; prints the missing sequence numbers
PROBE = r"""
import json, os, socket, sys, threading, time
server, ready, stop = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
got = set()
done = threading.Event()
def recv():
    while True:
        try:
            data = s.recv(2048)
        except (TimeoutError, socket.timeout):
            if done.is_set():
                return
            continue
        got.add(int(data.split(b"|")[0]))
        if not os.path.exists(ready):
            open(ready, "w").close()
t = threading.Thread(target=recv); t.start()
sent = 0
while not os.path.exists(stop):
    s.sendto(str(sent).encode(), (server, 7000)); sent += 1
    time.sleep(0.01)
last, quiet = -1, 0
while len(got) < sent and quiet < 6:
    time.sleep(0.5)
    quiet = quiet + 1 if len(got) == last else 0
    last = len(got)
done.set(); t.join()
print(json.dumps({"sent": sent, "missing": sorted(set(range(sent)) - got)}))
"""


def test_restart_and_reapply_lose_no_packet(bed: Testbed, tmp_path: Path) -> None:
    """Proves: adoption after a restart, other pods coming and going and an atomic table replacement after drift
    lose no packet of a flow running through all of them (the probe runs from before the first to after the last)."""
    intent = build_intent([GW], dual("pod1"))
    apply(bed, intent)
    ready, stop = tmp_path / "probe.ready", tmp_path / "probe.stop"
    probe = subprocess.Popen(["ip", "netns", "exec", bed.ns("pod1"), sys.executable, "-c", PROBE, EXT_V4[0],
                              str(ready), str(stop)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    wait_until(ready.exists, timeout=30, what="the probe's first reply")
    assert all(c == () for c in apply(bed, intent).values())  # restarted processes adopt: nothing changes
    apply(bed, build_intent([GW], [*dual("pod1"), sel("pod2"), sel("pod3")]))  # other pods come and go
    apply(bed, intent)
    bed.run("g1", "nft", "flush", "chain", "inet", "egressgw", "accounting")  # drift -> atomic table replacement
    assert "nft table replaced" in apply(bed, intent)["g1"]
    stop.touch()
    out, _ = probe.communicate(timeout=60)
    result = json.loads(out)
    assert result["sent"] > 0 and result["missing"] == [], result
