"""Deleting a pod's conntrack entries over ctnetlink, bounded in time and honest about failures.

Why: when a pod's steering changes (it starts or stops being steered, or moves to another EIP), the connections it
opened before keep their NAT binding. A flow that stops being steered would leave with the raw pod IP (its binding
was our identity SNAT, which bypasses the CNI's masquerade); one that starts being steered would enter the tunnel
already masqueraded to the node IP, which the gateway refuses. Deleting the pod's entries makes those flows restart
with the new path instead of hanging.

How: one dump of the conntrack table per address family, the entries whose *original-direction source* is one of
the pod IPs selected here (by exact address, so an entry of another source is never deleted), then one delete per
entry, in its zone. Every
call is checked: an entry that vanished between dump and delete (ENOENT) is counted as already gone, any other error
is a failure naming the pod IP, the entry and the reason. The whole flush runs under one deadline; what was not done
in time is reported, never counted as flushed. This replaces a `conntrack -D` subprocess per pod whose exit status
could not tell "nothing to delete" from "failed". The socket is `appliance.datapath.apply.ctnetlink.RawConntrack`,
which reads only the source, raw tuple and zone of each entry: decoding every entry in full (pyroute2) made a table
of a few tens of thousands of entries outlast the deadline on every pass, and each such pass held the reconcile loop
(and every pod event behind it) for the whole deadline.

Call it from synchronous code (it runs its own asyncio loop over a non-blocking netlink socket, which is what makes
the deadline enforceable: a stuck netlink read is cancelled, not waited for).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any, Protocol

from pyroute2.netlink.exceptions import NetlinkError

from appliance.core.events import error_text
from appliance.core.model import IPAddress
from appliance.datapath.apply.ctnetlink import RawConntrack

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConntrackFailure:
    """One thing that could not be done: listing a pod IP's entries (`entry` is None) or deleting one entry."""

    pod_ip: IPAddress
    entry: str | None
    reason: str

    def describe(self) -> str:
        what = f"entry {self.entry}" if self.entry is not None else "listing its entries"
        return f"conntrack flush {self.pod_ip}: {what} failed: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PodFlushOutcome:
    """What happened to one pod IP. `complete` is True only when its dump finished and every entry was handled."""

    pod_ip: IPAddress
    deleted: int = 0
    already_gone: int = 0
    failures: tuple[ConntrackFailure, ...] = ()
    complete: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ConntrackFlushResult:
    """The outcome of one `flush_pod_conntrack` call.

    `flushed` lists the pod IPs whose entries are all gone (deleted, or vanished on their own); `incomplete` the ones
    the deadline cut off (not started, or stopped half-way). `ok` is True only when every requested pod IP is in
    `flushed`: a failure or a timeout is never reported as success.
    """

    requested: tuple[IPAddress, ...]
    flushed: tuple[IPAddress, ...] = ()
    deleted: int = 0
    already_gone: int = 0
    failures: tuple[ConntrackFailure, ...] = ()
    incomplete: tuple[IPAddress, ...] = ()
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures and not self.timed_out and len(self.flushed) == len(self.requested)

    @property
    def failed_pod_ips(self) -> tuple[IPAddress, ...]:
        """Pod IPs with at least one failure, each once, in request order."""
        bad = {f.pod_ip for f in self.failures}
        return tuple(ip for ip in self.requested if ip in bad)

    def changes(self) -> tuple[str, ...]:
        """One `conntrack flush <ip>` line per flushed pod IP (the change lines of an apply pass)."""
        return tuple(f"conntrack flush {ip}" for ip in self.flushed)

    def problems(self) -> tuple[str, ...]:
        """One line per failure, plus one for the deadline when it cut the flush short (for logs and failures)."""
        lines = [f.describe() for f in self.failures]
        if self.timed_out:
            cut = ", ".join(str(ip) for ip in self.incomplete) or "-"
            lines.append(f"conntrack flush timed out; not finished for: {cut}")
        return tuple(lines)


