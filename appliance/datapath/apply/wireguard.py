"""Apply a `WireguardPlan` to the kernel: interfaces, keys, peers, probe addresses, MTU, gateway return routes.

Thin and idempotent: observe (`ip -j`, `wg show IF dump`), diff against the plan, change only what differs; applying
the same plan twice changes nothing. Everything we own is recognisable: interfaces carry our name prefix, gateway
return routes carry `proto 233` (`egressgw-wg`), so a restart adopts them and cleanup touches nothing else.

Why the `wg` tool and not pyroute2: pyroute2's WireGuard support speaks the kernel's generic-netlink family, which
wireguard-go (the userspace implementation used where the kernel has no module, as in the lab) does not provide;
`wg` talks to either (netlink or the UAPI socket /var/run/wireguard/IF.sock) with the same syntax and output. Keys are
passed by file (`private-key FILE`), so they never appear on a command line or in a log.

Interface creation: `ip link add IF type wireguard` with the kernel module, else `wireguard-go IF` started inside the
namespace (it daemonises; deleting the link ends it). The choice is detected once (`detect_backend`).
"""

from __future__ import annotations

import enum
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface, ip_address
from pathlib import Path

from appliance.core.events import EventLogger
from appliance.datapath.apply.wireguard_keyfiles import read_key_file
from appliance.datapath.plan.kernel_parsing import load_ip_json, parse_device_routes, parse_interface_addresses
from appliance.datapath.plan.wireguard import WgInterface, WgPeer, WgRoute, WireguardPlan

log = EventLogger("egressgw.wireguard")

ROUTE_PROTO = 233
WG_RUN_DIR = Path("/var/run/wireguard")


class Backend(enum.StrEnum):
    KERNEL = "kernel"
    WIREGUARD_GO = "wireguard-go"


def detect_backend() -> Backend:
    """Kernel module if loaded, else wireguard-go; fails loudly when neither exists.

    Production nodes load the module at boot (or pass `backend=Backend.KERNEL`, which autoloads it on the first
    `ip link add ... type wireguard`); the lab has no module and uses wireguard-go.
    """
    if Path("/sys/module/wireguard").exists():
        return Backend.KERNEL
    if shutil.which("wireguard-go"):
        return Backend.WIREGUARD_GO
    raise RuntimeError("no WireGuard: neither the kernel module nor wireguard-go is available")


class CommandError(RuntimeError):
    pass


class WireguardApplyError(RuntimeError):
    """Some interfaces could not be converged (`failed`: name -> error); `changes` were made nonetheless."""

    def __init__(self, failed: dict[str, str], changes: list[str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in sorted(failed.items())))
        self.failed = failed
        self.changes = changes


@dataclass(frozen=True, slots=True, kw_only=True)
class Shell:
    """Runs ip/wg/wireguard-go in a named network namespace (None = the current one)."""

    netns: str | None = None

    def ip(self, *args: str, check: bool = True) -> str:
        return self._run(["ip", *(("-n", self.netns) if self.netns else ()), *args], check=check)

    def inside(self, *args: str, check: bool = True) -> str:
        return self._run([*(("ip", "netns", "exec", self.netns) if self.netns else ()), *args], check=check)

    def _run(self, argv: list[str], *, check: bool) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise CommandError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedPeer:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    keepalive: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedInterface:
    name: str
    #: public key of the configured private key (None = no key set); the private key itself is never kept
    public_key: str | None
    listen_port: int
    peers: tuple[ObservedPeer, ...]
    mtu: int
    up: bool
    addresses: tuple[IPv4Interface | IPv6Interface, ...]


