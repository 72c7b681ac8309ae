"""Connection-tracking state sync between the members of a gateway instance (pure): who syncs with whom, on which
UDP port, and the conntrackd configuration of each channel.

Why: a member taking over an EIP (drain, failure) must already hold the conntrack entries of the flows the previous
primary SNATed - same NAT binding (EIP and source port), same ct mark (it binds the flow to its worker tunnel) - or
replies in flight meet `ct state new` and are dropped (docs/architecture.md, "State sync").

The shape, and why each choice:
- **One conntrackd per peer, unicast UDP, FTFW.** Members may sit on different L3 segments, so no multicast;
  conntrackd's UDP channel has exactly one destination, so a member runs one daemon per peer (each with its own
  config, UNIX socket and lock file). FTFW is conntrackd's reliable protocol (sequence numbers, acks, resends).
- **Ports both ends derive alike.** A channel listens on `port + slot` at both ends. Every member computes the
  same assignment from the same intent: all pairs of members that share an instance, each starting at a hash of the
  (sorted) pair of names, taking the first slot that neither of its two members uses for another pair (linear
  probing in a fixed global order), skipping the ports of BFD, VXLAN, GENEVE and the instances' tunnels.
  So two daemons on one member never bind the same address and port, and a membership change only moves a pair
  whose slot it takes (a hash collision), never the others.
- **Only our flows, no forwarding loops.** conntrackd 1.4.7 filters on protocol, address (original or reply
  *source*: a SNATed flow's EIP is only the reply destination, so it cannot select it) and TCP state, not on the ct
  mark. So the data path selects the events instead: with state sync on, the member's netns has
  `net.netfilter.nf_conntrack_events=0` and our nft forward chain sets `ct event set` on the flows it marks for
  SNAT (`datapath.plan.gateway_nft`): only those report events, which is exactly "the flows this member SNATs". An
  entry a daemon injects for a peer reports no event, so another local daemon never forwards it to a third member
  (with three members and events on, a full mesh of per-peer daemons would bounce every update around forever).
- **`DisableExternalCache On`**: received entries go straight into the kernel table, ready before the routers move.
  Such an entry lives as long as the timeout it came with; a flow that sends no event (a steady UDP stream) would
  expire on the peers, so every daemon re-sends its entries every `refresh_interval_s` (`conntrackd -B`).
- **The guard**: the sync ports accept UDP only from the peers (`SyncGuard` -> the gateway nft table; anything else
  is counted `drop_sync_foreign` and dropped): the channel carries the connection state of every pod.

Addresses: a channel binds the member's own address (its `Member.address`, the one peers know), or
`state_sync.address`; a peer is reached at its `Member.address`, or at the address `state_sync.peers` names for it
(a dedicated sync link). Both ends must be of one family; a pair without one is skipped with a reason.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from appliance.core.intent import Intent
from appliance.core.model import IPAddress

#: conntrackd's default port, our base
DEFAULT_PORT = 3780
#: how many ports the channels may use from the base: a member with up to this many peers always finds a slot
DEFAULT_PORT_SPAN = 256
#: never a channel port: BFD single-hop control and echo (3784, 3785; the BFD sidecar and the routers use them on
#: the same addresses), BFD multi-hop (4784), VXLAN (4789), VXLAN-GPE (4790), GENEVE (6081); the instances' own
#: tunnel ports are left out too (`reserved_ports`)
RESERVED_PORTS = frozenset({3784, 3785, 4784, 4789, 4790, 6081})


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSyncSettings:
    """`state_sync:` of the gateway config (docs/operations.md, "State sync")."""

    #: on by default: every member of an instance syncs with the instance's other members
    enabled: bool = True
    #: the local address the channels bind to; None = the member's own address (what the peers know it by)
    address: IPAddress | None = None
    #: first UDP port of the channels and how many ports they may use (`port` .. `port + port_span - 1`)
    port: int = DEFAULT_PORT
    port_span: int = DEFAULT_PORT_SPAN
    #: peer member name -> the address to reach it at (a dedicated sync link); others at their member address
    peers: tuple[tuple[str, IPAddress], ...] = ()
    #: a starting member waits at most this long for its first full resync before it announces; 5 s: a resync of
    #: 100k entries over a LAN takes well under a second, and a peer that does not answer must not keep us down long
    resync_timeout_s: float = 5.0
    #: a peer counts as lost when its daemon has received nothing from it for this long (conntrackd's FTFW sends
    #: a keep-alive every second when idle)
    peer_timeout_s: float = 4.0
    #: seconds between two bulk re-sends of this member's entries to each peer (`conntrackd -B`); 0 = never. An
    #: injected entry only lives as long as the timeout it was sent with, and a flow whose state does not change
    #: (a UDP stream: 120 s in the kernel) sends no event: the re-send keeps the peers' copies alive
    refresh_interval_s: float = 30.0
    #: seconds between two readings of each daemon's statistics (`conntrackd -s`)
    stats_interval_s: float = 1.0
    #: the conntrackd binary
    binary: str = "conntrackd"

    @property
    def last_port(self) -> int:
        return self.port + self.port_span - 1


class SyncSkipReason(enum.StrEnum):
    #: this member has no address in the intent and no `state_sync.address`
    NO_LOCAL_ADDRESS = "NoLocalAddress"
    #: the peer's address and ours are of different families (a channel has one family)
    FAMILY_MISMATCH = "AddressFamilyMismatch"
    #: every port of the range is taken at one end (more peers than `port_span`)
    NO_FREE_PORT = "NoFreePort"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class SyncPeer:
    name: str
    address: IPAddress


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class SyncChannel:
    """One conntrackd: this member <-> `peer`, both ends on UDP `port`."""

    peer: str
    peer_address: IPAddress
    local_address: IPAddress
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSyncPlan:
    member: str
    local_address: IPAddress | None
    #: sorted by peer name
    channels: tuple[SyncChannel, ...] = ()
    #: (peer, reason) of the peers without a channel
    skipped: tuple[tuple[str, SyncSkipReason], ...] = ()

    def channel(self, peer: str) -> SyncChannel | None:
        return next((c for c in self.channels if c.peer == peer), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncGuard:
    """What the gateway nft table admits on this member's channel ports: UDP from `peers` only."""

    ports: tuple[int, ...] = ()
    peers: tuple[IPAddress, ...] = ()


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def first_slot(a: str, b: str, span: int) -> int:
    """The slot a pair tries first: a hash of the sorted names (the same at both ends, independent of addresses)."""
    x, y = _pair(a, b)
    digest = hashlib.sha256(f"{x}\0{y}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % span


def sync_pairs(intent: Intent) -> frozenset[tuple[str, str]]:
    """Every pair of members that share an instance (sorted names): the channels of the whole cluster."""
    out: set[tuple[str, str]] = set()
    for inst in intent.instances:
        names = sorted({m.name for m in inst.members})
        out.update((a, b) for i, a in enumerate(names) for b in names[i + 1:])
    return frozenset(out)


def reserved_ports(intent: Intent) -> frozenset[int]:
    """Ports no channel takes: `RESERVED_PORTS` and every instance's tunnel ports (WireGuard uses two)."""
    tunnel = {p for i in intent.instances for p in (i.tunnel.udp_port, i.tunnel.udp_port + 1)}
    return RESERVED_PORTS | tunnel


def assign_slots(pairs: Iterable[tuple[str, str]], span: int,
                 blocked: frozenset[int] = frozenset()) -> dict[tuple[str, str], int]:
    """Slot per pair, no member using one slot twice and none using a `blocked` slot. Pairs are placed in the order
    (first slot, names), each on the first free slot from its own (wrapping); a pair that finds none is left out."""
    used: dict[str, set[int]] = {}
    out: dict[tuple[str, str], int] = {}
    ordered = sorted({_pair(*p) for p in pairs}, key=lambda p: (first_slot(p[0], p[1], span), p))
    for a, b in ordered:
        start = first_slot(a, b, span)
        taken = used.setdefault(a, set()) | used.setdefault(b, set()) | blocked
        for i in range(span):
            slot = (start + i) % span
            if slot not in taken:
                out[(a, b)] = slot
                used[a].add(slot)
                used[b].add(slot)
                break
    return out


def peers_of(intent: Intent, *, member: str, settings: StateSyncSettings) -> tuple[SyncPeer, ...]:
    """The other members of every instance `member` belongs to, at their sync address (sorted by name)."""
    overrides = dict(settings.peers)
    found: dict[str, IPAddress] = {}
    for inst in intent.instances:
        if not any(m.name == member for m in inst.members):
            continue
        for m in inst.members:
            if m.name != member:
                found.setdefault(m.name, overrides.get(m.name, m.address))
    return tuple(SyncPeer(name=n, address=found[n]) for n in sorted(found))


def local_address(intent: Intent, *, member: str, settings: StateSyncSettings) -> IPAddress | None:
    if settings.address is not None:
        return settings.address
    return next((m.address for i in intent.instances for m in i.members if m.name == member), None)


def plan_state_sync(intent: Intent, *, member: str, settings: StateSyncSettings) -> StateSyncPlan:
    """The channels of `member` (none when sync is off or it serves no instance with other members)."""
    if not settings.enabled:
        return StateSyncPlan(member=member, local_address=None)
    peers = peers_of(intent, member=member, settings=settings)
    local = local_address(intent, member=member, settings=settings)
    if not peers:
        return StateSyncPlan(member=member, local_address=local)
    if local is None:
        return StateSyncPlan(member=member, local_address=None,
                             skipped=tuple((p.name, SyncSkipReason.NO_LOCAL_ADDRESS) for p in peers))
    blocked = frozenset(p - settings.port for p in reserved_ports(intent) if settings.port <= p <= settings.last_port)
    slots = assign_slots(sync_pairs(intent), settings.port_span, blocked)
    channels: list[SyncChannel] = []
    skipped: list[tuple[str, SyncSkipReason]] = []
    for p in peers:
        slot = slots.get(_pair(member, p.name))
        if p.address.version != local.version:
            skipped.append((p.name, SyncSkipReason.FAMILY_MISMATCH))
        elif slot is None:
            skipped.append((p.name, SyncSkipReason.NO_FREE_PORT))
        else:
            channels.append(SyncChannel(peer=p.name, peer_address=p.address, local_address=local,
                                        port=settings.port + slot))
    return StateSyncPlan(member=member, local_address=local, channels=tuple(channels), skipped=tuple(skipped))


def sync_guard(intent: Intent, *, member: str, settings: StateSyncSettings | None) -> SyncGuard | None:
    """The nft guard (None when sync is off): this member's channel ports, open to the peers' addresses only."""
    if settings is None or not settings.enabled:
        return None
    peers = peers_of(intent, member=member, settings=settings)
    addrs = sorted({p.address for p in peers}, key=lambda a: (a.version, int(a)))
    ports = sorted({c.port for c in plan_state_sync(intent, member=member, settings=settings).channels})
    return SyncGuard(ports=tuple(ports), peers=tuple(addrs))


# ----- conntrackd configuration -----

#: protocols synced: everything a pod's egress flow can be (conntrackd's names)
SYNCED_PROTOCOLS = ("TCP", "UDP", "ICMP", "IPv6-ICMP", "SCTP")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelPaths:
    """Where one channel's daemon keeps its files (all in the service's state directory)."""

    socket: str
    lock: str


def _fam(a: IPAddress) -> str:
    return "IPv4" if a.version == 4 else "IPv6"


def render_conntrackd_conf(channel: SyncChannel, *, member: str, interface: str, paths: ChannelPaths) -> str:
    """conntrackd.conf of one channel. `interface`: the local interface toward the peer (conntrackd requires one for
    a UDP channel; the applier finds it from the route). Logs go to stdout (the daemon runs in the foreground under
    our supervision); the channel's own addresses and loopback are ignored, so its own UDP flow is never synced."""
    fam = _fam(channel.local_address)
    ignore = sorted({channel.local_address, channel.peer_address}, key=lambda a: (a.version, int(a)))
    ignored = "".join(f"\t\t\t{_fam(a)}_address {a}\n" for a in ignore)
    protocols = "".join(f"\t\t\t{p}\n" for p in SYNCED_PROTOCOLS)
    return (
        f"# egressgw state sync: {member} <-> {channel.peer} (generated by the gateway service; do not edit)\n"
        "Sync {\n"
        "\tMode FTFW {\n"
        "\t\tDisableExternalCache On\n"
        "\t}\n"
        "\tUDP {\n"
        f"\t\t{fam}_address {channel.local_address}\n"
        f"\t\t{fam}_Destination_Address {channel.peer_address}\n"
        f"\t\tPort {channel.port}\n"
        f"\t\tInterface {interface}\n"
        "\t\tSndSocketBuffer 1249280\n"
        "\t\tRcvSocketBuffer 1249280\n"
        "\t\tChecksum on\n"
        "\t}\n"
        "}\n"
        "General {\n"
        "\tHashSize 32768\n"
        "\tHashLimit 262144\n"
        "\tLogFile off\n"
        "\tSyslog off\n"
        f"\tLockFile {paths.lock}\n"
        "\tUNIX {\n"
        f"\t\tPath {paths.socket}\n"
        "\t}\n"
        "\tNetlinkBufferSize 2097152\n"
        "\tNetlinkBufferSizeMaxGrowth 8388608\n"
        "\tFilter From Userspace {\n"
        "\t\tProtocol Accept {\n"
        f"{protocols}"
        "\t\t}\n"
        "\t\tAddress Ignore {\n"
        "\t\t\tIPv4_address 127.0.0.0/8\n"
        "\t\t\tIPv6_address ::1\n"
        f"{ignored}"
        "\t\t}\n"
        "\t}\n"
        "}\n"
    )


# ----- conntrackd statistics -----


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelStats:
    """One reading of `conntrackd -s` (counters since the daemon started)."""

    #: local events taken into the internal cache (new, updated, destroyed): what the daemon sent to its peer
    sent: int = 0
    #: entries received from the peer and written into the kernel table (created, updated, destroyed)
    received: int = 0
    #: received entries the kernel refused, plus messages the sequence tracking found missing
    lost: int = 0
    packets_sent: int = 0
    packets_received: int = 0


_TRIPLE = re.compile(r"connections (created|updated|destroyed):\s+(\d+)\s+failed:\s+(\d+)")
_PACKETS = re.compile(r"(\d+)\s+Pckts sent\s+(\d+)\s+Pckts recv")
_LOST = re.compile(r"(\d+)\s+Lost msgs")


def parse_stats(text: str) -> ChannelStats:
    """Parse `conntrackd -C conf -s` output; sections missing count as zero."""
    internal, _, external = text.partition("external inject:")
    ok_int = sum(int(m.group(2)) for m in _TRIPLE.finditer(internal))
    ok_ext = sum(int(m.group(2)) for m in _TRIPLE.finditer(external))
    failed_ext = sum(int(m.group(3)) for m in _TRIPLE.finditer(external))
    packets = _PACKETS.search(text)
    lost = _LOST.search(text)
    return ChannelStats(
        sent=ok_int,
        received=ok_ext,
        lost=failed_ext + (int(lost.group(1)) if lost else 0),
        packets_sent=int(packets.group(1)) if packets else 0,
        packets_received=int(packets.group(2)) if packets else 0,
    )


# ----- when a resync is done -----


@dataclass(frozen=True, slots=True, kw_only=True)
class ResyncProgress:
    """What one resync request (`conntrackd -n`) has seen of its peer, from the statistics readings taken after it.

    The rule (`step_resync`): the resync from a peer is done once the channel to it is **up** (its daemon heard
    from recently: FTFW sends a keep-alive every second when it has nothing else to send) and, over a whole
    interval counted from the first reading with the channel up, what arrives has **settled**: the entries received
    in the last interval did not grow over the interval before. That covers the three shapes a peer can take:
    - a busy peer: its answer (the whole internal cache, queued at once ahead of everything it sends later and
      delivered in order: FTFW sequence numbers, NACK, resend) arrives as a burst, then only its live updates, which
      never stop under traffic (so "the counter holds still" would never be reached and every resync would time out,
      as it did in the drain benchmark: 15 of 15);
    - an idle peer with nothing to send (no flows): nothing arrives for an interval while the channel is up: done
      then, not at the timeout;
    - a peer that is not there: never done (the channel is not up); the caller's timeout bounds the wait.
    A request sent while the channel was down may have gone nowhere (the peer's daemon adds our channel only once
    it sees us in the cluster state), and entries arriving meanwhile prove nothing (the peer's live updates flow
    without any request): so when the channel comes up after such a request the peer is asked again (`ask_again`,
    once per down -> up) and the count starts there; asking twice only costs the peer a second copy of its cache."""

    #: the last request went out while the channel was up (the peer's daemon was there to receive it)
    asked_up: bool = False
    #: entries received since the last request
    received: int = 0
    #: the first reading since the request (or since the channel came back) with the channel up
    up_at: float | None = None
    #: entries received in the interval ending at the last reading (None before `up_at`)
    last_delta: int | None = None
    done: bool = False
    #: the caller should send the request again now (this progress already counts from it)
    ask_again: bool = False


def step_resync(progress: ResyncProgress, *, old: ChannelStats, new: ChannelStats, at: float, interval_s: float,
                up: bool) -> ResyncProgress:
    """One statistics reading taken at `at` (strictly after the request; `old` is the reading before it); `up`:
    the channel to the peer is up after this reading."""
    if progress.done:
        return progress
    # a restarted daemon counts from zero again
    delta = new.received - old.received if new.received >= old.received else new.received
    received = progress.received + delta
    if not up:
        # never done before the channel is up; a request sent now may be lost: ask again once it is up
        return ResyncProgress(asked_up=False, received=received)
    if not progress.asked_up:
        # asked again now: the answer arrives over the next interval (its burst then counts as growth)
        return ResyncProgress(asked_up=True, received=received, up_at=at, last_delta=0, ask_again=True)
    if progress.up_at is None or progress.last_delta is None:
        return ResyncProgress(asked_up=progress.asked_up, received=received, up_at=at, last_delta=delta)
    settled = delta <= progress.last_delta
    return ResyncProgress(asked_up=progress.asked_up, received=received, up_at=progress.up_at, last_delta=delta,
                          done=settled and at - progress.up_at >= interval_s)


def peer_overrides(raw: Mapping[str, IPAddress]) -> tuple[tuple[str, IPAddress], ...]:
    """`state_sync.peers` as the sorted pairs `StateSyncSettings.peers` holds."""
    return tuple(sorted(raw.items()))
