"""Conntrack flush result logic (appliance.datapath.apply.conntrack) with a fake ctnetlink socket: no kernel."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from appliance.datapath.apply.conntrack import (
    ConntrackFailure,
    ConntrackSocket,
    PodFlushOutcome,
    flush_with,
    summarize,
)

A, B, V6 = ip_address("100.64.1.10"), ip_address("100.64.1.11"), ip_address("2001:db8:64::10")


@dataclass
class Tuple:
    saddr: str


@dataclass
class Entry:
    tuple_orig: Tuple
    zone: int | None = None


@dataclass
class FakeSocket:
    entries: list[Entry]
    fail_delete: dict[str, int] = field(default_factory=dict)
    dump_error: Exception | None = None
    delay_s: float = 0.0
    deleted: list[str] = field(default_factory=list)
    closed: bool = False

    async def dump_entries(self, *, tuple_orig: Any = None) -> AsyncIterator[Any]:
        if self.dump_error is not None:
            raise self.dump_error

        async def gen() -> AsyncIterator[Any]:
            for e in self.entries:
                yield e
        return gen()

    async def entry(self, cmd: str, **kwarg: Any) -> Any:
        await asyncio.sleep(self.delay_s)
        src = kwarg["tuple_orig"].saddr
        if src in self.fail_delete:
            raise NetlinkError(self.fail_delete[src])
        self.deleted.append(src)

    def close(self) -> None:
        self.closed = True


def opener(sock: FakeSocket) -> Any:
    def open_socket(family: int) -> ConntrackSocket:
        return sock
    return open_socket


def test_deletes_only_entries_of_the_pod_ips() -> None:
    sock = FakeSocket([Entry(Tuple(str(A))), Entry(Tuple("100.64.9.9")), Entry(Tuple(str(A)), zone=3)])
    result = flush_with([A], opener(sock))
    assert result.ok and result.deleted == 2 and result.flushed == (A,)
    assert result.changes() == (f"conntrack flush {A}",)
    assert sock.deleted == [str(A), str(A)] and sock.closed


def test_vanished_entry_counts_as_gone_other_errors_fail() -> None:
    sock = FakeSocket([Entry(Tuple(str(A))), Entry(Tuple(str(B)))], fail_delete={str(A): errno.ENOENT,
                                                                                  str(B): errno.EPERM})
    result = flush_with([B, A], opener(sock))
    assert result.already_gone == 1 and result.deleted == 0
    assert result.flushed == (A,) and result.failed_pod_ips == (B,) and not result.ok
    assert "EPERM" in result.problems()[0]


def test_dump_failure_fails_every_pod_of_the_family() -> None:
    sock = FakeSocket([], dump_error=OSError(errno.EACCES, "denied"))
    result = flush_with([A, B], opener(sock))
    assert not result.ok and result.flushed == () and result.failed_pod_ips == (A, B)
    assert all(f.entry is None for f in result.failures)


def test_timeout_is_reported_and_unfinished_pods_are_not_flushed() -> None:
    sock = FakeSocket([Entry(Tuple(str(A))), Entry(Tuple(str(B)))], delay_s=0.5)
    result = flush_with([A, B], opener(sock), timeout_s=0.2)
    assert result.timed_out and not result.ok and result.flushed == ()
    assert result.incomplete == (A, B) and "timed out" in result.problems()[-1]


def test_summarize_never_reports_a_missing_outcome_as_flushed() -> None:
    failure = ConntrackFailure(pod_ip=V6, entry="x", reason="r")
    result = summarize([A, B, V6], [PodFlushOutcome(pod_ip=A, deleted=2, complete=True),
                                    PodFlushOutcome(pod_ip=V6, deleted=1, failures=(failure,), complete=True)],
                       timed_out=False)
    assert result.flushed == (A,) and result.incomplete == (B,) and result.failures == (failure,)
    assert result.deleted == 3 and not result.ok
    assert flush_with([], opener(FakeSocket([]))).ok
