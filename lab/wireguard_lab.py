"""The whole system in the lab with WireGuard tunnels: instance keys on the members, lab-unique interface names.

`lab/system.py` brings up the lab and starts the services with VXLAN in mind; a WireGuard gateway instance needs two
more things, which this module adds through System's public API (no change to System itself):

- the instance private key file, identical on every member of the instance, at `<instance_key_dir>/<instance>.key`
  (0600) before the gateway service needs it. The gateway config names `instance_key_dir` relative to the config
  file (`wireguard-keys`), so every member reads its own copy from its own lab node directory, as on real machines;
- a WireGuard interface name prefix of this lab (`wireguard.interface_prefix` for gateways and agents): wireguard-go's
  control sockets (`/var/run/wireguard/<if>.sock`) are host-wide, so two labs on one machine must not share names.

Used by tests/e2e/test_wireguard_lab.py and lab/bench/failover_wireguard.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from appliance.datapath.apply.wireguard_keyfiles import begin_rotation, write_key_file
from appliance.datapath.plan.wireguard_keys import PrivateKey, PublicKey
from lab.system import DEFAULT_TOPOLOGY, System

#: relative to each gateway's config file (its lab node directory): a per-member copy of the instance keys
KEY_DIR = "wireguard-keys"
DEFAULT_WG_PREFIX = "wgl-"
WG_RUN_DIR = Path("/var/run/wireguard")


def wireguard_overrides(wg_prefix: str) -> dict[str, Any]:
    """The `wireguard:` section of every gateway config in a WireGuard lab."""
    return {"wireguard": {"instance_key_dir": KEY_DIR, "interface_prefix": wg_prefix}}


def key_dir(system: System, gateway: str) -> Path:
    return system.lab.node_dir(gateway) / KEY_DIR


def install_instance_key(system: System, instance: str, key: PrivateKey | None = None,
                         members: Iterable[str] | None = None) -> PublicKey:
    """Write the same instance private key (0600) on every member (default: every lab gateway); returns its public
    half (what the members publish and the workers use as their peer)."""
    key = key or PrivateKey.generate()
    for gw in members if members is not None else system.gateways:
        write_key_file(key_dir(system, gw) / f"{instance}.key", key)
    return key.public_key()


def start_agent(system: System, worker: str, wg_prefix: str) -> None:
    """`System.start_agent` plus the lab's WireGuard interface prefix."""
    cfg = system.agent_config_for(worker)
    cfg["wireguard"] = {"interface_prefix": wg_prefix}
    path = system.lab.node_dir(worker) / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    system.lab.start_daemon(worker, "egressgw-agent", System.python_module("appliance.cli", "agent", "--config",
                                                                          str(path)))


def up(topology: str | Path = DEFAULT_TOPOLOGY, *, prefix: str, wg_prefix: str = DEFAULT_WG_PREFIX,
       instances: Iterable[str] = (), progress: Callable[[str], None] = lambda _m: None) -> System:
    """A whole-system lab whose gateways can serve WireGuard instances: the instance keys of `instances` are
    installed on every gateway before any service starts; then gateways and agents start."""
    system = System.up(topology, prefix=prefix, start_services=False, progress=progress,
                       gateway_overrides=wireguard_overrides(wg_prefix))
    try:
        for instance in instances:
            install_instance_key(system, instance)
        progress("starting egressgw gateway on " + ", ".join(system.gateways))
        for gw in system.gateways:
            system.start_gateway(gw)
        progress("starting egressgw agent on " + ", ".join(system.workers))
        for w in system.workers:
            start_agent(system, w, wg_prefix)
    except BaseException:
        down(system, wg_prefix)
        raise
    return system