def parse_dump(text: str) -> tuple[str | None, int, tuple[ObservedPeer, ...]]:
    """`wg show IF dump`: the interface line (its private key is dropped at once), then one line per peer."""
    lines = [ln.split("\t") for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None, 0, ()
    head = lines[0]
    public = None if head[1] == "(none)" else head[1]
    peers = tuple(
        ObservedPeer(public_key=f[0], endpoint=None if f[2] == "(none)" else f[2],
                     allowed_ips=() if f[3] == "(none)" else tuple(sorted(f[3].split(","))),
                     latest_handshake=int(f[4]), rx_bytes=int(f[5]), tx_bytes=int(f[6]),
                     keepalive=None if f[7] == "off" else int(f[7]))
        for f in lines[1:])
    return public, int(head[2]), peers


def format_endpoint(endpoint: tuple[object, int]) -> str:
    addr = ip_address(str(endpoint[0]))
    return f"[{addr}]:{endpoint[1]}" if addr.version == 6 else f"{addr}:{endpoint[1]}"


def _allowed(peer: WgPeer) -> tuple[str, ...]:
    return tuple(sorted(str(n) for n in peer.allowed_ips))


class WireguardApplier:
    """Observe -> diff -> converge for our WireGuard interfaces in one namespace."""

    def __init__(self, *, prefix: str, netns: str | None = None, backend: Backend | None = None,
                 route_table: str = "main") -> None:
        if shutil.which("wg") is None:
            raise RuntimeError("the wg tool is missing: install wireguard-tools (--no-install-recommends)")
        self.prefix = prefix
        self.shell = Shell(netns=netns)
        self.backend = backend or detect_backend()
        self.route_table = route_table

    # ----- observation -----

    def our_links(self) -> dict[str, dict[str, object]]:
        links = load_ip_json(self.shell.ip("-j", "-d", "link", "show"))
        return {str(li["ifname"]): li for li in links if str(li["ifname"]).startswith(self.prefix)}

    def observe(self) -> dict[str, ObservedInterface]:
        found: dict[str, ObservedInterface] = {}
        addrs = parse_interface_addresses(load_ip_json(self.shell.ip("-j", "addr", "show")))
        for name, link in self.our_links().items():
            dump = self.shell.inside("wg", "show", name, "dump", check=False)
            public, port, peers = parse_dump(dump)
            found[name] = ObservedInterface(
                name=name, public_key=public, listen_port=port, peers=peers, mtu=int(str(link["mtu"])),
                up="UP" in (link.get("flags") or []), addresses=addrs.get(name, ()))  # type: ignore[operator]
        return found

    def observe_routes(self) -> set[tuple[str, str]]:
        routes: set[tuple[str, str]] = set()
        for version in (4, 6):
            out = self.shell.ip("-j", f"-{version}", "route", "show", "table", self.route_table, "proto",
                                str(ROUTE_PROTO))
            routes |= parse_device_routes(load_ip_json(out), version)
        return routes

    # ----- convergence -----

    def apply(self, plan: WireguardPlan) -> list[str]:
        """Converge; returns what changed (empty = nothing). Interfaces first, then routes, then removals.

        One broken interface (say, a missing instance key file) does not stop the others: its failure is logged,
        its routes are left alone, everything else converges, and `WireguardApplyError` is raised at the end.
        """
        changes: list[str] = []
        failed: dict[str, str] = {}
        observed = self.observe()
        for itf in plan.interfaces:
            try:
                changes += self._converge_interface(itf, observed.get(itf.name))
            except (CommandError, OSError, ValueError, subprocess.SubprocessError) as exc:
                failed[itf.name] = str(exc)
                log.error("wireguard.apply_failed", interface=itf.name, error=str(exc))
        changes += self._converge_routes([r for r in plan.routes if r.device not in failed])
        wanted = {i.name for i in plan.interfaces}
        for name in sorted(set(observed) - wanted):
            self.delete_interface(name)
            changes.append(f"delete {name}")
        for c in changes:
            log.info("wireguard.changed", change=c)
        if failed:
            raise WireguardApplyError(failed, changes)
        return changes

    def missing(self, plan: WireguardPlan) -> list[str]:
        """Planned interfaces that are absent or down (a cheap health check: one `ip link` call)."""
        links = self.our_links()
        return [i.name for i in plan.interfaces
                if i.name not in links or "UP" not in (links[i.name].get("flags") or [])]  # type: ignore[operator]

    def _converge_interface(self, itf: WgInterface, seen: ObservedInterface | None) -> list[str]:
        changes: list[str] = []
        if seen is None:
            self.create_interface(itf.name)
            self.shell.ip("link", "set", itf.name, "addrgenmode", "none")
            # the probe addresses are IPv6 link-local: IPv6 must be on for our device even where it is off by default
            self.shell.inside("sysctl", "-qw", f"net.ipv6.conf.{itf.name}.disable_ipv6=0", check=False)
            # loose reverse-path filtering: replies reach the worker's pods through the tunnel from sources the main
            # table routes elsewhere (strict mode, where `all` is 1, would drop them)
            self.shell.inside("sysctl", "-qw", f"net.ipv4.conf.{itf.name}.rp_filter=2", check=False)
            changes.append(f"create {itf.name}")
            seen = self.observe_one(itf.name)
        if seen.mtu != itf.mtu:
            self.shell.ip("link", "set", itf.name, "mtu", str(itf.mtu))
            changes.append(f"mtu {itf.name} {itf.mtu}")
        for address in itf.addresses:
            if address not in seen.addresses:
                extra_flags = ("nodad",) if address.version == 6 else ()
                self.shell.ip("addr", "replace", str(address), "dev", itf.name, *extra_flags)
                changes.append(f"address {itf.name} {address}")
        for extra in seen.addresses:
            # the device is ours: an address we did not plan (a TUN's auto link-local) would be picked as the
            # probe source and dropped by the gateway's crypto-routing
            if extra not in itf.addresses:
                self.shell.ip("addr", "del", str(extra), "dev", itf.name, check=False)
                changes.append(f"unaddress {itf.name} {extra}")
        args: list[str] = []
        if seen.public_key != read_key_file(itf.private_key_file).public_key():
            args += ["private-key", str(itf.private_key_file)]
        if itf.listen_port is not None and seen.listen_port != itf.listen_port:
            args += ["listen-port", str(itf.listen_port)]
        have = {p.public_key: p for p in seen.peers}
        want = {p.public_key: p for p in itf.peers}
        for key in sorted(set(have) - set(want)):
            args += ["peer", key, "remove"]
        for key, peer in sorted(want.items()):
            old = have.get(key)
            endpoint = format_endpoint(peer.endpoint) if peer.endpoint else None
            if old is not None and old.allowed_ips == _allowed(peer) and (endpoint is None or old.endpoint == endpoint):
                continue
            args += ["peer", key, "allowed-ips", ",".join(_allowed(peer))]
            if endpoint:
                args += ["endpoint", endpoint]
        if args:
            self.shell.inside("wg", "set", itf.name, *args)
            changes.append(f"wg {itf.name} " + " ".join(a for a in args if not a.startswith("/")))
        if not seen.up:
            self.shell.ip("link", "set", itf.name, "up")
            changes.append(f"up {itf.name}")
        return changes

    def observe_one(self, name: str) -> ObservedInterface:
        return self.observe()[name]

    def _converge_routes(self, routes: Sequence[WgRoute]) -> list[str]:
        want = {(str(r.destination), r.device) for r in routes}
        have = self.observe_routes()
        changes: list[str] = []
        for dst, dev in sorted(want - have):
            self.shell.ip("route", "replace", dst, "dev", dev, "table", self.route_table, "proto", str(ROUTE_PROTO))
            changes.append(f"route {dst} dev {dev}")
        wanted_dst = {d for d, _ in want}
        for dst, dev in sorted(have - want):
            if dst not in wanted_dst:
                self.shell.ip("route", "del", dst, "dev", dev, "table", self.route_table, "proto", str(ROUTE_PROTO),
                              check=False)
                changes.append(f"unroute {dst} dev {dev}")
        return changes

    # ----- interface lifecycle -----

    def create_interface(self, name: str) -> None:
        if self.backend is Backend.KERNEL:
            self.shell.ip("link", "add", name, "type", "wireguard")
            return
        sock = WG_RUN_DIR / f"{name}.sock"
        if sock.exists():
            if control_socket_in_use(sock):
                # the directory is host-wide, namespaces are not: the same name is served by a wireguard-go in
                # another namespace (another lab, a second instance on this host). Unlinking its socket would cut
                # that one off from `wg` for good; refuse instead (the pass reports it and retries).
                raise CommandError(f"{name}: {sock} is served by a live wireguard-go outside this namespace; "
                                   "WireGuard interface names must be unique on the host (wireguard.interface_prefix)")
            sock.unlink()  # stale: its wireguard-go is gone
        env_cmd = ["env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", "LOG_LEVEL=error", "wireguard-go", name]
        # it daemonises: the surviving child must not hold our pipes (or this call would wait for it)
        subprocess.run([*(("ip", "netns", "exec", self.shell.netns) if self.shell.netns else ()), *env_cmd],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
                       check=True)
        deadline = time.monotonic() + 5
        while not (sock.exists() and name in self.our_links()):
            if time.monotonic() > deadline:
                raise CommandError(f"wireguard-go {name}: no control socket after 5 s")
            time.sleep(0.02)
        log.info("wireguard.interface_created", interface=name, backend=str(self.backend))

    def delete_interface(self, name: str) -> None:
        self.shell.ip("link", "del", name, check=False)
        if self.backend is Backend.WIREGUARD_GO:
            sock = WG_RUN_DIR / f"{name}.sock"
            deadline = time.monotonic() + 3
            while sock.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            if sock.exists():
                sock.unlink()
        log.info("wireguard.interface_deleted", interface=name)

    def remove_all(self) -> None:
        """Delete every interface with our prefix and our routes (uninstall / test teardown)."""
        for name in self.our_links():
            self.delete_interface(name)
        for dst, dev in self.observe_routes():
            self.shell.ip("route", "del", dst, "dev", dev, "table", self.route_table, check=False)

    # ----- session reset (fast re-handshake) -----

    def reset_peer(self, name: str, public_key: str) -> None:
        """Drop the peer's session and re-add it with the same configuration, in one `wg set`.

        The next packet to the peer then starts a new handshake at once (instead of WireGuard's own ~5-15 s),
        which is how a worker re-establishes its session after the routers moved the instance endpoint to
        another member that has no session state.
        """
        _, _, peers = parse_dump(self.shell.inside("wg", "show", name, "dump"))
        peer = next((p for p in peers if p.public_key == public_key), None)
        if peer is None:
            return
        args = ["peer", public_key, "remove", "peer", public_key, "allowed-ips", ",".join(peer.allowed_ips)]
        if peer.endpoint:
            args += ["endpoint", peer.endpoint]
        if peer.keepalive:
            args += ["persistent-keepalive", str(peer.keepalive)]
        self.shell.inside("wg", "set", name, *args)
        log.info("wireguard.peer_reset", interface=name, peer=public_key)


def control_socket_in_use(sock: Path) -> bool:
    """Whether a process still serves this wireguard-go control socket (a connect succeeds; it only sees EOF)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(sock))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def running_wireguard_go(prefix: str) -> list[int]:
    """PIDs of wireguard-go processes serving interfaces with our prefix (for test cleanup checks)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and os.path.basename(cmd[0]) == b"wireguard-go" and any(a.startswith(prefix.encode()) for a in cmd[1:]):
            pids.append(int(entry.name))
    return pids
