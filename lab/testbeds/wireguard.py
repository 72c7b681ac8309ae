"""A namespace testbed for the WireGuard tunnel: pod - worker - router - gw1/gw2 (sharing the instance key) - external.

Used by the WireGuard integration tests and `run_wireguard_bench`. Everything lives in namespaces named
`egt-wg-<token>-<role>`; interface names that are host-wide (wireguard-go's /var/run/wireguard/IF.sock) carry the
`egt-wg-` prefix and a hash over node names that include the token. `close()` deletes our WireGuard interfaces
(which ends their wireguard-go), kills the processes it started and deletes the namespaces, even after failures.

Addresses (the project's lab plan): worker underlay 100.127.0.11 (router .1), gateway uplinks 198.51.100.11/.12
(router .1, a bridge in the router namespace), external 203.0.113.2 (router .1/28), EIP 203.0.113.130 (+
2001:db8:e1::2) on each gateway's `lo`, pod 100.64.1.10 (+ 2001:db8:64:1::10) behind the worker. Until the shared
data path is wired in, the gateways SNAT with a stand-in nftables table (`egt_wg_snat`) and the worker steers the
pod with a source rule into table 100 whose default route is the planned WireGuard device.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

from appliance.core.intent import GatewayInstance, Intent, Steering
from appliance.core.model import IPAddress, Member, Node, PolicyKind, PolicyRef, TunnelSpec, TunnelType
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.wireguard import WG_RUN_DIR, Backend, WireguardApplier, detect_backend
from appliance.datapath.apply.wireguard_keyfiles import local_keys, write_key_file
from appliance.datapath.plan.gateway import GatewayPlan, GatewaySettings, plan_gateway
from appliance.datapath.plan.wireguard import (
    WgSettings,
    WireguardPlan,
    interface_name,
    plan_gateway_wireguard,
    plan_worker_wireguard,
)
from appliance.datapath.plan.wireguard_keys import LocalKey, PrivateKey, PublicKey
from appliance.datapath.plan.worker import WorkerPlan, WorkerSettings, plan_worker

PREFIX = "egt-wg-"
EIP = IPv4Address("203.0.113.130")
EIP6 = IPv6Address("2001:db8:e1::2")
POD = IPv4Address("100.64.1.10")
POD6 = IPv6Address("2001:db8:64:1::10")
EXTERNAL = IPv4Address("203.0.113.2")
EXTERNAL6 = IPv6Address("2001:db8:203::2")
INSTANCE = "wgi"

_ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
while True:
    d, a = s.recvfrom(2048); s.sendto(d, a)
"""

