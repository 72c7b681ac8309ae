"""Adversarial end-to-end scenarios (issue 12): an EIP is an identity, and a pod's own IP never leaves the cluster.

Each case attacks the whole system in the shared lab and asserts on two things: what the external side saw (this
module runs its own external server in `ext`, with the server-push mode and the wire record: every IP packet that
reached `ext`, by source, whether a socket took it or not) and which drop counters moved (nft counters of every
rule that drops, read in the gateways', the workers' and the router's namespaces).

- A01 forged VXLAN (a worker's underlay address as outer source, a selected pod's IP inside) sent from outside
  (`ext`), from the cluster LAN (`api`) and from a pod with a raw socket, with the lab's anti-spoofing (strict uRPF
  on the router, source guard on the cluster LAN switch) on and off. Without it, only the gateway's own checks stand
  between an outsider and the EIP; a host on the cluster LAN is then indistinguishable from the worker it
  impersonates (same router, same next hop), so that case runs with the protection on only (the threat model:
  docs/security.md). Before any attack, the same crafted packet sent by the real worker must come out with the EIP:
  it proves the packet is right, so a "not seen" is a drop and not a malformed packet.
- A02 an unselected pod on the same worker sending with a selected pod's source address (raw socket), UDP and TCP
  SYN, IPv4 and IPv6.
- A03 server-push flows (UDP and TCP where the server speaks, IPv4 and IPv6 at once) across a policy deletion, a
  label change, a move to another policy/EIP and a gateway change (the namespace's default gateway: a policy's
  `egressGatewayName` is immutable): the server never sees the pod IP; the pushes
  that no longer belong to a steered flow are dropped and counted.
- A04 a foreign nft NAT chain masquerading pod traffic at the agent's old priority (srcnat - 10), created after and
  before the agent starts: selected pods still leave with their EIP. One deliberately ahead of the agent's SNAT
  cannot be outrun, so it must be loud: the agent names it, the gateways count the spoofed drops per worker.
- A05 IPv6 pod-to-pod traffic when the Nodes list only IPv4 pod CIDRs: never through the gateway.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import re
import signal
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from appliance.core.model import TunnelSpec
from appliance.core.waiting import poll_until, wait_until
from appliance.datapath.plan.nat_order import WORKER_SNAT_PRIORITY
from lab.scenarios import gateway_manifest, policy_manifest
from lab.system import System
from lab.urpf import set_router_urpf
from tests.e2e.conftest import DEFAULT_EIP_V4, DEFAULT_EIP_V6, EXTERNAL_V4, EXTERNAL_V6, Scenario
from tests.e2e.test_a_policies import CONVERGE_S, expect_source, node_ip

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

#: this module's external server in `ext` (the lab's own keeps port 7000 and control 7080)
PORT = 7100
PUSH_PORT = 7101
CONTROL = "127.0.0.1:7180"
DAEMON = "extserver-adversarial"
#: how long to give a drop counter to move once the packets it should stop were sent
DROP_WAIT_S = 20.0
#: pushed messages that must have been stopped (and counted) after a steering change before the flow is judged
PUSHES_STOPPED = 20


def _ext(system: System) -> str:
    return next(n for n, v in system.nodes.items() if v.role == "external")


def _node_of_role(system: System, role: str) -> str:
    return next(n for n, v in system.nodes.items() if v.role == role)


def pod_ips(system: System, lab_pod: str) -> set[str]:
    return {str(ifc.ip) for _, ifc in system.nodes[lab_pod].addresses}


# ---- what the external side saw ----------------------------------------------------------------------------------
@dataclass
class Witness:
    """This module's external server: UDP/TCP echo on PORT, server push on PUSH_PORT, the wire record."""

    system: System
    node: str

    def _ctl(self, *args: str) -> Any:
        res = self.system.lab.exec(self.node, self.system.python_module("lab.extclient", *args, "--control", CONTROL),
                                   timeout=20)
        return json.loads(str(res.stdout))

    def reset(self) -> None:
        self._ctl("push-stop")
        self._ctl("reset")

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self._ctl("events", "--since", str(since))["events"])

    def wire(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self._ctl("wire-events", "--since", str(since))["events"])

    def last_seq(self) -> int:
        return max((e["seq"] for e in self.events()), default=0)

    def push_stop(self) -> None:
        self._ctl("push-stop")


