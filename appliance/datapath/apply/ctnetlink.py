"""A minimal ctnetlink socket for the conntrack flush: dump a family's table, delete single entries, nothing else.

Why not pyroute2's `AsyncConntrack` (what the flush used before): it decodes every attribute of every entry into
Python objects, ~0.7 ms per entry on a loaded 2-core machine. The flush must read the whole table of the family
(entries are selected by original-direction source here, see `appliance.datapath.apply.conntrack`), and a worker
whose pods open many short flows holds tens of thousands of entries: the flush then ran into its deadline on every
pass, each pass took the whole deadline (5 s) and every pod event behind it waited that long (the convergence
benchmark went from ~0.16 s to ~5 s). This socket reads only what the flush needs from each entry - the original
tuple's source address, the raw original tuple and the zone - and hands the raw tuple back unchanged in the delete
request, so an entry costs microseconds.

It speaks the `ConntrackSocket` protocol of `appliance.datapath.apply.conntrack` (async, on a non-blocking socket
driven by the running event loop, so the flush's deadline can cancel a read). Errors the kernel answers are raised
as pyroute2's `NetlinkError` (the flush already tells ENOENT from real failures by it).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from appliance.core.model import IPAddress

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF
CTA_TUPLE_ORIG, CTA_ZONE, CTA_FILTER = 1, 18, 25
CTA_TUPLE_IP = 1
CTA_IP_V4_SRC, CTA_IP_V6_SRC = 1, 3
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
#: CTA_FILTER flag: match the original tuple's source address (Linux >= 5.8)
CTA_FILTER_F_CTA_IP_SRC = 1 << 0
NLA_F_NESTED = 0x8000
#: at most this many kernel-filtered dumps per flush and family; more sources read the table once instead
MAX_FILTERED_DUMPS = 8
CLONE_NEWNET = 0x40000000

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_NFGEN = struct.Struct("=BBH")
_RCVBUF = 1 << 20


@dataclass(frozen=True, slots=True)
class RawTuple:
    """An entry's original tuple: its source address (text) and the attribute as the kernel sent it."""

    saddr: str
    raw: bytes

    def __repr__(self) -> str:
        return f"RawTuple(saddr={self.saddr})"


@dataclass(frozen=True, slots=True)
class RawEntry:
    tuple_orig: RawTuple
    zone: int | None


def attributes(data: bytes | memoryview, start: int = 0, end: int | None = None) -> dict[int, tuple[int, int]]:
    """Netlink attributes in data[start:end]: type (flags masked off) -> (offset of the attribute, its length)."""
    out: dict[int, tuple[int, int]] = {}
    end = len(data) if end is None else end
    pos = start
    while pos + 4 <= end:
        length, kind = _NLA.unpack_from(data, pos)
        if length < 4 or pos + length > end:
            break
        out[kind & NLA_TYPE_MASK] = (pos, length)
        pos += (length + 3) & ~3
    return out


def parse_entry(msg: bytes, family: int) -> RawEntry | None:
    """One IPCTNL_MSG_CT_NEW message of a dump (after the netlink header) -> the entry, None when unreadable."""
    top = attributes(msg, _NFGEN.size)
    if CTA_TUPLE_ORIG not in top:
        return None
    t_off, t_len = top[CTA_TUPLE_ORIG]
    ip = attributes(msg, t_off + 4, t_off + t_len).get(CTA_TUPLE_IP)
    if ip is None:
        return None
    src_kind, size = (CTA_IP_V4_SRC, 4) if family == socket.AF_INET else (CTA_IP_V6_SRC, 16)
    src = attributes(msg, ip[0] + 4, ip[0] + ip[1]).get(src_kind)
    if src is None or src[1] != 4 + size:
        return None
    saddr = str(ip_address(bytes(msg[src[0] + 4:src[0] + 4 + size])))
    zone = None
    if CTA_ZONE in top and top[CTA_ZONE][1] >= 6:
        zone = struct.unpack_from("!H", msg, top[CTA_ZONE][0] + 4)[0]
    return RawEntry(RawTuple(saddr, bytes(msg[t_off:t_off + t_len])), zone)


