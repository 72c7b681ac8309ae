"""Sampling SNAT port use from conntrack (ctnetlink via pyroute2), with a bounded cost.

Cost bounds (docs/operations.md, "SNAT ports"):
- the dump is filtered by the kernel on our connection mark (`mark_base/mark_mask`: only flows this member SNATs
  for pods are sent to us, not the host's own or anyone else's);
- at most `max_entries` entries are read per sample (both families together); past the cap the sample stops and is
  marked truncated (the figures are then lower bounds);
- the whole sample runs under `timeout_s`; a dump cut by it is truncated too;
- `SnatPortSampler` samples at most every `interval_s`: a scrape in between reuses the last figures.

The figures themselves come from the pure `appliance.datapath.plan.snat_ports.port_use`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.exceptions import NetlinkError

from appliance.core.model import IPAddress
from appliance.datapath.plan.snat_ports import (
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_ENTRIES,
    NatFlow,
    SnatSample,
    port_use,
)

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleLimits:
    max_entries: int = DEFAULT_MAX_ENTRIES
    timeout_s: float = DEFAULT_TIMEOUT_S
    interval_s: float = DEFAULT_INTERVAL_S


def as_flow(entry: Any) -> NatFlow | None:
    """A pyroute2 ConntrackEntry -> NatFlow (None when its reply tuple is unreadable)."""
    reply = entry.tuple_reply
    try:
        eip = ip_address(str(reply.daddr))
        server = ip_address(str(reply.saddr))
    except ValueError:
        return None
    port = reply.sport if reply.sport is not None else 0
    return NatFlow(proto=int(reply.proto or 0), eip=eip, server=server, server_port=int(port))


async def _dump(families: Iterable[int], *, mark: int, mask: int, max_entries: int, netns: str | None,
                flows: list[NatFlow]) -> bool:
    """Append up to `max_entries` flows of `families` to `flows`; True when the cap cut the dump."""
    for family in families:
        if netns is None:
            ct = AsyncConntrack(nfgen_family=family)
        else:  # flags=0: a missing namespace is an error, never created
            ct = AsyncConntrack(nfgen_family=family, netns=netns, flags=0)
        try:
            async for entry in await ct.dump_entries(mark=mark, mark_mask=mask):
                if len(flows) >= max_entries:
                    return True
                flow = as_flow(entry)
                if flow is not None:
                    flows.append(flow)
        finally:
            ct.close()
    return False


def sample_snat_ports(
    eips: Iterable[IPAddress], *, mark: int, mask: int, limits: SampleLimits = SampleLimits(),
    netns: str | None = None, clock: Callable[[], float] = time.monotonic,
) -> SnatSample:
    """One bounded sample: per EIP in `eips`, the SNAT entries in use and the most toward one destination."""
    eips = tuple(eips)
    families = [f for f, v in ((socket.AF_INET, 4), (socket.AF_INET6, 6)) if any(e.version == v for e in eips)]
    flows: list[NatFlow] = []
    start = clock()
    truncated = False
    if families:
        try:
            truncated = asyncio.run(asyncio.wait_for(
                _dump(families, mark=mark, mask=mask, max_entries=limits.max_entries, netns=netns, flows=flows),
                timeout=limits.timeout_s))
        except TimeoutError:
            truncated = True
    return SnatSample(eips=port_use(flows, eips), entries_read=len(flows), truncated=truncated,
                      seconds=clock() - start)


Sample = Callable[[tuple[IPAddress, ...]], SnatSample]


class SnatPortSampler:
    """Samples at most every `limits.interval_s` (thread-safe: scrapes may overlap); a failed sample is logged by the
    caller and the last good figures stay."""

    def __init__(self, eips: Callable[[], Iterable[IPAddress]], sample: Sample, *,
                 interval_s: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._eips = eips
        self._sample = sample
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._last: SnatSample | None = None
        self._last_eips: tuple[IPAddress, ...] = ()

    def figures(self) -> SnatSample | None:
        """The latest sample, taking a new one when the last is older than the interval or the EIPs changed."""
        with self._lock:
            now = self._clock()
            eips = tuple(sorted(set(self._eips()), key=lambda a: (a.version, int(a))))
            fresh = self._at is not None and now - self._at < self._interval_s and eips == self._last_eips
            if not fresh:
                self._at = now
                try:
                    self._last = self._sample(eips)
                    self._last_eips = eips
                except (NetlinkError, OSError, ValueError):
                    pass  # keep the last figures; the next interval tries again
            return self._last