@pytest.fixture(scope="module")
def witness(system: System) -> Iterator[Witness]:
    ext = _ext(system)
    system.lab.start_daemon(ext, DAEMON, system.python_module(
        "lab.extserver", "--port", str(PORT), "--control", CONTROL, "--push-port", str(PUSH_PORT), "--wire",
        "--no-icmp", "--push-interval-ms", "20", "--push-duration", "90"))
    w = Witness(system, ext)
    try:
        wait_until(lambda: _answers(w), timeout=30, what=f"the adversarial external server in {ext}", interval=0.2)
        yield w
    finally:
        system.lab.stop_daemon(ext, DAEMON)


def _answers(w: Witness) -> bool:
    try:
        w.events()
        return True
    except Exception:
        return False


# ---- drop counters -----------------------------------------------------------------------------------------------
def nft_drops(system: System, node: str) -> dict[str, int]:
    """Packets counted by every nft rule of the node that drops (named or anonymous counter), plus the kernel's
    IPv4 reverse-path filter: `{"node:table:counter-or-chain#handle": packets}`."""
    doc = json.loads(str(system.lab.exec(node, ["nft", "-j", "list", "ruleset"]).stdout))["nftables"]
    named = {(c["table"], c["name"]): int(c.get("packets", 0)) for item in doc if (c := item.get("counter"))}
    out: dict[str, int] = {}
    for item in doc:
        rule = item.get("rule")
        if not rule or not any("drop" in e for e in rule.get("expr", [])):
            continue
        for e in rule["expr"]:
            counter = e.get("counter") if isinstance(e, dict) else None
            if isinstance(counter, str):
                out[f"{node}:{rule['table']}:{counter}"] = named.get((rule["table"], counter), 0)
            elif isinstance(counter, dict) and "packets" in counter:
                out[f"{node}:{rule['table']}:{rule['chain']}#{rule['handle']}"] = int(counter["packets"])
    netstat = str(system.lab.exec(node, ["cat", "/proc/net/netstat"]).stdout).splitlines()
    for head, values in zip(netstat[::2], netstat[1::2], strict=False):
        fields = dict(zip(head.split()[1:], values.split()[1:], strict=False))
        if "IPReversePathFilter" in fields:
            out[f"{node}:kernel:IPReversePathFilter"] = int(fields["IPReversePathFilter"])
    return out