_PROBE_CLIENT = """
import json, socket, sys, time, select
host, port, interval, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.connect((host, port)); s.setblocking(False)
got, sent, seq = {}, {}, 0
start = time.monotonic(); nxt = start
while time.monotonic() - start < duration:
    now = time.monotonic()
    if now >= nxt:
        seq += 1; sent[seq] = now
        try: s.send(str(seq).encode())
        except OSError: pass
        nxt += interval
    r, _, _ = select.select([s], [], [], max(0.0, nxt - time.monotonic()))
    while r:
        try: d = s.recv(64)
        except OSError: break
        got.setdefault(int(d), time.monotonic())
time.sleep(0.3)
while True:
    try: got.setdefault(int(s.recv(64)), time.monotonic())
    except OSError: break
lost = sorted(set(sent) - set(got)); run = best = 0; prev = None
for q in lost:
    run = run + 1 if prev == q - 1 else 1; best = max(best, run); prev = q
print(json.dumps({"sent": len(sent), "received": len(got), "lost": len(lost), "max_run": best,
                  "outage_ms": round(best * interval * 1000, 1)}))
"""


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(slots=True)
class WireguardTestbed:
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="egt-wg-")))
    backend: Backend = field(default_factory=detect_backend)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    instance_key: PrivateKey = field(default_factory=PrivateKey.generate)
    routed_to: int = 1
    #: the worker's underlay family: False = IPv4 (tunnel to the IPv4 EIP), True = IPv6 only (to the IPv6 EIP)
    v6_underlay: bool = False
    #: True = the shared data path (planning_worker/planning_gateway + DataPathApplier) steers, holds the EIPs and
    #: SNATs; False = the stand-ins (a source rule on the worker, a small nft SNAT table on the gateways)
    datapath: bool = False

    # ----- names -----

    def ns(self, role: str) -> str:
        return f"{PREFIX}{self.token}-{role}"

    @property
    def worker(self) -> str:
        return f"wk-{self.token}"

    def member(self, n: int) -> str:
        return f"gw{n}-{self.token}"

    @property
    def settings(self) -> WgSettings:
        return WgSettings(interface_prefix=PREFIX, underlay_mtu=1500, instance_key_dir=self.workdir / "instance")

    @property
    def state_dir(self) -> Path:
        return self.workdir / "worker-state"

    def applier(self, role: str) -> WireguardApplier:
        return WireguardApplier(prefix=PREFIX, netns=self.ns(role), backend=self.backend)

    # ----- topology -----

    def up(self, *, datapath: bool = False) -> None:
        self.datapath = datapath
        for role in ("pod", "wk", "rt", "gw1", "gw2", "ext"):
            sh("ip", "netns", "add", self.ns(role))
            self.namespaces.append(self.ns(role))
            self.run(role, "ip", "link", "set", "lo", "up")
            for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1"),
                               ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0"),
                               ("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")):
                self.run(role, "sysctl", "-qw", f"{key}={value}")
        # loose reverse-path filtering on the worker, as systemd sets it: exercises the WireGuard devices' IPv4
        # address (without one, loose mode drops every packet whose source is not routed through the device)
        self.run("wk", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2")
        self.veth("pod", "eth0", ["100.64.1.10/24", "2001:db8:64:1::10/64"], "wk", "pod0",
                  ["100.64.1.1/24", "2001:db8:64:1::1/64"])
        self.run("pod", "ip", "addr", "add", "100.64.1.11/24", "dev", "eth0")
        self.run("pod", "ip", "addr", "add", "100.64.1.12/24", "dev", "eth0")
        self.veth("wk", "eth0", ["100.127.0.11/24", "2001:db8:127::11/64"], "rt", "wk", ["100.127.0.1/24",
                                                                                          "2001:db8:127::1/64"])
        self.run("rt", "ip", "link", "add", "br0", "type", "bridge")
        self.run("rt", "ip", "link", "set", "br0", "up")
        self.run("rt", "ip", "addr", "add", "198.51.100.1/24", "dev", "br0")
        self.run("rt", "ip", "addr", "add", "2001:db8:198::1/64", "dev", "br0")
        for n in (1, 2):
            self.veth(f"gw{n}", "eth0", [f"198.51.100.1{n}/24", f"2001:db8:198::1{n}/64"], "rt", f"g{n}", [])
            self.run("rt", "ip", "link", "set", f"g{n}", "master", "br0")
            self.run(f"gw{n}", "ip", "route", "add", "default", "via", "198.51.100.1")
            self.run(f"gw{n}", "ip", "-6", "route", "add", "default", "via", "2001:db8:198::1")
            if not datapath:
                self.run(f"gw{n}", "ip", "addr", "add", f"{EIP}/32", "dev", "lo")
                self.run(f"gw{n}", "ip", "addr", "add", f"{EIP6}/128", "dev", "lo")
                self.run(f"gw{n}", "nft", "-f", "-", stdin=self._snat_rules())
        self.veth("ext", "eth0", ["203.0.113.2/28", "2001:db8:203::2/64"], "rt", "ext", ["203.0.113.1/28",
                                                                                         "2001:db8:203::1/64"])
        self.run("ext", "ip", "route", "add", "default", "via", "203.0.113.1")
        self.run("ext", "ip", "-6", "route", "add", "default", "via", "2001:db8:203::1")
        for role, gw4, gw6 in (("pod", "100.64.1.1", "2001:db8:64:1::1"), ("wk", "100.127.0.1", "2001:db8:127::1")):
            self.run(role, "ip", "route", "add", "default", "via", gw4)
            self.run(role, "ip", "-6", "route", "add", "default", "via", gw6)
        self.run("rt", "ip", "route", "add", "100.64.1.0/24", "via", "100.127.0.11")
        self.route_eip_to(1)
        time.sleep(0.2)

    def _snat_rules(self) -> str:
        return "\n".join([
            "table inet egt_wg_snat {", "chain post {", "type nat hook postrouting priority 100;",
            f"ip saddr {{ 100.64.1.10, 100.64.1.11 }} oifname eth0 snat ip to {EIP}",
            f"ip6 saddr 2001:db8:64:1::10 oifname eth0 snat ip6 to {EIP6}", "}", "}", ""])

    def veth(self, a: str, a_if: str, a_addrs: list[str], b: str, b_if: str, b_addrs: list[str]) -> None:
        sh("ip", "-n", self.ns(a), "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", self.ns(b))
        for role, name, addrs in ((a, a_if, a_addrs), (b, b_if, b_addrs)):
            for addr in addrs:
                self.run(role, "ip", "addr", "add", addr, "dev", name)
            self.run(role, "ip", "link", "set", name, "up")

    def route_eip_to(self, n: int) -> None:
        """The routers' choice: where the EIP (the tunnel endpoint) is routed (what BGP would decide)."""
        self.run("rt", "ip", "route", "replace", f"{EIP}/32", "via", f"198.51.100.1{n}")
        self.run("rt", "ip", "-6", "route", "replace", f"{EIP6}/128", "via", f"2001:db8:198::1{n}")
        self.routed_to = n

    def cut_uplink(self, n: int) -> None:
        """Hard failure of member n's uplink: its switch port (in the router namespace) goes down."""
        self.run("rt", "ip", "link", "set", f"g{n}", "down")

    def run(self, role: str, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(["ip", "netns", "exec", self.ns(role), *argv], input=stdin, capture_output=True,
                              text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"[{role}] {' '.join(argv)}: {proc.stderr.strip()}")
        return proc.stdout

    def spawn(self, role: str, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    # ----- WireGuard -----

    def write_instance_key(self) -> None:
        write_key_file(self.settings.instance_key_dir / f"{INSTANCE}.key", self.instance_key)

    def worker_keys(self) -> tuple[LocalKey, ...]:
        return local_keys(self.state_dir)

    def intent(self, *, worker_published: tuple[PublicKey, ...] | None = None) -> tuple[Intent, tuple[Node, ...]]:
        pub = self.instance_key.public_key()
        members = tuple(Member(name=self.member(n), address=IPv4Address(f"198.51.100.1{n}"),
                               wireguard_public_key=pub) for n in (1, 2))
        inst = GatewayInstance(name=INSTANCE, members=members, eips=(EIP, EIP6),
                               ranking=((EIP, (self.member(1), self.member(2))),),
                               alive=frozenset(m.name for m in members), tunnel=TunnelSpec(type=TunnelType.WIREGUARD))
        ref = PolicyRef(kind=PolicyKind.NAMESPACED, namespace="default", name="p")

        def steer(ip: IPAddress, eip: IPAddress, dst: str) -> Steering:
            return Steering(pod_ip=ip, namespace="default", pod="pod", node=self.worker, policy=ref, gateway=INSTANCE,
                            eip=eip, destinations=(ip_network(dst),), endpoints=(EIP, EIP6))

        keys = worker_published if worker_published is not None else tuple(k.public_key for k in self.worker_keys())
        underlay: IPAddress = IPv6Address("2001:db8:127::11") if self.v6_underlay else IPv4Address("100.127.0.11")
        node = Node(name=self.worker, addresses=(underlay,), wireguard_public_key=",".join(keys))
        cluster = tuple(ip_network(n) for n in ("100.64.0.0/16", "100.127.0.0/24", "2001:db8:64::/48",
                                                 "2001:db8:127::/64"))
        intent = Intent(steerings=(steer(POD, EIP, "0.0.0.0/0"), steer(POD6, EIP6, "::/0")), outcomes=(),
                        instances=(inst,), cluster_cidrs=cluster)
        return intent, (node,)

    def plans(self, *, worker_published: tuple[PublicKey, ...] | None = None
              ) -> tuple[WireguardPlan, WireguardPlan, WireguardPlan]:
        intent, nodes = self.intent(worker_published=worker_published)
        worker = plan_worker_wireguard(intent, node=nodes[0], local_keys=self.worker_keys(), settings=self.settings)
        gws = tuple(plan_gateway_wireguard(intent, member=self.member(n), nodes=nodes, settings=self.settings)
                    for n in (1, 2))
        return worker, gws[0], gws[1]

    def apply_all(self, *, worker_published: tuple[PublicKey, ...] | None = None) -> dict[str, list[str]]:
        """Plan and apply the worker and both gateways; steer the pod into the worker's route device.

        Order (what the services do on separate nodes, serialised here): members first - data path (EIPs on lo,
        nftables) before WireGuard, so a member accepts handshakes only once it holds the endpoint - then the
        worker's WireGuard devices, then the worker's data path, whose routes name those devices.
        """
        if not (self.settings.instance_key_dir / f"{INSTANCE}.key").exists():
            self.write_instance_key()
        worker, gw1, gw2 = self.plans(worker_published=worker_published)
        changes: dict[str, list[str]] = {"gw1": [], "gw2": [], "wk": []}
        if self.datapath:
            for role in ("gw1", "gw2"):
                changes[role] += self.apply_datapath(role)
        changes["gw1"] += self.applier("gw1").apply(gw1)
        changes["gw2"] += self.applier("gw2").apply(gw2)
        changes["wk"] += self.applier("wk").apply(worker)
        if self.datapath:
            changes["wk"] += self.apply_datapath("wk")
            return changes
        device = worker.route_device(INSTANCE)
        if device:
            self.steer_pod(device)
        return changes

    def apply_datapath(self, role: str) -> list[str]:
        """The shared data path on the worker (`wk`) or a member (`gw1`, `gw2`), fed with our WireGuard devices."""
        intent, nodes = self.intent()
        worker_wg, *gateway_wg = self.plans()
        underlay = nodes[0].addresses[0]
        target: WorkerPlan | GatewayPlan
        if role == "wk":
            target = plan_worker(intent, node=self.worker, underlay=underlay, settings=WorkerSettings(),
                                 wireguard_devices=dict(worker_wg.route_devices))
        else:
            n = int(role[-1])
            target = plan_gateway(intent, member=self.member(n), workers={self.worker: (underlay,)},
                                  settings=GatewaySettings(),
                                  wireguard_devices=[i.name for i in gateway_wg[n - 1].interfaces])
        result = DataPathApplier(self.ns(role)).apply(target)
        if result.failures:
            raise RuntimeError(f"[{role}] data path: {'; '.join(result.failures)}")
        return list(result.changes)

    def steer_pod(self, device: str) -> None:
        """Stand-in for the data path's steering: pod sources (.10 and its v6) -> table 100 -> default dev WG."""
        for fam, src in (("-4", str(POD)), ("-6", str(POD6))):
            self.run("wk", "ip", fam, "rule", "del", "pref", "100", check=False)
            self.run("wk", "ip", fam, "rule", "add", "pref", "100", "from", src, "lookup", "100")
            self.run("wk", "ip", fam, "route", "replace", "default", "dev", device, "table", "100")

    def probe_udp(self, *, duration: float, interval: float = 0.01, v6: bool = False,
                  src_role: str = "pod") -> subprocess.Popen[str]:
        """Start the 10 ms UDP echo probe pod -> external -> pod; `.communicate()` gives its JSON line."""
        host = str(EXTERNAL6 if v6 else EXTERNAL)
        return self.spawn(src_role, sys.executable, "-c", _PROBE_CLIENT, host, "9000", str(interval), str(duration))

    def start_echo_server(self) -> None:
        self.spawn("ext", sys.executable, "-c", _ECHO_SERVER, "9000")
        time.sleep(0.3)

    def start_prober(self, *, interval: float = 0.1, misses: int = 3) -> subprocess.Popen[str]:
        worker, _, _ = self.plans()
        targets = [f"{dev}={peer}" for dev, peer in worker.probes]
        return self.spawn("wk", sys.executable, "-m", "appliance.datapath.apply.wireguard_liveness", *targets,
                          "--interval", str(interval), "--misses", str(misses))

    def wg_dump(self, role: str, device: str) -> str:
        return self.run(role, "wg", "show", device, "dump")

    def source_seen_by_external(self, *, v6: bool = False, src: IPAddress | None = None) -> IPAddress:
        """Send one UDP datagram from the pod and return the source the external server saw."""
        code = ("import socket,sys; f=socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET; "
                "s=socket.socket(f, socket.SOCK_DGRAM); s.bind(('', 9100)); s.settimeout(5); "
                "d,a=s.recvfrom(100); print(a[0])")
        listen = self.spawn("ext", sys.executable, "-c", code, "::" if v6 else "0.0.0.0")
        time.sleep(0.3)
        send = ("import socket,sys; f=socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET; "
                "s=socket.socket(f, socket.SOCK_DGRAM); b=sys.argv[2]; "
                "b and s.bind((b, 0)); [s.sendto(b'x', (sys.argv[1], 9100)) for _ in range(3)]")
        self.run("pod", sys.executable, "-c", send, str(EXTERNAL6 if v6 else EXTERNAL), str(src or ""))
        out, _ = listen.communicate(timeout=10)
        return ip_address(out.strip())

    # ----- teardown -----

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=5)
        for role in ("wk", "gw1", "gw2"):
            if self.ns(role) in self.namespaces:
                with contextlib.suppress(Exception):
                    self.applier(role).remove_all()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        for sock in WG_RUN_DIR.glob(f"{PREFIX}*.sock") if WG_RUN_DIR.exists() else ():
            if self.token_owns(sock.stem):
                sock.unlink(missing_ok=True)
        sh("rm", "-rf", str(self.workdir), check=False)

    def token_owns(self, ifname: str) -> bool:
        nodes = [self.worker, self.member(1), self.member(2)]
        return any(ifname == interface_name(self.settings, n, INSTANCE, s) for n in nodes for s in (0, 1))


def parse_probe(out: str) -> dict[str, float]:
    return {k: float(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}
