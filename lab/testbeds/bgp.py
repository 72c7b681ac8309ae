"""A tiny network-namespace testbed for the BGP pieces: one upstream router (BIRD 2 or FRR), N gateways, a client.

Used by `tests/integration/bgp/` and `lab.bench.bgp_failover`; not by the product. Everything lives in namespaces named
`<prefix><tag>-<role>` (prefix `egt-bg-`), links are created directly inside them, and `down()` removes it all.

    client (203.0.113.2/28) --- router (bridge br0: 198.51.100.1/24, 2001:db8:198::1/64) --- gw1 .11, gw2 .12, ...

The router's gateway-facing ports are bridge ports, so "cutting" a gateway (`cut()`: its bridge port down) keeps the
router's own interface up: only BGP timers or BFD can notice, like a switch between them. The router imports only
/32 (/128) routes inside the EIP pools (203.0.113.128/25, 2001:db8:e1::/64), exports nothing, runs BFD on the BGP
sessions and installs the best path in its kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, Literal

from appliance.core.waiting import wait_until
from bgp.bfd_sidecar import BfdSidecar
from bgp.heartbeat import udp_socket
from bgp.settings import BgpSettings, parse_bgp_settings
from bgp.speaker import BgpSpeaker

ROUTER_ASN = 64512
GATEWAY_ASN = 64513
ROUTER_V4 = ip_address("198.51.100.1")
ROUTER_V6 = ip_address("2001:db8:198::1")
POOL_V4 = "203.0.113.128/25"
POOL_V6 = "2001:db8:e1::/64"
CLIENT_V4 = ip_address("203.0.113.2")

RouterKind = Literal["bird", "frr"]

_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
)


def sh(*args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def gw_v4(i: int) -> IPv4Address:
    return IPv4Address(f"198.51.100.{10 + i}")


def gw_v6(i: int) -> IPv6Address:
    return IPv6Address(f"2001:db8:198::{10 + i}")


def bird_router_config(
    n: int, log: Path, *, bfd: bool, interval_ms: int = 50, multiplier: int = 3, md5: str | None = None,
    graceful_restart: bool = False,
) -> str:
    lines = [
        f'log "{log}" all;',
        f"router id {ROUTER_V4};",
        "protocol device { scan time 10; }",
        "protocol kernel k4 { ipv4 { import none; export where source = RTS_BGP; }; }",
        "protocol kernel k6 { ipv6 { import none; export where source = RTS_BGP; }; }",
        f"filter eip4 {{ if net ~ [ {POOL_V4}{{32,32}} ] then accept; reject; }}",
        f"filter eip6 {{ if net ~ [ {POOL_V6}{{128,128}} ] then accept; reject; }}",
        f'protocol bfd {{ interface "*" {{ interval {interval_ms} ms; multiplier {multiplier}; }}; }}',
    ]
    for i in range(1, n + 1):
        for ver, addr, filt in ((4, gw_v4(i), "eip4"), (6, gw_v6(i), "eip6")):
            lines += [
                f"protocol bgp gw{i}_v{ver} {{",
                f"    local as {ROUTER_ASN}; neighbor {addr} as {GATEWAY_ASN};",
                "    passive on; hold time 3; keepalive time 1; error wait time 1, 5;",
                *([f'    password "{md5}";'] if md5 else []),
                # `bfd on`, not `bfd graceful`: a BFD-detected failure is a hard down even with graceful restart
                f"    bfd {'on' if bfd else 'off'};",
                f"    graceful restart {'on' if graceful_restart else 'off'};",
                f"    ipv{ver} {{ import filter {filt}; export none; }};",
                "}",
            ]
    return "\n".join(lines) + "\n"


def frr_router_configs(
    n: int, log: Path, *, bfd: bool, interval_ms: int = 50, multiplier: int = 3, md5: str | None = None,
    graceful_restart: bool = False,
) -> dict[str, str]:
    """One config file per FRR daemon (a shared file makes each daemon stumble over the others' sections)."""
    head = ["frr defaults datacenter", "hostname egt-bg-router", f"log file {log}"]
    bfdd = [*head, "bfd", " profile egressgw", f"  transmit-interval {interval_ms}",
            f"  receive-interval {interval_ms}", f"  detect-multiplier {multiplier}", " exit", "exit"]  # fmt: skip
    bgpd = [
        *head,
        f"ip prefix-list EIP4 seq 5 permit {POOL_V4} ge 32",
        f"ipv6 prefix-list EIP6 seq 5 permit {POOL_V6} ge 128",
        "route-map NONE deny 10",
        "exit",
        f"router bgp {ROUTER_ASN}",
        f" bgp router-id {ROUTER_V4}",
        " bgp graceful-restart" if graceful_restart else " bgp graceful-restart-disable",
        " no bgp ebgp-requires-policy",
        " no bgp default ipv4-unicast",
        " neighbor GW4 peer-group",
        " neighbor GW6 peer-group",
    ]
    for grp in ("GW4", "GW6"):
        bgpd += [f" neighbor {grp} remote-as {GATEWAY_ASN}", f" neighbor {grp} passive", f" neighbor {grp} timers 1 3"]
        if md5:
            bgpd.append(f" neighbor {grp} password {md5}")
        if bfd:
            bgpd += [f" neighbor {grp} bfd", f" neighbor {grp} bfd profile egressgw"]
    for i in range(1, n + 1):
        bgpd += [f" neighbor {gw_v4(i)} peer-group GW4", f" neighbor {gw_v6(i)} peer-group GW6"]
    bgpd += [
        " address-family ipv4 unicast",
        "  neighbor GW4 activate",
        "  neighbor GW4 prefix-list EIP4 in",
        "  neighbor GW4 route-map NONE out",
        " exit-address-family",
        " address-family ipv6 unicast",
        "  neighbor GW6 activate",
        "  neighbor GW6 prefix-list EIP6 in",
        "  neighbor GW6 route-map NONE out",
        " exit-address-family",
        "exit",
    ]
    return {"zebra": "\n".join(head) + "\n", "bfdd": "\n".join(bfdd) + "\n", "bgpd": "\n".join(bgpd) + "\n"}


@dataclass
class Testbed:
    __test__ = False  # not a pytest test class
    workdir: Path
    n_gateways: int = 2
    router: RouterKind = "bird"
    bfd: bool = True
    #: TCP-MD5 password on the router's sessions (None = none)
    md5: str | None = None
    #: the router keeps a restarting gateway's routes (BGP graceful restart helper; BFD down is still a hard down).
    #: Off by default so the other tests see a speaker's death as the routers did before (routes dropped)
    graceful_restart: bool = False
    prefix: str = "egt-bg-"
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _pidfiles: list[Path] = field(default_factory=list)

    @property
    def router_ns(self) -> str:
        return f"{self.prefix}{self.tag}-r"

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}{self.tag}-c"

    def gw_ns(self, i: int) -> str:
        return f"{self.prefix}{self.tag}-g{i}"

    def namespaces(self) -> list[str]:
        return [self.router_ns, self.client_ns, *(self.gw_ns(i) for i in range(1, self.n_gateways + 1))]

    def exec_prefix(self, ns: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", ns)

    # ----- lifecycle -----

    def up(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for ns in self.namespaces():
            sh("ip", "netns", "add", ns)
            for key, val in _SYSCTLS:
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={val}")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        r = self.router_ns
        sh("ip", "-n", r, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", r, "addr", "add", f"{ROUTER_V4}/24", "dev", "br0")
        sh("ip", "-n", r, "addr", "add", f"{ROUTER_V6}/64", "dev", "br0", "nodad")
        sh("ip", "-n", r, "link", "set", "br0", "up")
        for i in range(1, self.n_gateways + 1):
            g = self.gw_ns(i)
            sh("ip", "-n", r, "link", "add", f"p{i}", "type", "veth", "peer", "name", "up0", "netns", g)
            sh("ip", "-n", r, "link", "set", f"p{i}", "master", "br0", "up")
            sh("ip", "-n", g, "addr", "add", f"{gw_v4(i)}/24", "dev", "up0")
            sh("ip", "-n", g, "addr", "add", f"{gw_v6(i)}/64", "dev", "up0", "nodad")
            sh("ip", "-n", g, "link", "set", "up0", "up")
            sh("ip", "-n", g, "route", "add", "default", "via", str(ROUTER_V4))
            sh("ip", "-n", g, "-6", "route", "add", "default", "via", str(ROUTER_V6))
        c = self.client_ns
        sh("ip", "-n", r, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", c)
        sh("ip", "-n", r, "addr", "add", "203.0.113.1/28", "dev", "ext0")
        sh("ip", "-n", r, "link", "set", "ext0", "up")
        sh("ip", "-n", c, "addr", "add", f"{CLIENT_V4}/28", "dev", "eth0")
        sh("ip", "-n", c, "link", "set", "eth0", "up")
        sh("ip", "-n", c, "route", "add", "default", "via", "203.0.113.1")

    def start_router(self) -> None:
        if self.router == "bird":
            self._start_bird_router()
        else:
            self._start_frr_router()

    def _start_bird_router(self) -> None:
        conf = self.workdir / "router-bird.conf"
        log = self.workdir / "router-bird.log"
        conf.write_text(bird_router_config(self.n_gateways, log, bfd=self.bfd, md5=self.md5,
                                           graceful_restart=self.graceful_restart))
        ctl = self.workdir / "router-bird.ctl"
        with contextlib.suppress(FileNotFoundError):
            ctl.unlink()
        logf = (self.workdir / "router-bird.out").open("ab")
        self._procs.append(subprocess.Popen(
            [*self.exec_prefix(self.router_ns), "bird", "-f", "-c", str(conf), "-s", str(ctl),
             "-P", str(self.workdir / "router-bird.pid")],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        ))  # fmt: skip
        logf.close()
        wait_until(lambda: ctl.exists(), timeout=5.0, what="router BIRD control socket")

    @property
    def frr_pathspace(self) -> str:
        return f"egtbg{self.tag}"

    def _start_frr_router(self) -> None:
        ps = self.frr_pathspace
        etc = Path("/etc/frr") / ps
        run = Path("/var/run/frr") / ps
        for d in (etc, run):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "frr", "frr")
        configs = frr_router_configs(self.n_gateways, self.workdir / "router-frr.log", bfd=self.bfd, md5=self.md5,
                                     graceful_restart=self.graceful_restart)
        (self.workdir / "router-frr.log").touch()
        shutil.chown(self.workdir / "router-frr.log", "frr", "frr")
        os.chmod(self.workdir, 0o755)
        for daemon in ("zebra", "bfdd", "bgpd"):
            conf = etc / f"{daemon}.conf"
            conf.write_text(configs[daemon])
            shutil.chown(conf, "frr", "frr")
            pid = run / f"{daemon}.pid"
            args = [*self.exec_prefix(self.router_ns), f"/usr/lib/frr/{daemon}", "-d", "-N", ps, "-f", str(conf),
                    "-i", str(pid)]  # fmt: skip
            sh(*args)
            self._pidfiles.append(pid)
            wait_until(pid.exists, timeout=5.0, what=f"FRR {daemon} pid file")

    def _kill_daemons(self) -> None:
        """SIGKILL the router daemons we started (process groups we spawned, daemons that wrote a pid file)."""
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(5)
        for pidfile in self._pidfiles:
            with contextlib.suppress(Exception):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)

    def stop_router(self) -> None:
        """Kill the router's daemons (a router crash; its kernel routes from BGP go with them)."""
        self._kill_daemons()
        self._procs.clear()
        for pidfile in self._pidfiles:
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()
        self._pidfiles.clear()
        sh("ip", "-n", self.router_ns, "route", "flush", "proto", "bird", check=False)
        sh("ip", "-n", self.router_ns, "-6", "route", "flush", "proto", "bird", check=False)
        for proto in ("bgp", "zebra"):
            sh("ip", "-n", self.router_ns, "route", "flush", "proto", proto, check=False)
            sh("ip", "-n", self.router_ns, "-6", "route", "flush", "proto", proto, check=False)

    def down(self) -> None:
        self._kill_daemons()
        for ns in self.namespaces():
            # kill anything still running inside (ExaBGP, bird, bridges) before deleting the namespace
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        if self.router == "frr":
            for d in (Path("/etc/frr") / self.frr_pathspace, Path("/var/run/frr") / self.frr_pathspace):
                shutil.rmtree(d, ignore_errors=True)

    # ----- observations and faults -----

    def router_route(self, prefix: str) -> list[str]:
        """Next hops the router's kernel uses for `prefix` (empty when there is no route)."""
        fam = "-6" if ":" in prefix else "-4"
        out = sh("ip", "-n", self.router_ns, "-j", fam, "route", "show", prefix, check=False).stdout
        routes: list[dict[str, Any]] = json.loads(out or "[]")
        hops: list[str] = []
        for r in routes:
            if "gateway" in r:
                hops.append(r["gateway"])
            for nh in r.get("nexthops", []):
                hops.append(nh["gateway"])
        return hops

    def router_cli(self, command: str) -> str:
        if self.router == "bird":
            args = ["birdc", "-s", str(self.workdir / "router-bird.ctl"), *command.split()]
            return sh(*args, check=False).stdout
        return sh("vtysh", "-N", self.frr_pathspace, "-c", command, check=False).stdout

    def cut(self, i: int) -> None:
        """Hard failure of gateway i as the router sees it: its switch port goes down, the router keeps carrier."""
        sh("ip", "-n", self.router_ns, "link", "set", f"p{i}", "down")

    def restore(self, i: int) -> None:
        sh("ip", "-n", self.router_ns, "link", "set", f"p{i}", "up")


_CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


def udp_socket_in(ns: str, family: int, port: int) -> socket.socket:
    """A UDP socket bound inside namespace `ns` (for the member heartbeat of a gateway whose Python side runs in the
    host namespace): a helper thread enters the namespace, binds, and ends; the socket stays in the namespace."""
    out: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns}")
                out.append(udp_socket(family, port))
            finally:
                os.close(fd)
        except BaseException as exc:  # handed to the caller
            out.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


# ----- gateways on the testbed -----


def gateway_settings(i: int, *, bfd: bool = True, md5: str | None = None) -> BgpSettings:
    auth = {"md5_password": md5} if md5 else {}
    return parse_bgp_settings({
        "local_asn": GATEWAY_ASN, "router_id": str(gw_v4(i)),
        "peers": [{"address": str(ROUTER_V4), "asn": ROUTER_ASN, "local_address": str(gw_v4(i)), **auth},
                  {"address": str(ROUTER_V6), "asn": ROUTER_ASN, "local_address": str(gw_v6(i)), **auth}],
        "bfd": {"enabled": bfd},
    })  # fmt: skip


@dataclass
class Gateway:
    index: int
    speaker: BgpSpeaker
    bfd: BfdSidecar

    def stop(self) -> None:
        self.speaker.stop()
        self.bfd.stop()


@dataclass
class Bed:
    """A testbed plus the gateways (speaker + BFD sidecar) started on it; `close()` stops them all."""

    tb: Testbed
    gateways: list[Gateway] = field(default_factory=list)

    def gateway(self, i: int, *, bfd: bool = True, md5: str | None = None) -> Gateway:
        s = gateway_settings(i, bfd=bfd, md5=md5)
        prefix = self.tb.exec_prefix(self.tb.gw_ns(i))
        work = self.tb.workdir / f"gw{i}"
        gw = Gateway(index=i, speaker=BgpSpeaker(s, work, command_prefix=prefix),
                     bfd=BfdSidecar(s, work, command_prefix=prefix))  # fmt: skip
        self.gateways.append(gw)
        gw.bfd.start()
        gw.speaker.start()
        return gw

    def close(self) -> None:
        for gw in self.gateways:
            try:
                gw.stop()
            except Exception as exc:  # teardown must go on
                print(f"gateway {gw.index} stop failed: {exc}")
        self.tb.down()