def drops(system: System, nodes: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in nodes:
        out.update(nft_drops(system, n))
    return out


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


def watched_nodes(system: System) -> list[str]:
    """Where a forged packet can be stopped: gateways, workers, the router and the switch (all bridges share one
    namespace, so one switch node stands for them)."""
    return [*system.gateways, *system.workers, _node_of_role(system, "router"), _switch_node(system)]


def _switch_node(system: System) -> str:
    return next(n.name for n in system.lab.topology.nodes if dict(n.labels).get("egressgw.role") == "switch")


# ---- the lab's anti-spoofing (router uRPF + cluster LAN source guard) ----------------------------------------------
GUARD_TABLE = "egt_srcguard"


def set_antispoofing(system: System, on: bool) -> None:
    """Turn the lab network's anti-spoofing on or off, the one call the A01 cases toggle: strict uRPF on the router
    (`lab.urpf`, on by default in every lab) and a source guard on the cluster LAN switch (each host port may only
    send its own addresses; the router's port anything; off by default). What docs/security.md asks of the network."""
    set_router_urpf(system, on)
    switch_node: str | None = None
    guard: list[str] = []
    for name, node in sorted(system.nodes.items()):
        if node.role in ("router", "pod", "external", "gateway") or not node.has(4):
            continue
        sw, port = system.lab.switch_side(name, "eth1")
        switch_node = sw
        v4 = ", ".join(str(ifc.ip) for _, ifc in node.addresses if ifc.version == 4 and _ == "eth1")
        v6 = ", ".join([str(ifc.ip) for _, ifc in node.addresses if ifc.version == 6 and _ == "eth1"] + ["fe80::/10"])
        guard += [f'iifname "{port}" ether type ip ip saddr != {{ {v4} }} counter name drop_lan_spoofed drop',
                  f'iifname "{port}" ether type ip6 ip6 saddr != {{ {v6} }} counter name drop_lan_spoofed drop']
    if switch_node is None:
        return
    system.lab.exec(switch_node, ["nft", "delete", "table", "bridge", GUARD_TABLE], check=False)
    if on:
        rules = "\n".join(f"  {r}" for r in guard)
        system.lab.exec(switch_node, ["nft", "-f", "-"], input=(
            f"table bridge {GUARD_TABLE} {{\n counter drop_lan_spoofed {{ }}\n chain forward {{\n"
            f"  type filter hook forward priority filter; policy accept;\n{rules}\n }}\n}}\n"))


def restore_lab_antispoofing(system: System) -> None:
    """Back to the lab's defaults: router uRPF on, no LAN source guard."""
    set_antispoofing(system, False)
    set_router_urpf(system, True)


@pytest.fixture(params=["antispoofing-off", "antispoofing-on"])
def antispoofing(system: System, request: pytest.FixtureRequest) -> Iterator[bool]:
    on = request.param.endswith("-on")
    try:
        set_antispoofing(system, on)
        yield on
    finally:
        restore_lab_antispoofing(system)


# ---- a selected pod to impersonate -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Victim:
    lab_pod: str  # selected by a policy, leaves with the default EIPs
    worker: str


@pytest.fixture(scope="module")
def victim(system: System, witness: Witness) -> Iterator[Victim]:
    sc = Scenario(system, "adversarial-victim")
    try:
        sc.pod("victim", "w1p1", {"app": "victim"})
        sc.apply(policy_manifest(sc.namespace, "p", match_labels={"app": "victim"}))
        expect_source(system, "w1p1", DEFAULT_EIP_V4)
        expect_source(system, "w1p1", DEFAULT_EIP_V6, version=6)
        yield Victim(lab_pod="w1p1", worker=system.nodes["w1p1"].worker)
    finally:
        sc.cleanup()


def tunnel_port(system: System, gw: str) -> int:
    """The UDP port of the gateway's VXLAN device, read from its kernel."""
    links = json.loads(str(system.lab.exec(gw, ["ip", "-j", "-d", "link", "show", "type", "vxlan"]).stdout))
    return int(links[0]["linkinfo"]["info_data"]["port"])


def keyed_vni(system: System, worker: str) -> int:
    """The worker's keyed VNI toward the default instance (docs/security.md "Keyed VNIs"), read from the worker's
    own endpoint routes (`encap ip id VNI ... dst EIP`): what only the cluster knows."""
    routes = str(system.lab.exec(worker, ["ip", "-d", "route", "show", "table", "all"]).stdout)
    eips = "|".join(re.escape(e) for e in (DEFAULT_EIP_V4, DEFAULT_EIP_V6))
    found = {int(m.group(1)) for m in re.finditer(rf"encap ip6? id (\d+) .*?dst ({eips}) ", routes)}
    assert len(found) == 1, f"{worker}: one keyed VNI toward the default EIPs expected, found {found}"
    return found.pop()


#: the VNI anyone can read in the EgressGateway spec (the lab's gateways leave the default): never a valid VNI
SPEC_VNI = TunnelSpec().vni


def forge_vxlan(system: System, origin: str, *, outer_src: str, outer_dst: str, port: int, vni: int,
                inner_src: str, inner_dst: str, tag: str, count: int = 5) -> None:
    system.lab.exec(origin, system.python_module(
        "lab.attack", "vxlan", "--outer-src", outer_src, "--outer-dst", outer_dst, "--port", str(port),
        "--vni", str(vni), "--inner-src", inner_src, "--inner-dst", inner_dst, "--dport", str(PORT),
        "--payload", tag, "--count", str(count), "--interval", "0.02"))


def tagged(w: Witness, tag: str) -> list[dict[str, Any]]:
    return [e for e in w.events() if e.get("tag") == tag]


def new_tag(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:10]}"


def send_forged_to_every_gateway(system: System, origin: str, victim: Victim, version: int, tag: str,
                                 vnis: Iterable[int] | None = None) -> None:
    """Forge the victim pod's VXLAN from `origin`, with each of `vnis` (default: the worker's real keyed VNI, i.e. an
    attacker who knows the key), to where workers send it: the EIP of that family (the routers deliver it to the
    member carrying it), and to every gateway's uplink address (gateways take tunnel packets only to their EIPs
    and own member address: `drop_tunnel_destination`)."""
    worker = system.nodes[victim.worker]
    inner_dst = EXTERNAL_V4 if version == 4 else EXTERNAL_V6
    inner_src = str(system.nodes[victim.lab_pod].address(version))
    eip = DEFAULT_EIP_V4 if version == 4 else DEFAULT_EIP_V6
    targets = [eip, *(str(system.nodes[gw].address(version, "eth1")) for gw in system.gateways)]
    port = tunnel_port(system, system.gateways[0])
    for vni in (keyed_vni(system, victim.worker),) if vnis is None else tuple(vnis):
        for outer_dst in targets:
            forge_vxlan(system, origin, outer_src=str(worker.address(version, "eth1")), outer_dst=outer_dst,
                        port=port, vni=vni, inner_src=inner_src, inner_dst=inner_dst, tag=tag)