def down(system: System, wg_prefix: str = DEFAULT_WG_PREFIX, *, keep_logs: Path | None = None) -> None:
    """System.down, then the control sockets wireguard-go left behind (its processes die with the namespaces).
    `keep_logs`: copy the lab's logs (services, routers) there first."""
    if keep_logs is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(keep_logs, ignore_errors=True)
            shutil.copytree(system.lab.state_dir / "logs", keep_logs)
    try:
        system.down()
    finally:
        for sock in WG_RUN_DIR.glob(f"{wg_prefix}*.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()


# ----- observing and driving WireGuard on lab nodes -----

def node_links(system: System, node: str, prefix: str) -> list[str]:
    """Links named `prefix*` in the node's namespace."""
    res = system.lab.exec(node, ["ip", "-j", "link", "show"], check=False)
    return sorted(str(li["ifname"]) for li in json.loads(str(res.stdout) or "[]")
                  if str(li["ifname"]).startswith(prefix))


def wg_dump(system: System, node: str, wg_prefix: str = DEFAULT_WG_PREFIX) -> list[dict[str, Any]]:
    """The WireGuard peers of the node's interfaces, one dict per peer (interface, public key, endpoint, allowed
    ips, latest handshake, rx, tx). Only interfaces in the node's namespace: with wireguard-go, `wg show all` lists
    every control socket on the host. Interface lines (with the private key) are dropped at once."""
    peers = []
    for ifname in node_links(system, node, wg_prefix):
        res = system.lab.exec(node, ["wg", "show", ifname, "dump"], check=False)
        for line in str(res.stdout).splitlines()[1:]:
            f = [ifname, *line.split("\t")]
            if len(f) == 9:
                peers.append({"interface": f[0], "public_key": f[1], "endpoint": f[3], "allowed_ips": f[4],
                              "latest_handshake": int(f[5]), "rx": int(f[6]), "tx": int(f[7])})
    return peers


def wg_interfaces(system: System, node: str, wg_prefix: str = DEFAULT_WG_PREFIX) -> dict[str, int]:
    """Our WireGuard interfaces on a lab node -> listen port."""
    out: dict[str, int] = {}
    for ifname in node_links(system, node, wg_prefix):
        res = system.lab.exec(node, ["wg", "show", ifname, "listen-port"], check=False)
        if str(res.stdout).strip().isdigit():
            out[ifname] = int(str(res.stdout).strip())
    return out


def link_stats(system: System, node: str, ifname: str) -> dict[str, int]:
    """rx/tx packet and drop counters of one link (`ip -s -j link show`)."""
    res = system.lab.exec(node, ["ip", "-s", "-j", "link", "show", ifname], check=False)
    data = json.loads(str(res.stdout) or "[]")
    if not data:
        return {}
    stats = data[0].get("stats64") or data[0].get("stats") or {}
    rx, tx = stats.get("rx", {}), stats.get("tx", {})
    return {"rx_packets": int(rx.get("packets", 0)), "rx_dropped": int(rx.get("dropped", 0)),
            "tx_packets": int(tx.get("packets", 0))}


def agent_state_dir(system: System, worker: str) -> Path:
    """Where the worker agent keeps its WireGuard keys (`<state_dir>/wireguard`)."""
    return Path(system.agent_config_for(worker)["state_dir"]) / "wireguard"


def begin_worker_rotation(system: System, worker: str) -> PublicKey:
    """Phase 1 of a key rotation on a worker, as an operator would start it: the next key file appears in the
    agent's key directory; the agent publishes it on its next pass and drives the rest (switch, end)."""
    return begin_rotation(agent_state_dir(system, worker)).public_key


# ----- traffic the tests push at the gateways -----

_SEND_UDP = """
import socket, sys
dev, src, dst, port, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
if dev:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
s.bind((src, 0))
for i in range(count):
    s.sendto(b"egressgw-wireguard-lab %d" % i, (dst, port))
"""


_TCP_ECHO = """
import socket, sys
server, size = sys.argv[1], int(sys.argv[2])
with socket.create_connection((server, 7000), timeout=10) as s:
    s.sendall(b"x" * size + b"\\n")
    buf = b""
    while not buf.endswith(b"\\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    line, _, source = buf.rstrip(b"\\n").rpartition(b"|")
    mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    print(len(line), source.decode(), mss)
"""


def tcp_echo(system: System, lab_pod: str, server: str, size: int) -> tuple[int, str, int]:
    """Send one `size`-byte line over TCP from `lab_pod` to the external server and read the echo: (bytes echoed,
    source the server saw, the connection's MSS). Full-size segments both ways: MTU and MSS clamping at work."""
    res = system.lab.exec(lab_pod, [sys.executable, "-c", _TCP_ECHO, server, str(size)], timeout=30)
    n, source, mss = str(res.stdout).split()
    return int(n), source, int(mss)


def send_udp(system: System, node: str, *, source: str, destination: str, device: str = "", port: int = 7000,
             count: int = 5) -> None:
    """Send `count` UDP datagrams from `source` (an address of the node) to `destination`, out of `device` if
    given."""
    system.lab.exec(node, [sys.executable, "-c", _SEND_UDP, device, source,
                           destination, str(port), str(count)], timeout=20)


@contextlib.contextmanager
def steer_into_tunnel(system: System, worker: str, *, source: str, destination: str, device: str,
                      table: int = 4242) -> Iterator[None]:
    """Push one pod's traffic to `destination` into `device` by hand (an ip rule + a route in a table of its own),
    bypassing egressgw's selection: how a compromised worker would speak for a pod that is not its to speak for."""
    rule = ["rule", "add", "iif", "cni0", "from", source, "to", destination, "lookup", str(table), "priority", "50"]
    system.lab.exec(worker, ["ip", "route", "replace", destination, "dev", device, "table", str(table)])
    system.lab.exec(worker, ["ip", *rule])
    try:
        yield
    finally:
        system.lab.exec(worker, ["ip", "rule", "del", *rule[2:]], check=False)
        system.lab.exec(worker, ["ip", "route", "flush", "table", str(table)], check=False)


def ext_events(system: System, since: int = 0) -> list[dict[str, Any]]:
    """Contacts the external server recorded after sequence number `since`."""
    ext = next(n for n, v in system.nodes.items() if v.role == "external")
    res = system.lab.exec(ext, System.python_module("lab.extclient", "events", "--since", str(since)), timeout=20)
    return list(json.loads(str(res.stdout))["events"])


def ext_last_seq(system: System) -> int:
    events = ext_events(system)
    return max((int(e["seq"]) for e in events), default=0)


@contextlib.contextmanager
def rogue_wireguard(system: System, node: str, name: str, *, peer: str, endpoint: str,
                    address: str = "169.254.99.1/32") -> Iterator[str]:
    """A WireGuard interface in `node` with a fresh key nobody published, whose only peer is `peer` (say, the
    instance public key) at `endpoint` (say, EIP:51820), allowed-ips everything. Deleted on exit."""
    key_path = system.lab.node_dir(node) / f"{name}.key"
    write_key_file(key_path, PrivateKey.generate())
    ns = system.lab.netns(node)
    subprocess.run(["ip", "netns", "exec", ns, "env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
                    "LOG_LEVEL=error", "wireguard-go", name], check=True, timeout=30, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        system.lab.exec(node, ["wg", "set", name, "private-key", str(key_path), "peer", peer, "endpoint", endpoint,
                               "allowed-ips", "0.0.0.0/0,::/0"])
        system.lab.exec(node, ["ip", "addr", "add", address, "dev", name])
        system.lab.exec(node, ["ip", "link", "set", name, "up"])
        yield name
    finally:
        system.lab.exec(node, ["ip", "link", "del", name], check=False)
        with contextlib.suppress(OSError):
            (WG_RUN_DIR / f"{name}.sock").unlink()
        key_path.unlink(missing_ok=True)
