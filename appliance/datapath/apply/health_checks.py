"""The I/O half of gateway member health: observe each check once (the pure rise/fall machine is `bgp.health`).

Each function answers one question about the current network namespace, fast and without raising: a check that
cannot be evaluated counts as failed (and says why in the log), because announcing an EIP we cannot carry is worse
than withdrawing one we could. Link state is read over netlink (not /sys, which shows the host's links when the
process entered the namespace with setns rather than `ip netns exec`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

from pyroute2 import IPRoute

from appliance.core.model import IPAddress
from appliance.datapath.apply.kernel_fingerprint import nft_table_exists

_IFF_UP = 0x1
_IFF_LOWER_UP = 0x10000


def link_up(name: str) -> bool:
    """Administratively up with carrier (operstate UP, or UNKNOWN with lower-up for drivers that do not report)."""
    try:
        with IPRoute() as ipr:
            links = ipr.get_links(ifname=name)
    except Exception:  # no such link raises NetlinkError
        return False
    if not links:
        return False
    link = links[0]
    oper = str(link.get_attr("IFLA_OPERSTATE") or "")
    flags = int(link["flags"])
    if oper == "UP":
        return True
    return oper == "UNKNOWN" and bool(flags & _IFF_UP) and bool(flags & _IFF_LOWER_UP)


def links_present(names: Iterable[str]) -> bool:
    """Every named link exists (the tunnel devices the data path planned); True for an empty list."""
    wanted = set(names)
    if not wanted:
        return True
    try:
        with IPRoute() as ipr:
            present = {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
    except Exception:
        return False
    return wanted <= present


def nft_table_present(family: str, name: str) -> bool:
    """Table FAMILY NAME exists (someone may have flushed the whole ruleset): one netlink request, not a listing."""
    try:
        return nft_table_exists(family, name)
    except OSError:
        return False


def tcp_probe(address: IPAddress, port: int, timeout_s: float) -> bool:
    """A TCP connect to address:port within the timeout (a refused connection also proves reachability)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect((str(address), port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return True


def icmp_probe(address: IPAddress, timeout_s: float) -> bool:
    """One ICMP echo with `ping` (no raw sockets in Python without extra privileges juggling)."""
    ping = shutil.which("ping") or "/usr/bin/ping"
    wait = max(1, round(timeout_s))
    try:
        proc = subprocess.run(
            [ping, "-n", "-q", "-c", "1", "-W", str(wait), str(address)],
            capture_output=True,
            timeout=timeout_s + 2.0,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def upstream_probe(address: IPAddress, port: int | None, timeout_s: float) -> bool:
    return tcp_probe(address, port, timeout_s) if port is not None else icmp_probe(address, timeout_s)


def disabled(disable_file: Path) -> bool:
    """The operator's maintenance switch: the file exists."""
    return disable_file.exists()
