"""The announcer protocol state machine for ExaBGP's text API (sans-I/O, h11-style; injected clock).

The shell (`bgp.speaker`) feeds it lines read from ExaBGP and the time, asks it for command lines to write, and
reports when the API channel (re)connects or breaks. This module owns the logic:

- declarative input: the *full* desired set of `Announcement`s; the machine diffs it, per peer, against what ExaBGP
  acknowledged and emits `neighbor <peer> announce route ...` / `neighbor <peer> withdraw route ...`;
- ExaBGP 5 answers every API command with one line, `done` or `error`, in command order (its scheduler is FIFO), so
  acks are matched to a FIFO of in-flight commands;
- events `neighbor <ip> connected|up|down - <reason>` update the per-peer session state; a peer coming up gets all
  of its routes resent; a new channel (ExaBGP or the bridge restarted) resends everything and withdraws whatever
  ExaBGP may still hold that is no longer desired;
- an ack missing for `ack_timeout_s` means ExaBGP is stuck: `poll()` reports it and the shell restarts ExaBGP;
- a failed command is retried after `retry_s` (a failed withdraw counts as done: the route is not there);
- with `manual_eor` (graceful restart, ExaBGP's `manual-eor`): a peer that came up gets `neighbor <peer> announce eor
  <afi> <safi>` for each of its families once its routes are acknowledged (or `eor_wait_s` after it came up, so a
  route ExaBGP keeps refusing cannot hold the End-of-RIB back for ever). A router that kept our routes as stale
  through our restart flushes the ones we did not resend when the End-of-RIB arrives, not before. Nor is it sent
  before the owner stated its desired set once (`set_desired`; bounded by `desired_wait_s`): a restarted gateway
  service rebuilding its set from the cluster and the kernel would otherwise make the routers flush at once.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from appliance.core.model import IPAddress, IPNetwork
from bgp.announcing import Announcement, announcement_sort_key
from bgp.settings import Family, PeerSettings


class PeerState(enum.StrEnum):
    UNKNOWN = "unknown"
    CONNECTED = "connected"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerChanged:
    peer: IPAddress
    state: PeerState
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandFailed:
    command: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AckTimeout:
    command: str
    waited_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ExabgpShutdown:
    line: str


Event = PeerChanged | CommandFailed | AckTimeout | ExabgpShutdown

Key = tuple[IPAddress, IPNetwork]  # (peer, prefix)


@dataclass(slots=True, kw_only=True)
class _InFlight:
    command: str
    key: Key | None  # None = an End-of-RIB
    value: Announcement | None  # None = withdraw (or End-of-RIB)
    sent_at: float


_EOR_FAMILY = {Family.IPV4_UNICAST: "ipv4 unicast", Family.IPV6_UNICAST: "ipv6 unicast"}


def render_announce(peer: PeerSettings, ann: Announcement, *, local_asn: int) -> str:
    parts = [f"neighbor {peer.address} announce route {ann.prefix} next-hop {peer.next_hop_for(ann.family)}"]
    if ann.med is not None:
        parts.append(f"med {ann.med}")
    if ann.as_path_prepends:
        # ExaBGP sends a given AS path verbatim (it adds our AS only when no path is given), so N prepends are
        # N + 1 copies of our AS
        parts.append("as-path [ " + " ".join([str(local_asn)] * (ann.as_path_prepends + 1)) + " ]")
    if ann.communities:
        parts.append("community [ " + " ".join(ann.communities) + " ]")
    if ann.large_communities:
        parts.append("large-community [ " + " ".join(ann.large_communities) + " ]")
    return " ".join(parts)


def render_withdraw(peer: PeerSettings, prefix: IPNetwork) -> str:
    return f"neighbor {peer.address} withdraw route {prefix}"


def render_eor(peer: PeerSettings, family: Family) -> str:
    return f"neighbor {peer.address} announce eor {_EOR_FAMILY[family]}"


@dataclass(slots=True)
class Announcer:
    """Desired vs. acknowledged announcements per peer; see the module docstring."""

    peers: Sequence[PeerSettings]
    local_asn: int
    ack_timeout_s: float = 5.0
    retry_s: float = 1.0
    #: send End-of-RIB ourselves after a session came up and its routes were acknowledged (graceful restart)
    manual_eor: bool = False
    #: send it anyway this long after the session came up
    eor_wait_s: float = 5.0
    #: until the owner stated its desired set (`set_desired`) the End-of-RIB waits, at most this long after the
    #: session came up: a restarted service that has not yet rebuilt its set must not make the routers flush the
    #: routes they kept for it (the owner states an empty set when it really has nothing to announce)
    desired_wait_s: float = 30.0
    _desired: frozenset[Announcement] = frozenset()
    _acked: dict[Key, Announcement] = field(default_factory=dict)
    #: keys ExaBGP may hold although not acknowledged on this channel (after a reconnect): withdraw if undesired
    _maybe: set[Key] = field(default_factory=set)
    _inflight: deque[_InFlight] = field(default_factory=deque)
    _retry_at: dict[Key, float] = field(default_factory=dict)
    _peer_state: dict[IPAddress, PeerState] = field(default_factory=dict)
    _connected: bool = False
    #: peers whose session came up and still wait for their End-of-RIB -> when they came up
    _eor_due: dict[IPAddress, float] = field(default_factory=dict)
    _desired_known: bool = False
    #: when `poll` first saw the desired set stated (the End-of-RIB's resend wait counts from then at the earliest)
    _known_at: float | None = None

    # ----- inputs -----

    def set_desired(self, announcements: Iterable[Announcement]) -> None:
        self._desired = frozenset(announcements)
        self._desired_known = True

    def channel_up(self) -> None:
        """A new API channel to a (possibly new) ExaBGP: assume nothing, resend everything."""
        self._lose_channel()
        self._connected = True

    def channel_down(self) -> None:
        self._lose_channel()
        self._connected = False

    def receive(self, line: str, *, now: float) -> list[Event]:
        """One line from ExaBGP (without the newline)."""
        text = line.strip()
        if text in ("done", "error"):
            return self._ack(text == "done")
        words = text.split()
        if len(words) >= 3 and words[0] == "neighbor":
            return self._neighbor_event(words, now)
        if words and words[0] == "shutdown":
            self.channel_down()
            return [ExabgpShutdown(line=text)]
        return []

    def poll(self, *, now: float) -> tuple[list[str], list[Event]]:
        """Commands to write now (marked in flight), and timeout events. Call after every input and periodically."""
        if not self._connected:
            return [], []
        if self._desired_known and self._known_at is None:
            self._known_at = now
        if self._inflight and now - self._inflight[0].sent_at > self.ack_timeout_s:
            head = self._inflight[0]
            self.channel_down()
            return [], [AckTimeout(command=head.command, waited_s=now - head.sent_at)]
        commands: list[str] = []
        expected = self._expected()
        for peer in sorted(self.peers, key=lambda p: (p.address.version, p.address)):
            want = {
                a.prefix: a for a in sorted(self._desired, key=announcement_sort_key) if a.family in peer.families
            }
            have_keys = sorted(
                (k for k in expected if k[0] == peer.address and k[1] not in want),
                key=lambda k: (k[1].version, int(k[1].network_address)),
            )
            for key in have_keys:  # withdraw first: a drain must never race an announce of the same prefix
                if self._retry_at.get(key, 0.0) <= now:
                    commands.append(self._send(render_withdraw(peer, key[1]), key, None, now))
            for prefix, ann in want.items():
                key = (peer.address, prefix)
                if expected.get(key) != ann and self._retry_at.get(key, 0.0) <= now:
                    commands.append(self._send(render_announce(peer, ann, local_asn=self.local_asn), key, ann, now))
            commands += self._eor(peer, want, now)
        return commands, []

    # ----- observations -----

    def acknowledged(self) -> frozenset[Announcement]:
        """Announcements ExaBGP acknowledged for every peer that carries their family."""
        out = set()
        for ann in self._desired | frozenset(self._acked.values()):
            carriers = [p for p in self.peers if ann.family in p.families]
            if carriers and all(self._acked.get((p.address, ann.prefix)) == ann for p in carriers):
                out.add(ann)
        return frozenset(out)

    def acknowledged_for(self, peer: IPAddress) -> frozenset[Announcement]:
        return frozenset(a for (p, _), a in self._acked.items() if p == peer)

    def converged(self) -> bool:
        """Every desired route acknowledged on every carrying peer, nothing else held, nothing in flight."""
        if not self._connected or self._inflight or self._maybe or self._eor_due:
            return False
        want = {(p.address, a.prefix): a for p in self.peers for a in self._desired if a.family in p.families}
        return want == self._acked

    def peer_states(self) -> dict[str, str]:
        return {str(p.address): str(self._peer_state.get(p.address, PeerState.UNKNOWN)) for p in self.peers}

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # ----- internals -----

    def _eor(self, peer: PeerSettings, want: dict[IPNetwork, Announcement], now: float) -> list[str]:
        """The End-of-RIB commands for `peer` when they are due: its session came up, and its routes are all
        acknowledged (nothing in flight or unknown for it) or `eor_wait_s` passed. Not before the desired set was
        stated (`set_desired`), unless `desired_wait_s` passed."""
        up_at = self._eor_due.get(peer.address)
        if up_at is None:
            return []
        if self._known_at is None:
            if now - up_at < self.desired_wait_s:
                return []
        else:
            up_at = max(up_at, self._known_at)
        settled = (
            not any(f.key is not None and f.key[0] == peer.address for f in self._inflight)
            and not any(k[0] == peer.address for k in self._maybe)
            and all(self._acked.get((peer.address, p)) == a for p, a in want.items())
        )
        if not settled and now - up_at < self.eor_wait_s:
            return []
        del self._eor_due[peer.address]
        out = []
        for fam in peer.families:
            cmd = render_eor(peer, fam)
            self._inflight.append(_InFlight(command=cmd, key=None, value=None, sent_at=now))
            out.append(cmd)
        return out

    def _expected(self) -> dict[Key, Announcement | None]:
        """What ExaBGP will hold once everything in flight is acknowledged (None = maybe held, unknown)."""
        exp: dict[Key, Announcement | None] = {k: None for k in self._maybe}
        exp.update(self._acked)
        for f in self._inflight:
            if f.key is None:
                continue
            if f.value is None:
                exp.pop(f.key, None)
            else:
                exp[f.key] = f.value
        return exp

    def _send(self, command: str, key: Key, value: Announcement | None, now: float) -> str:
        self._inflight.append(_InFlight(command=command, key=key, value=value, sent_at=now))
        self._retry_at.pop(key, None)
        return command

    def _ack(self, ok: bool) -> list[Event]:
        if not self._inflight:
            return []
        f = self._inflight.popleft()
        if f.key is None:  # an End-of-RIB: an error means the session went down meanwhile (its up event re-arms it)
            return [] if ok else [CommandFailed(command=f.command)]
        if f.value is None:
            # a failed withdraw means ExaBGP does not hold the route: the outcome is the same
            self._acked.pop(f.key, None)
            self._maybe.discard(f.key)
            return [] if ok else [CommandFailed(command=f.command)]
        if ok:
            self._acked[f.key] = f.value
            self._maybe.discard(f.key)
            return []
        self._retry_at[f.key] = f.sent_at + self.retry_s
        return [CommandFailed(command=f.command)]

    def _neighbor_event(self, words: list[str], now: float) -> list[Event]:
        try:
            peer = ipaddress.ip_address(words[1])
        except ValueError:
            return []
        if words[2] not in ("up", "down", "connected") or peer not in {p.address for p in self.peers}:
            return []
        state = PeerState(words[2])
        reason = " ".join(words[4:]) if state is PeerState.DOWN else ""
        self._peer_state[peer] = state
        if state is PeerState.UP and self.manual_eor:
            self._eor_due[peer] = now
        elif state is PeerState.DOWN:
            self._eor_due.pop(peer, None)
        if state is PeerState.UP:
            # ExaBGP replays its RIB to the new session itself; resending anyway makes us independent of that
            for key in [k for k in self._acked if k[0] == peer]:
                self._maybe.add(key)
                del self._acked[key]
        return [PeerChanged(peer=peer, state=state, reason=reason)]

    def _lose_channel(self) -> None:
        self._maybe |= set(self._acked) | {f.key for f in self._inflight if f.key is not None and f.value is not None}
        self._acked.clear()
        self._inflight.clear()
        self._retry_at.clear()
        self._peer_state.clear()
        self._eor_due.clear()