@pytest.fixture(scope="module")
def forged_vxlan_works(system: System, witness: Witness, victim: Victim) -> None:
    """The positive control: the crafted packet, sent by the real worker (the true outer source), is decapsulated,
    SNATed and reaches the server with the EIP. Without this, every "not seen" below could be a malformed packet."""
    for version, eip in ((4, DEFAULT_EIP_V4), (6, DEFAULT_EIP_V6)):
        tag = new_tag(f"control{version}")
        send_forged_to_every_gateway(system, victim.worker, victim, version, tag)
        seen = wait_until(lambda t=tag: tagged(witness, t), timeout=15, interval=0.2,  # type: ignore[misc]
                          what=f"the real worker's crafted IPv{version} VXLAN packet at the external server")
        assert {e["source"] for e in seen} == {eip}, seen


def assert_blocked(system: System, w: Witness, tags: dict[str, str], before: dict[str, int], what: str,
                   victim: Victim) -> dict[str, int]:
    """Wait for a drop counter to move (the attack was stopped somewhere), then check, after the victim's own
    traffic has gone through the same path, that the server never saw the tagged packets. Returns the drops."""
    nodes = watched_nodes(system)
    poll_until(lambda: moved(before, drops(system, nodes)) or any(tagged(w, t) for t in tags.values()),
               timeout=DROP_WAIT_S, interval=0.3)
    # the victim's real traffic on the same path: whatever the attack could still do has happened by now
    expect_source(system, victim.lab_pod, DEFAULT_EIP_V4)
    expect_source(system, victim.lab_pod, DEFAULT_EIP_V6, version=6)
    stopped = moved(before, drops(system, nodes))
    leaked = {name: [e["source"] for e in tagged(w, t)] for name, t in tags.items()}
    assert not any(leaked.values()), f"{what}: the external server saw the forged traffic: {leaked}"
    assert stopped, f"{what}: not seen, but no drop counter moved anywhere ({', '.join(nodes)})"
    return stopped


# ---- A01: forged VXLAN -------------------------------------------------------------------------------------------
def forged_vxlan_case(system: System, witness: Witness, victim: Victim, origin: str, antispoofing: bool) -> None:
    node = {"outside": _ext(system), "cluster-lan": _node_of_role(system, "kube-api"),
            "pod": next(p for p in system.pods if p != victim.lab_pod and system.nodes[p].worker == victim.worker)}[
        origin]
    before = drops(system, watched_nodes(system))
    tags = {f"v{v}": new_tag(f"forged{v}") for v in (4, 6)}
    # an outsider (and a pod: it cannot read EgressGateway objects) knows the worker's address, the pod IP and the
    # spec VNI, not the instance's key: it tries the spec VNI and a few random ones. A cluster LAN host gets the real
    # keyed VNI (it may sniff the underlay): the LAN's anti-spoofing must stop it even then.
    real = keyed_vni(system, victim.worker)
    guesses = [SPEC_VNI, *(v for v in (random.randrange(1, 1 << 24) for _ in range(3)) if v != real)]
    for v in (4, 6):
        send_forged_to_every_gateway(system, node, victim, v, tags[f"v{v}"],
                                     vnis=guesses if origin in ("outside", "pod") else None)
    stopped = assert_blocked(system, witness, tags, before, f"forged VXLAN from {origin} ({node})", victim)
    if origin == "outside" and not antispoofing:
        # nothing upstream stops it: the gateways' keyed-VNI admission does, and counts it
        assert any(k.endswith(":drop_tunnel_vni") for k in stopped), stopped
    if origin == "pod":
        # the pod's own worker stops a pod's tunnel packets toward the EIPs before they leave the node
        assert stopped.get(f"{victim.worker}:egressgw:drop_pod_tunnel", 0) > 0, stopped
    print(f"\nA01 {origin} antispoofing={'on' if antispoofing else 'off'}: dropped at {stopped}")