def ordered_pod_ips(pod_ips: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    """The distinct pod IPs, IPv4 first then IPv6, numerically: a deterministic order for the work and the result."""
    return tuple(sorted(set(pod_ips), key=lambda a: (a.version, int(a))))


def summarize(
    requested: Sequence[IPAddress], outcomes: Sequence[PodFlushOutcome], *, timed_out: bool
) -> ConntrackFlushResult:
    """Fold per-pod outcomes into the call's result (pure).

    A pod IP counts as flushed only when its outcome is complete and has no failure; a requested IP without an
    outcome was never reached and is incomplete (which only a timeout explains; without one it is still not
    reported as flushed).
    """
    by_ip = {o.pod_ip: o for o in outcomes}
    flushed: list[IPAddress] = []
    incomplete: list[IPAddress] = []
    failures: list[ConntrackFailure] = []
    for ip in requested:
        outcome = by_ip.get(ip)
        if outcome is None or not outcome.complete:
            incomplete.append(ip)
        if outcome is None:
            continue
        failures.extend(outcome.failures)
        if outcome.complete and not outcome.failures:
            flushed.append(ip)
    return ConntrackFlushResult(
        requested=tuple(requested),
        flushed=tuple(flushed),
        deleted=sum(o.deleted for o in outcomes),
        already_gone=sum(o.already_gone for o in outcomes),
        failures=tuple(failures),
        incomplete=tuple(incomplete),
        timed_out=timed_out,
    )


class ConntrackEntryLike(Protocol):
    """The part of pyroute2's `ConntrackEntry` used here."""

    tuple_orig: Any
    zone: int | None


class ConntrackSocket(Protocol):
    """The ctnetlink calls the flush needs (pyroute2's `AsyncConntrack`, or a fake in tests)."""

    async def dump_entries(self, *, tuple_orig: Any = None) -> AsyncIterator[Any]: ...

    async def entry(self, cmd: str, **kwarg: Any) -> Any: ...

    def close(self) -> None: ...


OpenSocket = Callable[[int], ConntrackSocket]


@dataclass(slots=True, kw_only=True)
class _Progress:
    """Per-pod bookkeeping shared with the coroutine, so a deadline still leaves an exact account of what was done."""

    deleted: int = 0
    already_gone: int = 0
    failures: list[ConntrackFailure] = field(default_factory=list)
    complete: bool = False


def _family(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _source(entry: ConntrackEntryLike) -> IPAddress | None:
    """The original-direction source of an entry (None when unreadable: such an entry is never deleted)."""
    try:
        return ip_address(str(entry.tuple_orig.saddr))
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"netlink error {exc.code}: {errno.errorcode.get(exc.code, '?')}"
    return error_text(exc)


async def _delete_entries(ct: ConntrackSocket, pod_ip: IPAddress, entries: Sequence[Any], progress: _Progress) -> None:
    for entry in entries:
        try:
            await ct.entry("del", tuple_orig=entry.tuple_orig, zone=entry.zone)
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:  # expired or deleted by someone else since the dump: gone all the same
                progress.already_gone += 1
                continue
            progress.failures.append(ConntrackFailure(pod_ip=pod_ip, entry=repr(entry.tuple_orig), reason=_reason(exc)))
        except (OSError, ValueError) as exc:
            progress.failures.append(ConntrackFailure(pod_ip=pod_ip, entry=repr(entry.tuple_orig), reason=_reason(exc)))
        else:
            progress.deleted += 1
    progress.complete = True


async def _flush_family(
    family: int, pod_ips: Sequence[IPAddress], open_socket: OpenSocket, progress: dict[IPAddress, _Progress]
) -> None:
    """One dump of the family's table, then the deletes, pod IP by pod IP.

    The dump is unfiltered on the kernel side (pyroute2 0.9.7's source-address filter finds no IPv6 entry): the
    entries are selected here, by exact original-direction source.
    """
    ct: ConntrackSocket | None = None
    try:
        ct = open_socket(family)
        wanted = set(pod_ips)
        by_source: dict[IPAddress, list[Any]] = {ip: [] for ip in pod_ips}
        async for entry in await ct.dump_entries(tuple_orig=None):
            source = _source(entry)
            if source in wanted:
                by_source[source].append(entry)
    except (NetlinkError, OSError, ValueError) as exc:
        for ip in pod_ips:
            progress[ip].failures.append(ConntrackFailure(pod_ip=ip, entry=None, reason=_reason(exc)))
            progress[ip].complete = True
        if ct is not None:
            ct.close()
        return
    try:
        for ip in pod_ips:
            await _delete_entries(ct, ip, by_source[ip], progress[ip])
    finally:
        ct.close()


async def _flush_all(
    pod_ips: Sequence[IPAddress], open_socket: OpenSocket, progress: dict[IPAddress, _Progress]
) -> None:
    for ip in pod_ips:
        progress.setdefault(ip, _Progress())
    for family in (socket.AF_INET, socket.AF_INET6):
        of_family = [ip for ip in pod_ips if _family(ip) == family]
        if of_family:
            await _flush_family(family, of_family, open_socket, progress)


def flush_with(
    pod_ips: Iterable[IPAddress], open_socket: OpenSocket, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> ConntrackFlushResult:
    """`flush_pod_conntrack` with the socket factory as a parameter (tests pass a fake)."""
    requested = ordered_pod_ips(pod_ips)
    progress: dict[IPAddress, _Progress] = {}
    timed_out = False
    if requested:
        try:
            asyncio.run(asyncio.wait_for(_flush_all(requested, open_socket, progress), timeout=timeout_s))
        except TimeoutError:
            timed_out = True
    outcomes = [
        PodFlushOutcome(pod_ip=ip, deleted=p.deleted, already_gone=p.already_gone,
                        failures=tuple(p.failures), complete=p.complete)
        for ip, p in progress.items()
    ]
    return summarize(requested, outcomes, timed_out=timed_out)


def flush_pod_conntrack(
    pod_ips: Iterable[IPAddress], *, timeout_s: float = DEFAULT_TIMEOUT_S, netns: str | None = None
) -> ConntrackFlushResult:
    """Delete every conntrack entry whose original-direction source is one of `pod_ips` (IPv4 and IPv6).

    Bounded by `timeout_s` for the whole call. `netns` (a named network namespace) is for tests; the services run
    in the namespace they manage.
    """
    wanted = ordered_pod_ips(pod_ips)

    def open_socket(family: int) -> ConntrackSocket:
        # the kernel sends only the entries of the pod IPs; a missing namespace is an error (nothing is created)
        return RawConntrack(family, netns=netns, sources=wanted)

    return flush_with(wanted, open_socket, timeout_s=timeout_s)


def conntrack_changes(result: ConntrackFlushResult) -> tuple[str, ...]:
    """The change lines of a flush for a pass's report: one per flushed pod IP, then how many entries were deleted
    (and had already gone on their own) - never a line for a pod IP whose flush failed or did not finish."""
    if not result.requested:
        return ()
    summary = f"conntrack deleted {result.deleted} entries"
    if result.already_gone:
        summary += f" ({result.already_gone} already gone)"
    return (*result.changes(), summary)
