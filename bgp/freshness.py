"""Stale members step back (pure): the decision, and the member heartbeat's wire format.

Why: a member cut off from the API server keeps a data path built from its last snapshot. While it is the primary
of an EIP, a pod selected during the cut is unknown to it and its packets are dropped there, although another member
of the instance knows the pod. So a member whose cluster view is older than a grace (watch down, or the store not
synced yet) announces with the *stale* preference (a band below every other, `bgp.announcing.preference`) — but only
while another member of the same instance has a fresh view: when every member is stale (the API server is away for
everyone), nobody steps back and the data path carries on from the last snapshot.

How members learn each other's freshness without the API server: every member sends a small UDP heartbeat to the
other members of its instances (their `Member.address`, from the last snapshot) every `interval_s`, carrying its
name, its view age and a sequence number; a shared secret (`bgp.stale_view.secret`) adds an HMAC-SHA256, otherwise a
heartbeat is accepted only from the address the snapshot gives for the member it names. A report older than
`peer_timeout_s` is ignored: a member that cannot be heard may be down, and a down member's view does not count as
fresh (BFD and the routers deal with a dead member).

The I/O shell is `bgp.heartbeat.MemberHeartbeat`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: first bytes of every heartbeat datagram (version 1)
MAGIC = b"EGWHB1 "
_MAC_LEN = 64  # hex SHA-256
#: a datagram larger than this is not ours
MAX_DATAGRAM = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """What one member tells the others."""

    member: str
    #: seconds the sender's cluster view has been possibly out of date (0 = watching, synced)
    view_age_s: float
    #: increases with every heartbeat of one sender process (a restarted sender starts again; not a replay guard)
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerReport:
    """The last heartbeat heard from a member, and when (receiver's monotonic clock)."""

    heartbeat: Heartbeat
    received_at: float


def encode(hb: Heartbeat, secret: str | None) -> bytes:
    body = json.dumps({"m": hb.member, "a": round(hb.view_age_s, 3), "s": hb.seq}, separators=(",", ":")).encode()
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode() if secret else b""
    return MAGIC + body + (b" " + mac if mac else b"")


def decode(data: bytes, secret: str | None) -> Heartbeat | None:
    """The heartbeat in `data`, or None when it is not a valid one (wrong magic, bad JSON or fields, bad or missing
    MAC when a secret is configured)."""
    if len(data) > MAX_DATAGRAM or not data.startswith(MAGIC):
        return None
    rest = data[len(MAGIC):]
    if secret:
        if len(rest) < _MAC_LEN + 1 or rest[-_MAC_LEN - 1:-_MAC_LEN] != b" ":
            return None
        body, mac = rest[:-_MAC_LEN - 1], rest[-_MAC_LEN:]
        want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(mac, want):
            return None
    else:
        body = rest
    try:
        raw = json.loads(body)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    member, age, seq = raw.get("m"), raw.get("a"), raw.get("s")
    if not isinstance(member, str) or not member or len(member) > 253:
        return None
    if isinstance(age, bool) or not isinstance(age, int | float) or not math.isfinite(age) or age < 0:
        return None
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return None
    return Heartbeat(member=member, view_age_s=float(age), seq=seq)


def is_fresh(age_s: float, grace_s: float) -> bool:
    return age_s <= grace_s


def peer_age(report: PeerReport, now: float, peer_timeout_s: float) -> float | None:
    """The peer's view age now (its reported age plus the time since we heard it), None when it was not heard within
    `peer_timeout_s` (it may be down: its view counts as unknown, never as fresh)."""
    since = now - report.received_at
    if since > peer_timeout_s or since < 0:
        return None
    return report.heartbeat.view_age_s + since


def steps_back(*, my_age_s: float, peer_ages: Iterable[float | None], grace_s: float) -> bool:
    """Whether a member steps back in one instance: its own view is stale and at least one other member of the
    instance (heard from recently) has a fresh view. When every member is stale nobody steps back."""
    if is_fresh(my_age_s, grace_s):
        return False
    return any(age is not None and is_fresh(age, grace_s) for age in peer_ages)


def stepped_back_instances(*, me: str, my_age_s: float, instances: Mapping[str, Iterable[str]],
                           reports: Mapping[str, PeerReport], now: float, grace_s: float,
                           peer_timeout_s: float) -> frozenset[str]:
    """The names of the instances (name -> member names) in which `me` steps back, from the heartbeats heard."""
    out = set()
    for name, members in instances.items():
        ages = [peer_age(reports[m], now, peer_timeout_s) if m in reports else None for m in members if m != me]
        if steps_back(my_age_s=my_age_s, peer_ages=ages, grace_s=grace_s):
            out.add(name)
    return frozenset(out)
