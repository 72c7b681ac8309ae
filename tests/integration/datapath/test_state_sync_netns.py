"""Conntrack state sync with the real conntrackd, three members in network namespaces (prefix `egt-ss-`).

Each member runs the product's `StateSyncDaemons` (one conntrackd per peer, channels from `plan_state_sync`), inside
its namespace (the binary is a wrapper that enters it). A flow is created on a member by real SNATed traffic (a
socket bound to a "pod" address on the member, our test nft table marking it like the gateway's forward chain does:
ct mark + `ct event set`, SNAT to the EIP in postrouting). Asserted:
- the entry appears on the other members with the same NAT binding (EIP and port) and ct mark, IPv4 and IPv6
  flows, over IPv4 sync channels and over IPv6 ones (the members' sync addresses IPv6: `mesh6`);
- a member whose daemons restart gets entries it missed by the full resync (`conntrackd -n`);
- a restarting member's announcement gate (`GatewayStateSync.ready`) opens because every resync is done, an idle
  peer's (nothing to send) included, not because the gate's timeout ran out;
- a member that disappears is reported lost and does not keep the others from syncing;
- the gateway nft table's guard: a foreign sender to the sync port is counted (`drop_sync_foreign`) and dropped,
  while the peers' channel keeps working.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

import pytest

from appliance.core.intent import GatewayInstance, Intent
from appliance.core.model import Member
from appliance.core.waiting import wait_until
from appliance.datapath.apply.state_sync import ResyncState, StateSyncDaemons
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway
from appliance.datapath.plan.gateway_nft import SYNC_EVENTS, gateway_table
from appliance.datapath.plan.nft_rendering import render_full
from appliance.datapath.plan.state_sync import StateSyncSettings, plan_state_sync
from appliance.gateway.state_sync import GatewayStateSync, ReadyReason

pytestmark = pytest.mark.netns

PREFIX = "egt-ss-"
BRIDGE_NS = f"{PREFIX}br"
FOREIGN_NS = f"{PREFIX}x"
MEMBERS = {"m1": 1, "m2": 2, "m3": 3}
EIP4, EIP6 = "203.0.113.10", "2001:db8:e5::10"
POD4, POD6 = "100.64.7.2", "2001:db8:7::2"
SERVER4, SERVER6 = "198.51.100.200", "2001:db8:55::200"
MARK = 0x00E10005
TEST_TABLE = f"""table inet egt_ss {{
  chain out {{
    type filter hook output priority filter; policy accept;
    ip saddr {POD4} ct state new ct mark set {MARK:#x} ct event set {SYNC_EVENTS}
    ip6 saddr {POD6} ct state new ct mark set {MARK:#x} ct event set {SYNC_EVENTS}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {POD4} meta l4proto udp snat ip to {EIP4}:20000-30000
    ip6 saddr {POD6} meta l4proto udp snat ip6 to [{EIP6}]:20000-30000
  }}
}}
"""


def sh(*argv: str, ns: str | None = None, check: bool = True) -> str:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {proc.stderr.strip()}")
    return proc.stdout


def ns_of(name: str) -> str:
    return f"{PREFIX}{name}"


def cleanup() -> None:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX):
            subprocess.run(["ip", "netns", "pids", name], capture_output=True, check=False)
            for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                                      check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def add_port(ns: str, n: int) -> None:
    """veth `ss<n>` in `ns`, its peer on the bridge."""
    sh("ip", "link", "add", "ss0", "netns", ns, "type", "veth", "peer", "name", f"ssb{n}", "netns", BRIDGE_NS)
    sh("ip", "link", "set", f"ssb{n}", "master", "br0", "up", ns=BRIDGE_NS)
    sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "link", "set", "ss0", "up", ns=ns)
    sh("ip", "addr", "add", f"198.51.100.{n}/24", "dev", "ss0", ns=ns)
    sh("ip", "addr", "add", f"2001:db8:55::{n}/64", "dev", "ss0", "nodad", ns=ns)


def member_address(name: str, family: int) -> str:
    return f"198.51.100.{MEMBERS[name]}" if family == 4 else f"2001:db8:55::{MEMBERS[name]}"


def intent(names: tuple[str, ...] = tuple(MEMBERS), family: int = 4) -> Intent:
    members = tuple(Member(name=n, address=ip_address(member_address(n, family))) for n in names)
    inst = GatewayInstance(name="gw", members=members, eips=(ip_address(EIP4), ip_address(EIP6)), ranking=())
    return Intent(steerings=(), outcomes=(), instances=(inst,), cluster_cidrs=())


@dataclass
class Node:
    name: str
    ns: str
    state: Path
    settings: StateSyncSettings
    daemons: StateSyncDaemons | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def make_daemons(self) -> StateSyncDaemons:
        ns = self.ns
        return StateSyncDaemons(
            self.state, self.settings, member=self.name,
            interface_of=lambda peer, local: sh("ip", "-j", "route", "get", peer, "from", local, ns=ns)
            .split('"dev":"')[1].split('"')[0],
        )

    def start(self, it: Intent) -> None:
        self.daemons = self.make_daemons()
        _changes, failures = self.daemons.apply(plan_state_sync(it, member=self.name, settings=self.settings))
        assert not failures, failures
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.daemons.run, args=(self.stop, 0.1), daemon=True)
        self.thread.start()

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
        if self.daemons is not None:
            self.daemons.stop_all()

    def peer(self, name: str) -> object:
        assert self.daemons is not None
        return next(s for s in self.daemons.states() if s.peer == name)


def _mesh(tmp_path: Path, family: int) -> Iterator[dict[str, Node]]:
    """Three members on one bridge, their sync addresses (member addresses) of `family`."""
    if shutil.which("conntrackd") is None or shutil.which("conntrack") is None:
        pytest.fail("conntrackd and conntrack are required (apt install conntrackd conntrack)")
    cleanup()
    nodes: dict[str, Node] = {}
    try:
        sh("ip", "netns", "add", BRIDGE_NS)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=BRIDGE_NS)
        sh("ip", "link", "set", "br0", "up", ns=BRIDGE_NS)
        for name, n in MEMBERS.items():
            ns = ns_of(name)
            sh("ip", "netns", "add", ns)
            add_port(ns, n)
            sh("ip", "addr", "add", f"{POD4}/32", "dev", "lo", ns=ns)
            sh("ip", "addr", "add", f"{POD6}/128", "dev", "lo", ns=ns)
            sh("sysctl", "-q", "net.netfilter.nf_conntrack_events=0", ns=ns)
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=TEST_TABLE, text=True, check=True)
            wrapper = tmp_path / f"conntrackd-{name}"
            wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {ns} conntrackd \"$@\"\n")
            wrapper.chmod(0o755)
            settings = StateSyncSettings(binary=str(wrapper), resync_timeout_s=30.0, peer_timeout_s=3.0,
                                         stats_interval_s=0.3)
            nodes[name] = Node(name=name, ns=ns, state=tmp_path / name, settings=settings)
        for n in MEMBERS:  # IPv6 addresses usable (no DAD; the neighbours answer) before the daemons bind them
            wait_until(lambda n=n: "tentative" not in sh("ip", "-6", "addr", "show", "dev", "ss0", ns=ns_of(n)),
                       timeout=10, what=f"{n}'s IPv6 address usable")
        for node in nodes.values():
            node.start(intent(family=family))
        for node in nodes.values():
            for other in MEMBERS:
                if other != node.name:
                    wait_until(lambda n=node, o=other: n.peer(o).up, timeout=30, what=f"{node.name} hears {other}")
        yield nodes
    finally:
        for node in nodes.values():
            with contextlib.suppress(Exception):
                node.halt()
        cleanup()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[dict[str, Node]]:
    yield from _mesh(tmp_path, 4)


@pytest.fixture
def mesh6(tmp_path: Path) -> Iterator[dict[str, Node]]:
    yield from _mesh(tmp_path, 6)


def send_udp(ns: str, src: str, dst: str, sport: int) -> None:
    family = "socket.AF_INET6" if ":" in src else "socket.AF_INET"
    code = (f"import socket; s = socket.socket({family}, socket.SOCK_DGRAM); s.bind(('{src}', {sport})); "
            f"s.sendto(b'x', ('{dst}', 53))")
    sh("python3", "-c", code, ns=ns)


def entry(ns: str, src: str, sport: int) -> dict[str, str] | None:
    """The UDP conntrack entry from `src`:`sport` in `ns`: reply dst (the SNAT address), reply dport, mark."""
    fam = "ipv6" if ":" in src else "ipv4"
    out = sh("conntrack", "-L", "-f", fam, "-p", "udp", "-s", src, "--sport", str(sport), "-o", "extended",
             ns=ns, check=False)
    for line in out.splitlines():
        m = re.search(r"src=\S+ dst=\S+ sport=\d+ dport=\d+ .*?src=\S+ dst=(\S+) sport=\d+ dport=(\d+).*mark=(\d+)",
                      line)
        if m:
            return {"snat": m.group(1), "port": m.group(2), "mark": m.group(3)}
    return None


@pytest.mark.parametrize(("pod", "server", "eip"), [(POD4, SERVER4, EIP4), (POD6, SERVER6, EIP6)])
def test_entry_reaches_every_peer_with_nat_binding_and_mark(mesh: dict[str, Node], pod: str, server: str,
                                                            eip: str) -> None:
    send_udp(mesh["m1"].ns, pod, server, 40001)
    origin = entry(mesh["m1"].ns, pod, 40001)
    assert origin is not None and ip_address(origin["snat"]) == ip_address(eip) and origin["mark"] == str(MARK)
    for peer in ("m2", "m3"):
        wait_until(lambda p=peer: entry(mesh[p].ns, pod, 40001) == origin, timeout=20,
                   what=f"the entry on {peer} with the same NAT binding and mark")
    assert mesh["m1"].daemons is not None
    wait_until(lambda: all(s.stats.sent > 0 for s in mesh["m1"].daemons.states()), timeout=10,  # type: ignore[union-attr]
               what="m1 counts what it sent")


@pytest.mark.parametrize(("pod", "server", "eip"), [(POD4, SERVER4, EIP4), (POD6, SERVER6, EIP6)])
def test_ipv6_sync_channels_carry_the_nat_binding_and_mark(mesh6: dict[str, Node], pod: str, server: str,
                                                           eip: str) -> None:
    m1 = mesh6["m1"]
    assert m1.daemons is not None
    plan = plan_state_sync(intent(family=6), member="m1", settings=m1.settings)
    assert plan.channels and all(c.local_address.version == 6 and c.peer_address.version == 6 for c in plan.channels)
    assert all(s.up and ":" in s.address for s in m1.daemons.states())
    send_udp(m1.ns, pod, server, 40041)
    origin = entry(m1.ns, pod, 40041)
    assert origin is not None and ip_address(origin["snat"]) == ip_address(eip) and origin["mark"] == str(MARK)
    for peer in ("m2", "m3"):
        wait_until(lambda p=peer: entry(mesh6[p].ns, pod, 40041) == origin, timeout=20,
                   what=f"the entry on {peer} over IPv6 with the same NAT binding and mark")


def test_ipv6_restarted_member_resyncs_and_the_guard_holds(mesh6: dict[str, Node]) -> None:
    m1, m2 = mesh6["m1"], mesh6["m2"]
    m2.halt()
    send_udp(m1.ns, POD4, SERVER4, 40042)
    origin = entry(m1.ns, POD4, 40042)
    m2.start(intent(family=6))
    wait_until(lambda: entry(m2.ns, POD4, 40042) == origin, timeout=30, what="m2 got the missed entry by resync")
    # the guard with IPv6 peers: a foreign IPv6 sender to m1's sync port is counted and dropped
    settings = StateSyncSettings()
    plan = plan_gateway(intent(family=6), member="m1", workers={}, settings=GatewaySettings(state_sync=settings))
    subprocess.run(["ip", "netns", "exec", m1.ns, "nft", "-f", "-"], input=render_full(gateway_table(plan)),
                   text=True, check=True)
    try:
        sh("ip", "netns", "add", FOREIGN_NS)
        add_port(FOREIGN_NS, 9)
        wait_until(lambda: "tentative" not in sh("ip", "-6", "addr", "show", "dev", "ss0", ns=FOREIGN_NS),
                   timeout=10, what="the foreign IPv6 address usable")
        port = plan_state_sync(intent(family=6), member="m1", settings=settings).channel("m2").port  # type: ignore[union-attr]
        dropped = counter(m1.ns, "drop_sync_foreign")
        for _ in range(5):
            code = ("import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
                    f"s.sendto(b'forged state', ('2001:db8:55::1', {port}))")
            sh("python3", "-c", code, ns=FOREIGN_NS)
        wait_until(lambda: counter(m1.ns, "drop_sync_foreign") >= dropped + 5, timeout=10,
                   what="the foreign IPv6 packets counted and dropped")
        send_udp(m2.ns, POD6, SERVER6, 40043)
        wait_until(lambda: entry(m1.ns, POD6, 40043) is not None, timeout=20, what="m2's entry on m1 over IPv6")
    finally:
        subprocess.run(["ip", "netns", "exec", m1.ns, "nft", "delete", "table", "inet", "egressgw"],
                       capture_output=True, check=False)


def test_unmarked_flows_are_not_synced(mesh: dict[str, Node]) -> None:
    sh("ip", "addr", "add", "100.64.7.3/32", "dev", "lo", ns=mesh["m1"].ns)
    send_udp(mesh["m1"].ns, "100.64.7.3", SERVER4, 40002)  # not marked: no event, never synced
    send_udp(mesh["m1"].ns, POD4, SERVER4, 40003)  # marked: synced
    wait_until(lambda: entry(mesh["m2"].ns, POD4, 40003) is not None, timeout=20, what="the marked flow on m2")
    assert entry(mesh["m1"].ns, "100.64.7.3", 40002) is not None
    assert entry(mesh["m2"].ns, "100.64.7.3", 40002) is None


def test_restarted_member_resyncs(mesh: dict[str, Node]) -> None:
    m2 = mesh["m2"]
    m2.halt()
    send_udp(mesh["m1"].ns, POD4, SERVER4, 40010)  # created while m2's daemons are down
    origin = entry(mesh["m1"].ns, POD4, 40010)
    assert origin is not None and entry(m2.ns, POD4, 40010) is None
    m2.start(intent())
    wait_until(lambda: entry(m2.ns, POD4, 40010) == origin, timeout=30, what="m2 got the missed entry by resync")
    assert m2.daemons is not None
    # m1 answered with the entry: that resync is done (m3 holds no flow and may send nothing at all: its resync
    # is left to the timeout, which only bounds how long a starting member waits before announcing)
    daemons = m2.daemons
    wait_until(lambda: {s.peer: s.resync for s in daemons.states()}.get("m1") == ResyncState.DONE,
               timeout=30, what="m2's resync from m1 done")
    assert daemons.last_resync_seconds is not None


def test_an_idle_peer_does_not_hold_up_announcing(mesh: dict[str, Node]) -> None:
    """m2 restarts as the gateway service runs it (`GatewayStateSync`): m1 holds a flow m2 missed, m3 holds none
    and has nothing to send. The gate opens because both resyncs are done (not by its timeout, 30 s + start here),
    and by then m1's entry is in m2's table."""
    m2 = mesh["m2"]
    m2.halt()
    send_udp(mesh["m1"].ns, POD4, SERVER4, 40015)
    origin = entry(mesh["m1"].ns, POD4, 40015)
    assert origin is not None  # m3 SNATs nothing itself: its daemon's cache is empty, its answer nothing
    daemons = m2.make_daemons()
    gate = GatewayStateSync(m2.settings, member="m2", state_dir=m2.state, daemons=daemons)
    m2.daemons = daemons
    gate.converge(intent())
    gate.start()
    try:
        wait_until(gate.ready, timeout=25, what="m2's announcement gate to open")
        assert gate.ready_reason == ReadyReason.RESYNC_DONE
        assert {s.peer: s.resync for s in daemons.states()} == {"m1": ResyncState.DONE, "m3": ResyncState.DONE}
        assert entry(m2.ns, POD4, 40015) == origin
    finally:
        gate.stop()


def test_a_lost_peer_does_not_block_the_others(mesh: dict[str, Node]) -> None:
    mesh["m3"].halt()
    sh("ip", "link", "set", "ss0", "down", ns=mesh["m3"].ns)
    wait_until(lambda: not mesh["m1"].peer("m3").up, timeout=20, what="m1 reports m3 lost")  # type: ignore[attr-defined]
    send_udp(mesh["m1"].ns, POD4, SERVER4, 40020)
    wait_until(lambda: entry(mesh["m2"].ns, POD4, 40020) is not None, timeout=20, what="m2 still gets m1's entries")
    assert mesh["m1"].peer("m2").up  # type: ignore[attr-defined]
    # a member leaving the instance: its channel goes, the other stays (same daemon, not restarted)
    m1 = mesh["m1"]
    assert m1.daemons is not None
    before = next(s for s in m1.daemons.states() if s.peer == "m2")
    m1.daemons.apply(plan_state_sync(intent(("m1", "m2")), member="m1", settings=m1.settings))
    wait_until(lambda: [s.peer for s in m1.daemons.states()] == ["m2"], timeout=10,  # type: ignore[union-attr]
               what="m1 keeps only the channel to m2")
    after = next(s for s in m1.daemons.states() if s.peer == "m2")
    assert after.port == before.port and after.running and after.stats.packets_sent >= before.stats.packets_sent


def counter(ns: str, name: str) -> int:
    out = sh("nft", "list", "counter", "inet", "egressgw", name, ns=ns)
    m = re.search(r"packets (\d+)", out)
    assert m is not None, out
    return int(m.group(1))


def test_sync_port_takes_peers_only(mesh: dict[str, Node]) -> None:
    m1 = mesh["m1"]
    settings = StateSyncSettings()
    plan = plan_gateway(intent(), member="m1", workers={}, settings=GatewaySettings(state_sync=settings))
    table = render_full(gateway_table(plan))
    subprocess.run(["ip", "netns", "exec", m1.ns, "nft", "-f", "-"], input=table, text=True, check=True)
    try:
        sh("ip", "netns", "add", FOREIGN_NS)
        add_port(FOREIGN_NS, 9)
        port = plan_state_sync(intent(), member="m1", settings=settings).channel("m2").port  # type: ignore[union-attr]
        assert m1.daemons is not None
        received = m1.peer("m2").stats.packets_received  # type: ignore[attr-defined]
        dropped = counter(m1.ns, "drop_sync_foreign")
        for _ in range(5):
            code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    f"s.sendto(b'forged state', ('198.51.100.1', {port}))")
            sh("python3", "-c", code, ns=FOREIGN_NS)
        wait_until(lambda: counter(m1.ns, "drop_sync_foreign") >= dropped + 5, timeout=10,
                   what="the foreign packets counted and dropped")
        # the peers' channel still passes: m1 keeps receiving from m2 and an entry still syncs
        wait_until(lambda: m1.peer("m2").stats.packets_received > received, timeout=20,  # type: ignore[attr-defined]
                   what="m2's packets still reach m1")
        send_udp(mesh["m2"].ns, POD4, SERVER4, 40030)
        wait_until(lambda: entry(m1.ns, POD4, 40030) is not None, timeout=20, what="m2's entry on m1")
        assert counter(m1.ns, "drop_sync_foreign") == dropped + 5
    finally:
        subprocess.run(["ip", "netns", "exec", m1.ns, "nft", "delete", "table", "inet", "egressgw"],
                       capture_output=True, check=False)
