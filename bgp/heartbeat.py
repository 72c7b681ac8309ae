"""`MemberHeartbeat`: the UDP heartbeat between the members of a gateway instance (I/O shell of `bgp.freshness`).

One thread: every `interval_s` it sends this member's heartbeat (name, view age, sequence) to every other member of
its instances (their `Member.address` from the last snapshot, given with `set_instances`), and in between it
receives theirs. A datagram is kept only when it decodes (`bgp.freshness.decode`, HMAC checked when a secret is
set), names a known member other than us, and comes from that member's address (the check without a secret; with
one, the MAC is the proof). `stepped_back()` answers the service's question: in which instances does this member
step back right now.

Sockets: one UDP socket per address family on `port` (IPv6 only when the host has it). `socket_factory` replaces
the creation (tests bind inside a network namespace).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable

from appliance.core.events import EventLogger, error_text
from appliance.core.intent import GatewayInstance
from appliance.core.model import IPAddress
from bgp.freshness import MAX_DATAGRAM, Heartbeat, PeerReport, decode, encode, peer_age, stepped_back_instances
from bgp.settings import StaleViewSettings

log = EventLogger(logging.getLogger(__name__))

SocketFactory = Callable[[int], socket.socket]


def udp_socket(family: int, port: int) -> socket.socket:
    """A non-blocking UDP socket of `family` bound to every address on `port`."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class MemberHeartbeat:
    def __init__(self, *, me: str, settings: StaleViewSettings, view_age: Callable[[], float],
                 socket_factory: SocketFactory | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.me = me
        self.settings = settings
        self._view_age = view_age
        self._factory = socket_factory or (lambda family: udp_socket(family, settings.port))
        self._clock = clock
        self._lock = threading.Lock()
        #: instance name -> member names; member name -> address (from the last snapshot)
        self._instances: dict[str, tuple[str, ...]] = {}
        self._addresses: dict[str, IPAddress] = {}
        self._reports: dict[str, PeerReport] = {}
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socks: dict[int, socket.socket] = {}
        self.sent = 0
        self.rejected = 0

    # ----- inputs -----

    def set_instances(self, instances: Iterable[GatewayInstance]) -> None:
        """The instances this member belongs to (others are ignored), as the last snapshot has them."""
        with self._lock:
            mine = [i for i in instances if any(m.name == self.me for m in i.members)]
            self._instances = {i.name: tuple(sorted(m.name for m in i.members)) for i in mine}
            self._addresses = {m.name: m.address for i in mine for m in i.members if m.name != self.me}

    # ----- outputs -----

    def stepped_back(self) -> frozenset[str]:
        """Instances in which this member steps back now (its view is stale, another member's is fresh)."""
        if not self.settings.enabled:
            return frozenset()
        my_age = self._view_age()
        with self._lock:
            return stepped_back_instances(
                me=self.me, my_age_s=my_age, instances=self._instances, reports=dict(self._reports),
                now=self._clock(), grace_s=self.settings.grace_s, peer_timeout_s=self.settings.peer_timeout_s,
            )  # fmt: skip

    def peer_ages(self) -> dict[str, float | None]:
        """member -> its view age now (None: not heard within the peer timeout), for status and logs."""
        now = self._clock()
        with self._lock:
            return {m: (peer_age(self._reports[m], now, self.settings.peer_timeout_s) if m in self._reports else None)
                    for m in sorted(self._addresses)}  # fmt: skip

    # ----- lifecycle -----

    def start(self) -> None:
        if not self.settings.enabled or self._thread is not None:
            return
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                self._socks[family] = self._factory(family)
            except OSError as exc:
                if family == socket.AF_INET:
                    raise
                log.info("heartbeat.no_ipv6", error=error_text(exc))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="member-heartbeat", daemon=True)
        self._thread.start()
        log.info("heartbeat.started", port=self.settings.port, interval_s=self.settings.interval_s,
                 authenticated=self.settings.secret is not None)  # fmt: skip

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

    # ----- the thread -----

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for sock in self._socks.values():
            sel.register(sock, selectors.EVENT_READ)
        next_send = self._clock()
        try:
            while not self._stop.is_set():
                now = self._clock()
                if now >= next_send:
                    self._send()
                    next_send = now + self.settings.interval_s
                for key, _ in sel.select(max(0.0, min(next_send - self._clock(), 0.5))):
                    self._receive(key.fileobj)  # type: ignore[arg-type]
        finally:
            sel.close()

    def _send(self) -> None:
        self._seq += 1
        try:
            age = self._view_age()
        except Exception as exc:  # a broken age source must not stop the heartbeat: report "unknown" as stale
            log.warning("heartbeat.view_age_failed", error=error_text(exc))
            age = float("inf")
        data = encode(Heartbeat(member=self.me, view_age_s=min(age, 1e9), seq=self._seq), self.settings.secret)
        with self._lock:
            targets = sorted(set(self._addresses.values()), key=lambda a: (a.version, a))
        for addr in targets:
            sock = self._socks.get(socket.AF_INET if addr.version == 4 else socket.AF_INET6)
            if sock is None:
                continue
            with contextlib.suppress(OSError):  # unreachable now: the member may be down; try again next time
                sock.sendto(data, (str(addr), self.settings.port))
                self.sent += 1

    def _receive(self, sock: socket.socket) -> None:
        try:
            data, source = sock.recvfrom(MAX_DATAGRAM + 1)
        except OSError:
            return
        hb = decode(data, self.settings.secret)
        src = ipaddress.ip_address(source[0])
        with self._lock:
            known = self._addresses.get(hb.member) if hb is not None else None
            ok = hb is not None and known is not None and (self.settings.secret is not None or known == src)
            if ok and hb is not None:
                self._reports[hb.member] = PeerReport(heartbeat=hb, received_at=self._clock())
                return
        self.rejected += 1
        log.debug("heartbeat.rejected", source=str(src), member=hb.member if hb is not None else None)
