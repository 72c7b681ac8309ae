"""A cheap fingerprint of the kernel state a resync would otherwise list in full: nft generation + our routes' hash.

Why: a resync pass with nothing to do used to list our nft table (40k set elements at 10k pods) and our routes
(10k), parse both and diff them against the plan: about 1.5 s of CPU every 30 s per node. Two kernel facts tell,
for a few milliseconds, whether any of that can have changed since a pass verified it:
- the nftables **ruleset generation** (netlink NFT_MSG_GETGEN): a per-namespace counter the kernel bumps on every
  committed nft transaction, ours or anyone's (someone deleting one element by hand bumps it too). libnftables has
  no call for it, so we ask netlink directly (one request, one answer);
- a **hash of our routes**: one RTM_GETROUTE dump per family, filtered by the kernel to `proto OWN_PROTO` (strict
  dump checking), hashed as raw attribute bytes without parsing (the netlink headers, which carry sequence numbers,
  are left out). Routes of other protocols are skipped here too, for a kernel that ignores the dump filter.

How the applier uses it: `appliance.datapath.apply.applier` (the decision itself is `shortcut_decision`, pure).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import struct
from dataclasses import dataclass

from appliance.datapath.apply.nft_exec import in_netns
from appliance.datapath.plan.kernel_model import OWN_PROTO

_NETLINK_NETFILTER = 12
_SOL_NETLINK = 270
_NETLINK_GET_STRICT_CHK = 12
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
_NFT_MSG_NEWGEN = (10 << 8) | 15
_NFTA_GEN_ID = 1
_RTM_GETROUTE, _RTM_NEWROUTE = 26, 24
_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a resync compares: equal fingerprints = neither our nft table nor our routes changed in between."""

    nft_generation: int
    routes_sha256: str


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each netlink message in one datagram."""
    out: list[tuple[int, bytes]] = []
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, _, _, _ = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            break
        out.append((mtype, data[off + _HDR.size:off + length]))
        off += (length + 3) & ~3
    return out


def _error(payload: bytes) -> int:
    return -int(struct.unpack_from("=i", payload)[0]) if len(payload) >= 4 else 0


def nft_generation() -> int:
    """The ruleset generation id of the calling thread's network namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as s:
        s.bind((0, 0))
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)  # nfgenmsg: family, version, res_id
        s.send(_HDR.pack(_HDR.size + len(body), _NFT_MSG_GETGEN, _NLM_F_REQUEST, 1, 0) + body)
        for mtype, payload in _messages(s.recv(65536)):
            if mtype == _NLMSG_ERROR and _error(payload):
                raise OSError(_error(payload), "NFT_MSG_GETGEN refused")
            if mtype == _NFT_MSG_NEWGEN:
                off = 4  # after nfgenmsg
                while off + 4 <= len(payload):
                    alen, atype = struct.unpack_from("=HH", payload, off)
                    if atype & 0x3FFF == _NFTA_GEN_ID and alen >= 8:
                        return int(struct.unpack_from(">I", payload, off + 4)[0])
                    off += (max(alen, 4) + 3) & ~3
        raise OSError("NFT_MSG_GETGEN: no generation id in the answer")


def routes_digest(protocol: int = OWN_PROTO) -> str:
    """sha256 over the attribute bytes of every IPv4 and IPv6 route with `protocol` (calling thread's namespace)."""
    digest = hashlib.sha256()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        with contextlib.suppress(OSError):  # an old kernel: unfiltered dumps (see the module docstring)
            s.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        s.bind((0, 0))
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
            body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, protocol, 0, 0, 0)
            s.send(_HDR.pack(_HDR.size + len(body), _RTM_GETROUTE, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body)
            done = False
            while not done:
                for mtype, payload in _messages(s.recv(1 << 20)):
                    if mtype == _NLMSG_DONE:
                        done = True
                    elif mtype == _NLMSG_ERROR:
                        raise OSError(_error(payload), "RTM_GETROUTE dump refused")
                    elif mtype == _RTM_NEWROUTE and len(payload) >= 12 and payload[5] == protocol:
                        digest.update(struct.pack("=I", len(payload)))
                        digest.update(payload)
    return digest.hexdigest()


_NFT_MSG_NEWTABLE, _NFT_MSG_GETTABLE = (10 << 8) | 0, (10 << 8) | 1
_NFTA_TABLE_NAME, _NFTA_TABLE_USERDATA = 1, 6
_UDATA_TABLE_COMMENT = 0
#: nft family names -> NFPROTO_* numbers
NFT_FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}


def nft_table_comment(family: str, name: str) -> str | None:
    """The comment of nft table FAMILY NAME in the calling thread's namespace ("" without one), None when the table
    does not exist: one NFT_MSG_GETTABLE, no elements.

    Why not `nft list table`: nft 1.0.6 (binary or library) fills its cache with the whole ruleset, set elements
    included, before answering any list command: ~0.2 s of CPU for a 40k-element table."""
    name_attr = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(name_attr), _NFTA_TABLE_NAME) + name_attr
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BBH", NFT_FAMILIES[family], 0, 0) + attr
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as s:
        s.bind((0, 0))
        s.send(_HDR.pack(_HDR.size + len(body), _NFT_MSG_GETTABLE, _NLM_F_REQUEST, 1, 0) + body)
        for mtype, payload in _messages(s.recv(65536)):
            if mtype == _NFT_MSG_NEWTABLE:
                return _udata_comment(_attribute(payload[4:], _NFTA_TABLE_USERDATA))
            if mtype == _NLMSG_ERROR:
                code = _error(payload)
                if code == errno.ENOENT:
                    return None
                raise OSError(code, f"NFT_MSG_GETTABLE {family} {name}: {os.strerror(code)}")
    raise OSError(f"NFT_MSG_GETTABLE {family} {name}: no answer")


def _attribute(data: bytes, wanted: int) -> bytes:
    off = 0
    while off + 4 <= len(data):
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        if atype & 0x3FFF == wanted:
            return data[off + 4:off + alen]
        off += (alen + 3) & ~3
    return b""


def _udata_comment(udata: bytes) -> str:
    """The comment in nft's user data (libnftnl TLVs: u8 type, u8 length, value; the table comment is type 0)."""
    off = 0
    while off + 2 <= len(udata):
        utype, ulen = udata[off], udata[off + 1]
        if utype == _UDATA_TABLE_COMMENT:
            return udata[off + 2:off + 2 + ulen].split(b"\0", 1)[0].decode(errors="replace")
        off += 2 + ulen
    return ""


def nft_table_exists(family: str, name: str) -> bool:
    """Whether nft table FAMILY NAME exists in the calling thread's namespace (`nft_table_comment`)."""
    return nft_table_comment(family, name) is not None


def table_exists(family: str, name: str, netns: str | None) -> bool:
    """`nft_table_exists` in `netns` (None: the current namespace)."""
    return table_comment(family, name, netns) is not None


def table_comment(family: str, name: str, netns: str | None) -> str | None:
    """`nft_table_comment` in `netns` (None: the current namespace)."""
    if netns is None:
        return nft_table_comment(family, name)
    return in_netns(netns, lambda: nft_table_comment(family, name))


def _take() -> Fingerprint:
    return Fingerprint(nft_generation=nft_generation(), routes_sha256=routes_digest())


def fingerprint(netns: str | None) -> Fingerprint:
    """The fingerprint of `netns` (None: the current namespace)."""
    return _take() if netns is None else in_netns(netns, _take)