@pytest.mark.parametrize("origin", ["outside", "pod"])
def test_a01_forged_vxlan_with_a_worker_source_never_leaves_with_the_eip(
        system: System, witness: Witness, victim: Victim, forged_vxlan_works: None, antispoofing: bool,
        origin: str) -> None:
    forged_vxlan_case(system, witness, victim, origin, antispoofing)


def test_a01_forged_vxlan_from_the_cluster_lan_with_the_lans_antispoofing(
        system: System, witness: Witness, victim: Victim, forged_vxlan_works: None) -> None:
    """Without the LAN's anti-spoofing, a cluster LAN host impersonating a worker over plain VXLAN reaches the
    gateway through the same router and next hop as the worker itself: out of what VXLAN can tell apart
    (docs/security.md: the LAN must provide it, or use WireGuard). With it on, the forged packet never leaves."""
    try:
        set_antispoofing(system, True)
        forged_vxlan_case(system, witness, victim, "cluster-lan", True)
    finally:
        restore_lab_antispoofing(system)


# ---- A02: a pod borrowing a selected pod's source address --------------------------------------------------------
@pytest.mark.parametrize("proto", ["udp", "tcp-syn"])
def test_a02_unselected_pod_using_a_selected_pods_ip(system: System, witness: Witness, victim: Victim,
                                                     proto: str) -> None:
    thief = next(p for p in system.pods if p != victim.lab_pod and system.nodes[p].worker == victim.worker)
    eips = {DEFAULT_EIP_V4, DEFAULT_EIP_V6}
    sport = 40000 + uuid.uuid4().int % 20000

    def send(node: str, version: int, tag: str) -> None:
        src = str(system.nodes[victim.lab_pod].address(version))
        dst = EXTERNAL_V4 if version == 4 else EXTERNAL_V6
        system.lab.exec(node, system.python_module(
            "lab.attack", "spoof", "--src", src, "--dst", dst, "--proto", proto, "--sport", str(sport + version),
            "--dport", str(PORT), "--payload", tag, "--count", "5", "--interval", "0.02"))

    def syns_from(since: int, sources: set[str], version: int) -> list[dict[str, Any]]:
        return [e for e in witness.wire(since) if e["proto"] == "tcp" and e["port"] == PORT
                and e["source"] in sources and ipaddress.ip_address(e["source"]).version == version]

    # positive control: the same packets from the selected pod itself leave with the EIP
    for v in (4, 6):
        tag = new_tag(f"own{v}")
        mark = max((e["seq"] for e in witness.wire()), default=0)
        send(victim.lab_pod, v, tag)
        if proto == "udp":
            wait_until(lambda t=tag: tagged(witness, t), timeout=15, interval=0.2,  # type: ignore[misc]
                       what=f"the selected pod's own raw IPv{v} UDP at the server")
        else:
            wait_until(lambda m=mark, ver=v: syns_from(m, eips, ver), timeout=15,  # type: ignore[misc]
                       interval=0.2, what=f"the selected pod's own raw IPv{v} SYN at the server")
    mark = max((e["seq"] for e in witness.wire()), default=0)
    before = drops(system, watched_nodes(system))
    tags = {f"v{v}": new_tag(f"borrowed{v}") for v in (4, 6)}
    for v in (4, 6):
        send(thief, v, tags[f"v{v}"])
    what = f"{thief} sending {proto} as {victim.lab_pod}"
    stopped = assert_blocked(system, witness, tags, before, what, victim)
    if proto == "tcp-syn":
        own = pod_ips(system, victim.lab_pod)
        seen = [e for v in (4, 6) for e in syns_from(mark, eips | own, v)]
        assert not seen, f"{what}: the forged SYNs reached the server: {seen}"
    print(f"\nA02 {proto}: dropped at {stopped}")


# ---- A03: steering changes under server-push flows ---------------------------------------------------------------
class PushFlows:
    """Server-push clients (UDP and TCP, IPv4 and IPv6) running in one pod, each one long-lived flow."""

    def __init__(self, system: System, lab_pod: str) -> None:
        self.procs: dict[str, subprocess.Popen[str]] = {}
        for proto in ("udp", "tcp"):
            for server in (EXTERNAL_V4, EXTERNAL_V6):
                key = f"{proto}{4 if server == EXTERNAL_V4 else 6}"
                self.procs[key] = system.lab.popen(lab_pod, system.python_module(
                    "lab.extclient", "push", "--server", server, "--port", str(PUSH_PORT), "--proto", proto,
                    "--duration", "80"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self) -> dict[str, Any]:
        reports: dict[str, Any] = {}
        for key, proc in self.procs.items():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=15)
                reports[key] = json.loads(out) if out.strip() else {"error": err.strip()}
            except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                proc.kill()
                reports[key] = {"error": str(exc)}
        return reports


