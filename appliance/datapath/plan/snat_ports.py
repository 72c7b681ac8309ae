"""SNAT source-port use per EIP (pure): conntrack entries -> the figures of `egressgw_snat_*`.

Why it matters: every connection from one EIP to the same destination (address, port, protocol) needs its own
source port, so the port range of the EIP toward *one* destination is what runs out first (a busy API behind one
address), long before the EIP as a whole does. The figure to watch is therefore the highest count toward any one
destination, as a fraction of the range (`egressgw_snat_port_use_ratio_max`).

Which range: the gateway's SNAT rules (`gateway_nft`, `snat ... to ip saddr . ip daddr map @snat4`) give an address
and no port range, so the kernel keeps the pod's source port when the translated tuple is still unique and otherwise
picks one from its default range: 1024-65535 for a source port >= 1024 (`nf_nat_l4proto_unique_tuple`; privileged
source ports below 1024 stay below 1024). That is `SNAT_PORT_RANGE`, 64512 ports.

An entry is read in its reply direction: reply source = the server (address, port), reply destination = the EIP
and the translated source port. ICMP flows count too (the echo id plays the port), keyed by destination address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from appliance.core.model import IPAddress

#: the kernel's default SNAT source-port range for unprivileged source ports (no explicit range in our rules)
SNAT_PORT_MIN = 1024
SNAT_PORT_MAX = 65535
SNAT_PORT_RANGE = SNAT_PORT_MAX - SNAT_PORT_MIN + 1

#: default cost bounds of one conntrack sample (apply.snat_ports): entries read at most, and the minimum seconds
#: between two samples (a scrape in between reuses the last figures)
DEFAULT_MAX_ENTRIES = 200_000
DEFAULT_INTERVAL_S = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NatFlow:
    """One conntrack entry as seen from its reply direction."""

    proto: int
    #: the translated source (the EIP for our SNAT) and its port
    eip: IPAddress
    #: the server: the original destination address and port (0 for ICMP)
    server: IPAddress
    server_port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EipPorts:
    eip: str
    #: entries whose translated source is this EIP, all destinations
    in_use: int
    #: the most entries toward one destination (address, port, protocol)
    in_use_max: int
    port_range: int = SNAT_PORT_RANGE

    @property
    def ratio_max(self) -> float:
        return min(1.0, self.in_use_max / self.port_range) if self.port_range else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SnatSample:
    """The figures of one sample. `truncated`: the entry cap was reached or the deadline cut the dump, so the counts
    are lower bounds. `seconds`: what the sample cost (wall time of the dump)."""

    eips: tuple[EipPorts, ...]
    entries_read: int
    truncated: bool
    seconds: float


def port_use(flows: Iterable[NatFlow], eips: Iterable[IPAddress]) -> tuple[EipPorts, ...]:
    """Per EIP (every one of `eips`, 0 when unused; sorted v4 first): entries in use and the most toward one
    destination. Entries translated to other addresses are ignored."""
    wanted = {e: str(e) for e in eips}
    total: dict[IPAddress, int] = dict.fromkeys(wanted, 0)
    per_dest: dict[tuple[IPAddress, int, IPAddress, int], int] = {}
    for f in flows:
        if f.eip not in total:
            continue
        total[f.eip] += 1
        key = (f.eip, f.proto, f.server, f.server_port)
        per_dest[key] = per_dest.get(key, 0) + 1
    top: dict[IPAddress, int] = dict.fromkeys(wanted, 0)
    for (eip, _, _, _), n in per_dest.items():
        top[eip] = max(top[eip], n)
    return tuple(
        EipPorts(eip=wanted[e], in_use=total[e], in_use_max=top[e])
        for e in sorted(wanted, key=lambda a: (a.version, int(a)))
    )
