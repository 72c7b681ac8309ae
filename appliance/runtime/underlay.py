"""Find this node's underlay (worker) or uplink (gateway) interface and addresses, from config or the kernel.

Why at run time and not in the config loader: a config must validate on any machine (CI, `egressgw validate`),
while detection reads the running network namespace. The rule is simple and documented: an explicit interface and
addresses win; a missing interface is the one carrying the configured address, else the default route's outgoing
interface (IPv4 first, then IPv6); missing addresses are that interface's global addresses (first of each family).
Runs in whatever network namespace the process is in (the lab starts the commands with `ip netns exec`).
Only the service commands import this module (`egressgw validate` checks a config without it, so without netlink).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from appliance.core.model import IPAddress
from appliance.runtime.config import InterfaceSettings


class UnderlayError(Exception):
    """The interface or addresses could not be determined (the command exits 1 with this message)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Underlay:
    interface: str
    index: int
    addresses: tuple[IPAddress, ...]
    mtu: int

    def address(self, version: int) -> IPAddress | None:
        return next((a for a in self.addresses if a.version == version), None)


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _global_addresses(ipr: Any, index: int) -> list[IPAddress]:
    out: list[IPAddress] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_addr(index=index, family=family):
            if msg["scope"] != 0:  # only RT_SCOPE_UNIVERSE: no link-local, no host
                continue
            ip = ipaddress.ip_address(_attr(msg, "IFA_ADDRESS"))
            if ip.is_link_local or any(a.version == ip.version for a in out):
                continue
            out.append(ip)
    return out


def detect_underlay(settings: InterfaceSettings, *, what: str = "underlay") -> Underlay:
    """Resolve `settings` against the kernel of the current network namespace."""
    with IPRoute() as ipr:
        index: int | None = None
        if settings.interface is not None:
            found = ipr.link_lookup(ifname=settings.interface)
            if not found:
                raise UnderlayError(f"{what}.interface: no interface named {settings.interface!r}")
            index = int(found[0])
        elif settings.addresses:
            for msg in ipr.get_addr():
                if ipaddress.ip_address(_attr(msg, "IFA_ADDRESS")) in settings.addresses:
                    index = int(msg["index"])
                    break
            if index is None:
                raise UnderlayError(f"{what}.addresses: no interface carries {settings.addresses[0]}")
        else:
            for family in (socket.AF_INET, socket.AF_INET6):
                for route in ipr.get_default_routes(family=family):
                    oif = _attr(route, "RTA_OIF")
                    if oif is None:  # multipath default route: take the first hop's interface
                        hops = _attr(route, "RTA_MULTIPATH") or []
                        oif = hops[0]["oif"] if hops else None
                    if oif is not None:
                        index = int(oif)
                        break
                if index is not None:
                    break
            if index is None:
                raise UnderlayError(f"{what}: no default route to detect the interface from; set {what}.interface")
        link = ipr.get_links(index)[0]
        name = str(_attr(link, "IFLA_IFNAME"))
        mtu = int(_attr(link, "IFLA_MTU") or 1500)
        addresses = settings.addresses or tuple(_global_addresses(ipr, index))
    if not addresses:
        raise UnderlayError(f"{what}: interface {name} has no global address; set {what}.addresses")
    return Underlay(interface=name, index=index, addresses=tuple(sorted(addresses, key=lambda a: a.version)), mtu=mtu)