def _family(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _attr(kind: int, payload: bytes) -> bytes:
    data = _NLA.pack(4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def delete_payload(tuple_orig: RawTuple, zone: int | None) -> bytes:
    """The attributes of a delete request for one entry: its original tuple as dumped, and its zone."""
    return tuple_orig.raw + (b"" if zone is None else _attr(CTA_ZONE, struct.pack("!H", zone)))


def source_filter(source: IPAddress) -> bytes:
    """The attributes of a dump request the kernel filters on the original tuple's source address."""
    kind = CTA_IP_V4_SRC if source.version == 4 else CTA_IP_V6_SRC
    ip = _attr(CTA_TUPLE_IP | NLA_F_NESTED, _attr(kind, source.packed))
    flags = _attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", CTA_FILTER_F_CTA_IP_SRC))
    flags += _attr(CTA_FILTER_REPLY_FLAGS, struct.pack("=I", 0))
    return _attr(CTA_TUPLE_ORIG | NLA_F_NESTED, ip) + _attr(CTA_FILTER | NLA_F_NESTED, flags)


def _open_in_netns(netns: str) -> socket.socket:
    """A netlink socket created inside the named network namespace, by a short-lived thread that enters it (setns
    changes only the calling thread's namespace; the socket stays bound to the namespace it was created in)."""
    result: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
                result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
            finally:
                os.close(fd)
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    t = threading.Thread(target=enter, name=f"netns-{netns}")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class RawConntrack:
    """Dump and delete the conntrack entries of one address family (a `conntrack.ConntrackSocket`)."""

    def __init__(self, family: int, *, netns: str | None = None, sources: Sequence[IPAddress] | None = None) -> None:
        """`sources`: IPv4 only, dump only the entries of these original-direction sources (the kernel filters: one
        dump per source, up to `MAX_FILTERED_DUMPS` sources; a kernel that refuses the filter gets one dump of the
        whole table instead). IPv6 always
        reads the whole table: the kernel's IPv6 source filter (6.18 here) sends exactly the entries that do NOT
        match. Either way the caller selects by source again, so a wrong filter can only miss entries, never delete
        another source's. None: every entry."""
        self.family = family
        mine = tuple(s for s in sources or () if _family(s) == family)
        # each filtered dump still walks the whole kernel table: past a few sources one unfiltered dump is cheaper
        # (a policy change moves many pod IPs at once; pod churn moves one or two)
        filtered = sources is not None and family == socket.AF_INET and len(mine) <= MAX_FILTERED_DUMPS
        self.sources = mine if filtered else None
        self.sock = (_open_in_netns(netns) if netns is not None
                     else socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        self.sock.bind((0, 0))
        self.sock.setblocking(False)
        self.seq = 0

    def _request(self, msg_type: int, flags: int, payload: bytes) -> tuple[bytes, int]:
        self.seq += 1
        body = _NFGEN.pack(self.family, 0, 0) + payload
        kind = (NFNL_SUBSYS_CTNETLINK << 8) | msg_type
        return _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | flags, self.seq, 0) + body, self.seq

    async def _messages(self, seq: int) -> AsyncIterator[tuple[int, memoryview]]:
        """(type, payload) of the answers to request `seq`, until DONE or an ack/error (raised when not 0)."""
        loop = asyncio.get_running_loop()
        while True:
            data = memoryview(await loop.sock_recv(self.sock, _RCVBUF))
            pos = 0
            while pos + _NLMSG.size <= len(data):
                length, kind, _, mseq, _ = _NLMSG.unpack_from(data, pos)
                if length < _NLMSG.size:
                    return
                payload = data[pos + _NLMSG.size:pos + length]
                pos += (length + 3) & ~3
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload, 0)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return
                yield kind, payload

    async def dump_entries(self, *, tuple_orig: Any = None) -> AsyncIterator[RawEntry]:
        """The entries of the family (of `sources` only, when given). `tuple_orig` must be None: the caller
        selects by source again in any case."""
        if tuple_orig is not None:
            raise ValueError("RawConntrack takes no tuple filter (see `sources`)")
        return self._dump()

    async def _dump(self) -> AsyncIterator[RawEntry]:
        if self.sources is not None:
            try:
                for source in self.sources:
                    async for entry in self._entries(source_filter(source)):
                        yield entry
                return
            except NetlinkError as e:
                if e.code not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                # a kernel without CTA_FILTER (< 5.8): the whole table, selected by the caller
        async for entry in self._entries(b""):
            yield entry

    async def _entries(self, attrs: bytes) -> AsyncIterator[RawEntry]:
        request, seq = self._request(IPCTNL_MSG_CT_GET, NLM_F_DUMP, attrs)
        await asyncio.get_running_loop().sock_sendall(self.sock, request)
        async for _, payload in self._messages(seq):
            entry = parse_entry(bytes(payload), self.family)
            if entry is not None:
                yield entry

    async def entry(self, cmd: str, **kwarg: Any) -> None:
        """`entry("del", tuple_orig=<RawTuple>, zone=<int|None>)`: delete one entry (acknowledged)."""
        if cmd != "del":
            raise ValueError(f"unsupported conntrack command {cmd!r}")
        tuple_orig: RawTuple = kwarg["tuple_orig"]
        zone: int | None = kwarg.get("zone")
        request, seq = self._request(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, delete_payload(tuple_orig, zone))
        await asyncio.get_running_loop().sock_sendall(self.sock, request)
        async for _ in self._messages(seq):
            pass

    def close(self) -> None:
        self.sock.close()