def pushes_from(w: Witness, sources: dict[str, str]) -> dict[str, int]:
    """Messages the push server received per flow kind (udp4...) from the expected source of that family."""
    counts = dict.fromkeys(sources, 0)
    for e in w.events():
        if not e["proto"].endswith("-push"):
            continue
        for key, src in sources.items():
            if e["proto"].startswith(key[:3]) and e["source"] == src:
                counts[key] += 1
    return counts


@pytest.mark.parametrize("change", ["policy-deleted", "label-changed", "moved-to-another-eip", "gateway-changed"])
def test_a03_server_push_flows_never_leak_the_pod_ip_when_steering_changes(
        system: System, scenario: Scenario, witness: Witness, change: str) -> None:
    subject, anchor = "w2p1", "w1p1"
    ns = scenario.namespace
    # the anchor (own namespace) keeps the default EIPs in use after the subject's steering ends or moves, so
    # pushes to them still reach a gateway (which must drop them) instead of dying at the router for want of a route
    anchor_ns = f"{ns}-anchor"
    system.ensure_namespace(anchor_ns)
    scenario.pod("anchor", anchor, {"app": "anchor"}, namespace=anchor_ns)
    scenario.pod("subject", subject, {"app": "push"})
    scenario.apply(policy_manifest(anchor_ns, "anchor", match_labels={"app": "anchor"}),
                   policy_manifest(ns, "p", match_labels={"app": "push"}))
    if change == "moved-to-another-eip":
        scenario.apply(policy_manifest(ns, "pm", match_labels={"app": "moved"},
                                       egress_ip={"ipv4": "203.0.113.205", "ipv6": "2001:db8:e1::205"}))
    if change == "gateway-changed":
        scenario.apply(gateway_manifest("egw-adv", pools_v4=("203.0.113.220-203.0.113.229",),
                                        pools_v6=("2001:db8:e1::220-2001:db8:e1::229",), default_v4="203.0.113.220",
                                        default_v6="2001:db8:e1::220", cluster_default=False))
    expect_source(system, subject, DEFAULT_EIP_V4)
    expect_source(system, subject, DEFAULT_EIP_V6, version=6)
    expect_source(system, anchor, DEFAULT_EIP_V4)
    witness.reset()
    eips = {"udp4": DEFAULT_EIP_V4, "tcp4": DEFAULT_EIP_V4, "udp6": DEFAULT_EIP_V6, "tcp6": DEFAULT_EIP_V6}
    nodes = [*system.gateways, system.nodes[subject].worker]
    flows = PushFlows(system, subject)
    reports: dict[str, Any] = {}
    try:
        wait_until(lambda: min(pushes_from(witness, eips).values()) >= 5, timeout=CONVERGE_S, interval=0.3,
                   what="every push flow acknowledged from the EIP",
                   describe=lambda: pushes_from(witness, eips))
        before = drops(system, nodes)
        if change == "policy-deleted":
            system.delete("EgressPolicy", "p", ns)
            after_change = node_ip(system, subject)
        elif change == "label-changed":
            system.label_pod(ns, "subject", {"app": "other"})
            after_change = node_ip(system, subject)
        elif change == "moved-to-another-eip":
            system.label_pod(ns, "subject", {"app": "moved"})
            after_change = "203.0.113.205"
        else:
            # egressGatewayName is immutable: the gateway changes through the namespace's default gateway
            system.ensure_namespace(ns, {"egressgw.io/default-gateway": "egw-adv"})

            def moved_eip() -> str:
                eip = str(((system.get("EgressPolicy", "p", ns).get("status") or {}).get("eip") or {}).get("ipv4"))
                return eip if eip.startswith("203.0.113.22") else ""

            after_change = wait_until(moved_eip, timeout=CONVERGE_S, interval=0.3,
                                      what="policy p's status to name an EIP of egw-adv (203.0.113.220-229)",
                                      describe=lambda: system.get("EgressPolicy", "p", ns).get("status"))
        expect_source(system, subject, after_change)  # the change reached the data path (new flows)
        # the pushes keep coming; judge once enough of them had to be stopped somewhere
        poll_until(lambda: sum(moved(before, drops(system, nodes)).values()) >= PUSHES_STOPPED,
                   timeout=DROP_WAIT_S, interval=0.3)
        stopped = moved(before, drops(system, nodes))
    finally:
        reports = flows.stop()
        witness.push_stop()
    own = pod_ips(system, subject)
    leaked = [e for e in witness.wire() if e["source"] in own]
    print(f"\nA03 {change}: dropped at {stopped}; clients {reports}")
    assert not leaked, (f"{change}: the pod's own IP reached the external side {len(leaked)} times "
                        f"(first: {leaked[:3]}); clients: {reports}")
    assert sum(stopped.values()) >= PUSHES_STOPPED, (
        f"{change}: the server kept pushing, but only {stopped} were counted as dropped (gateways and "
        f"{system.nodes[subject].worker}); clients: {reports}")


# ---- A04: a foreign NAT chain at the agent's old priority ---------------------------------------------------------
FOREIGN_TABLE = "egt_foreign"


def add_foreign_masquerade(system: System, worker: str, priority: str = "srcnat - 10") -> None:
    """A CNI/firewall-style chain masquerading everything the worker's pods send (by default at srcnat - 10)."""
    nets = [ifc.network for name, ifc in system.nodes[worker].addresses if name == "cni0"]
    rules = "\n".join(f"  {'ip' if n.version == 4 else 'ip6'} saddr {n} oifname != \"lo\" masquerade" for n in nets)
    system.lab.exec(worker, ["nft", "-f", "-"], input=(
        f"table inet {FOREIGN_TABLE} {{\n chain postrouting {{\n"
        f"  type nat hook postrouting priority {priority}; policy accept;\n{rules}\n }}\n}}\n"))


def agent_log(system: System, worker: str) -> str:
    path = system.lab.state_dir / "logs" / f"{worker}.egressgw-agent.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize("when", ["after-agent-start", "before-agent-start"])
def test_a04_foreign_nat_chain_at_the_agents_old_priority(system: System, scenario: Scenario, witness: Witness,
                                                          when: str) -> None:
    lab_pod = "w1p2"
    worker = system.nodes[lab_pod].worker
    scenario.pod("web", lab_pod, {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, lab_pod, DEFAULT_EIP_V4)
    stopped_agent = False
    try:
        if when == "after-agent-start":
            add_foreign_masquerade(system, worker)
        else:  # a node where the foreign chain was there first: our table is created after it
            system.stop_service(worker)
            stopped_agent = True
            system.lab.exec(worker, ["nft", "delete", "table", "inet", "egressgw"], check=False)
            add_foreign_masquerade(system, worker)
            system.start_agent(worker)
            stopped_agent = False
        expect_source(system, lab_pod, DEFAULT_EIP_V4)
        expect_source(system, lab_pod, DEFAULT_EIP_V6, version=6)
        expect_source(system, lab_pod, DEFAULT_EIP_V4)  # and TCP
        assert system.seen_source(lab_pod, proto="tcp") == DEFAULT_EIP_V4
    finally:
        system.lab.exec(worker, ["nft", "delete", "table", "inet", FOREIGN_TABLE], check=False)
        if stopped_agent:
            system.start_agent(worker)


def spoofed_counts(system: System, worker: str) -> int:
    """Packets the gateways dropped as spoofed and attributed to `worker` (their `spoofed_<node>` counters)."""
    total = 0
    for gw in system.gateways:
        doc = json.loads(str(system.lab.exec(gw, ["nft", "-j", "list", "counters", "table", "inet", "egressgw"],
                                             check=False).stdout or '{"nftables": []}'))["nftables"]
        total += sum(int(c["packets"]) for item in doc if (c := item.get("counter"))
                     and c["name"].startswith("spoofed_") and worker in c["name"])
    return total


def test_a04_nat_chain_ahead_of_the_agent_is_reported_never_silent(system: System, scenario: Scenario,
                                                                    witness: Witness) -> None:
    """A chain deliberately placed before the agent's identity SNAT can still masquerade steered packets; nothing
    can stop that, so it must be loud: the agent names the chain, the gateways count the spoofed drops against the
    worker, and the traffic never leaves with the node address in place of the EIP."""
    lab_pod = "w1p2"
    worker = system.nodes[lab_pod].worker
    scenario.pod("web", lab_pod, {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, lab_pod, DEFAULT_EIP_V4)
    log_from = len(agent_log(system, worker))
    spoofed_before = spoofed_counts(system, worker)
    try:
        # the only room ahead of the agent's SNAT (WORKER_SNAT_PRIORITY): after conntrack (-200), which the kernel
        # requires of a nat chain
        add_foreign_masquerade(system, worker, str(WORKER_SNAT_PRIORITY - 5))
        wait_until(lambda: FOREIGN_TABLE in agent_log(system, worker)[log_from:], timeout=CONVERGE_S, interval=0.5,
                   what=f"the agent on {worker} to report the NAT chain of {FOREIGN_TABLE} ahead of its SNAT")

        def counted() -> bool:
            got = system.seen_source(lab_pod, timeout=0.5)
            assert got in ("", DEFAULT_EIP_V4), f"the masqueraded steered traffic left with {got}"
            return spoofed_counts(system, worker) > spoofed_before

        wait_until(counted, timeout=CONVERGE_S, interval=0.2,
                   what=f"the gateways to count spoofed tunnel traffic against {worker}")
    finally:
        system.lab.exec(worker, ["nft", "delete", "table", "inet", FOREIGN_TABLE], check=False)
    expect_source(system, lab_pod, DEFAULT_EIP_V4)


# ---- A05: IPv6 pod-to-pod with IPv4-only pod CIDRs ---------------------------------------------------------------
def test_a05_ipv6_pod_to_pod_never_goes_through_the_gateway(system: System, scenario: Scenario) -> None:
    client, server_pod = "w1p1", "w2p2"
    pod_cidrs = {w: list(system._core.read_node(w).spec.pod_cid_rs or []) for w in system.workers}
    assert all(c and all(ipaddress.ip_network(n).version == 4 for n in c) for c in pod_cidrs.values()), (
        f"the precondition (Nodes list only IPv4 pod CIDRs) does not hold in this lab: {pod_cidrs}")
    scenario.pod("web", client, {"app": "web"})
    scenario.pod("peer", server_pod, {"app": "peer"})  # the cluster reports the peer pod (and its IPv6 address)
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, client, DEFAULT_EIP_V6, version=6)
    server = str(system.nodes[server_pod].address(6))
    own = str(system.nodes[client].address(6))
    system.lab.start_daemon(server_pod, "extserver-pod6", system.python_module("lab.extserver", "--no-icmp"))
    try:
        # the client's agent learns the peer's address (a pod IP outside every pod CIDR, on another node)
        wait_until(lambda: system.seen_source(client, server=server, version=6) == own, timeout=CONVERGE_S,
                   interval=0.3, what=f"the in-cluster server {server} to see the client's own address")
        before = {gw: DataPathCounters.read(system, gw) for gw in system.gateways}
        got = system.seen_source(client, server=server, version=6)
        got_tcp = system.seen_source(client, server=server, version=6, proto="tcp")
        after = {gw: DataPathCounters.read(system, gw) for gw in system.gateways}
    finally:
        system.lab.stop_daemon(server_pod, "extserver-pod6")
    assert (got, got_tcp) == (own, own), f"the peer pod saw {got} (udp) / {got_tcp} (tcp), expected {own}"
    changed = {gw: DataPathCounters.diff(before[gw], after[gw]) for gw in system.gateways}
    assert not any(changed.values()), f"pod-to-pod IPv6 went through a gateway: {changed}"


class DataPathCounters:
    """A gateway's IPv6 EIP counters and its tunnel-side drop counters: what pod-to-pod traffic through it would
    move (not `drop_eip_unsolicited`: inbound traffic from outside to an EIP, e.g. an earlier case's pushing
    server, says nothing about pod-to-pod traffic)."""

    @staticmethod
    def read(system: System, gw: str) -> dict[str, int]:
        doc = json.loads(str(system.lab.exec(gw, ["nft", "-j", "list", "counters", "table", "inet", "egressgw"],
                                             check=False).stdout or '{"nftables": []}'))["nftables"]
        return {c["name"]: int(c["packets"]) for item in doc if (c := item.get("counter"))
                and ((c["name"].startswith("drop_") and c["name"] != "drop_eip_unsolicited") or "2001" in c["name"])}

    @staticmethod
    def diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}

