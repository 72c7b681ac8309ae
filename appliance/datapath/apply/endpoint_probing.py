"""The worker's endpoint prober: ICMP echo to each tunnel endpoint from the worker's underlay address, in a thread.

Decisions live in `appliance.datapath.plan.endpoint_liveness` (pure: `record` and its hysteresis); this is the shell
that sends and receives. One raw socket per address family, bound to the underlay (tunnel source) address so the
echo requests carry the same source as the worker's VXLAN packets: the gateways answer echo requests to an EIP only
from known workers (`appliance.datapath.plan.gateway_nft`), and the routers route them exactly like the tunnel
packets, to the member that announces the EIP. A reply is matched by (our identifier, round, source address = the
endpoint).

Each round: judge the previous round (answered or missed, per endpoint), send one request per endpoint, collect
replies until the round's end. A state change (`UP`/`DOWN`) calls `on_change` (the agent wakes its reconcile loop)
and is logged (`endpoint.up` / `endpoint.down`). Like the WireGuard prober (`wireguard_liveness`), this never raises
out of its thread: a send error (no route) counts as a miss.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from appliance.core.events import EventLogger
from appliance.core.model import IPAddress
from appliance.datapath.plan.endpoint_liveness import EndpointState, ProbeSettings, ProbeTrack, record
from appliance.datapath.plan.packets import internet_checksum

log = EventLogger("egressgw.agent.liveness")

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
PAYLOAD = b"egressgw-endpoint-probe"


def echo_request(version: int, ident: int, seq: int) -> bytes:
    if version == 6:  # the kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets
        return struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + PAYLOAD
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, internet_checksum(header + PAYLOAD), ident, seq) + PAYLOAD


def parse_echo_reply(version: int, packet: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an echo reply (IPv4 raw sockets deliver the IP header too), else None."""
    if version == 4:
        if len(packet) < 20:
            return None
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < 8:
        return None
    kind, _, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    return (ident, seq) if kind == (ICMP_ECHO_REPLY if version == 4 else ICMP6_ECHO_REPLY) else None


class EchoSocket:
    """A raw ICMP (or ICMPv6) socket bound to the worker's underlay address."""

    def __init__(self, source: IPAddress) -> None:
        self.version = source.version
        if source.version == 4:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        else:
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        self.sock.bind((str(source), 0))
        self.sock.setblocking(False)

    def send(self, target: IPAddress, ident: int, seq: int) -> bool:
        try:
            self.sock.sendto(echo_request(self.version, ident, seq), (str(target), 0))
        except OSError:
            return False  # no route, device gone: a miss
        return True

    def drain(self, ident: int) -> list[tuple[str, int]]:
        """(source address, sequence) of the echo replies with our identifier waiting on the socket."""
        out: list[tuple[str, int]] = []
        while True:
            try:
                data, peer = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out
            parsed = parse_echo_reply(self.version, data)
            if parsed is not None and parsed[0] == ident:
                out.append((peer[0], parsed[1]))

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointReport:
    """One endpoint's probe state for status and metrics."""

    endpoint: IPAddress
    state: EndpointState
    misses: int
    sent: int
    answered: int
    #: seconds since the last answer (None = never answered)
    last_answer_age_s: float | None


class EndpointProber:
    """Probe the current targets every round; `states()` and `reports()` are safe from any thread."""

    def __init__(
        self,
        source: IPAddress,
        settings: ProbeSettings,
        *,
        on_change: Callable[[IPAddress, EndpointState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sock: EchoSocket | None = None,
    ) -> None:
        self.source, self.settings = source, settings
        self.on_change = on_change
        self._clock = clock
        self._sock = sock
        self.ident = (os.getpid() ^ 0x4567) & 0xFFFF
        self._seq = 0
        self._lock = threading.Lock()
        self._judged = threading.Condition(self._lock)
        self._tracks: dict[IPAddress, ProbeTrack] = {}
        self._last_answer: dict[IPAddress, float] = {}
        #: targets probed in the current round: endpoint -> whether its reply arrived
        self._pending: dict[IPAddress, bool] = {}

    # ----- any thread -----

    def set_targets(self, targets: Iterable[IPAddress]) -> None:
        """Probe exactly these endpoints from now on (of the underlay's family); a vanished one forgets its track."""
        wanted = {t for t in targets if t.version == self.source.version}
        with self._lock:
            for gone in set(self._tracks) - wanted:
                del self._tracks[gone]
                self._last_answer.pop(gone, None)
                self._pending.pop(gone, None)
            for new in wanted - set(self._tracks):
                self._tracks[new] = ProbeTrack()

    def states(self) -> dict[IPAddress, EndpointState]:
        with self._lock:
            return {ip: t.state for ip, t in self._tracks.items()}

    def reports(self) -> list[EndpointReport]:
        now = self._clock()
        with self._lock:
            return [
                EndpointReport(
                    endpoint=ip, state=t.state, misses=t.misses, sent=t.sent, answered=t.answered,
                    last_answer_age_s=round(now - self._last_answer[ip], 3) if ip in self._last_answer else None,
                )
                for ip, t in sorted(self._tracks.items(), key=lambda kv: int(kv[0]))
            ]

    def wait_judged(self, targets: Iterable[IPAddress], timeout: float) -> bool:
        """Wait until each of `targets` has had at least one probe judged (True) or `timeout` passed (False)."""
        wanted = [t for t in targets if t.version == self.source.version]
        deadline = self._clock() + timeout
        with self._judged:
            while True:
                if all(self._tracks.get(t, ProbeTrack(sent=1)).sent > 0 for t in wanted):
                    return True
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._judged.wait(left)

    # ----- the prober's thread -----

    def judge(self, answered: Mapping[IPAddress, bool]) -> list[tuple[IPAddress, EndpointState]]:
        """Record one round's results; returns the endpoints whose state changed (pure bookkeeping, no I/O)."""
        changes: list[tuple[IPAddress, EndpointState]] = []
        now = self._clock()
        with self._judged:
            for ip, ok in answered.items():
                track = self._tracks.get(ip)
                if track is None:
                    continue  # no longer a target
                new = record(track, ok, self.settings)
                self._tracks[ip] = new
                if ok:
                    self._last_answer[ip] = now
                if new.state is not track.state:
                    changes.append((ip, new.state))
            self._judged.notify_all()
        return changes

    def tick(self) -> None:
        """Judge the previous round, send the next one, collect replies for one round interval."""
        with self._lock:
            previous, self._pending = self._pending, {}
            targets = sorted(self._tracks, key=int)
        for ip, state in self.judge(previous):
            self._changed(ip, state)
        interval = self.settings.round_interval(len(targets))
        sock = self._socket()
        if sock is None or not targets:
            time.sleep(interval)
            return
        self._seq = (self._seq + 1) & 0xFFFF
        seq = self._seq
        with self._lock:
            for ip in targets:
                if ip in self._tracks:
                    self._pending[ip] = False
        for ip in targets:
            sock.send(ip, self.ident, seq)
        deadline = self._clock() + interval
        while (left := deadline - self._clock()) > 0:
            try:
                ready, _, _ = select.select([sock.sock], [], [], left)
            except (OSError, ValueError):
                time.sleep(min(left, 0.05))
                continue
            if not ready:
                continue
            replies = sock.drain(self.ident)
            with self._lock:
                by_text = {str(t): t for t in self._pending}
                for peer, got_seq in replies:
                    target = by_text.get(peer.split("%", 1)[0])
                    if target is not None and got_seq == seq:
                        self._pending[target] = True

    def _socket(self) -> EchoSocket | None:
        if self._sock is None:
            try:
                self._sock = EchoSocket(self.source)
            except OSError as e:
                log.warning("endpoint.probe_unavailable", source=str(self.source), error=str(e))
                return None
        return self._sock

    def _changed(self, ip: IPAddress, state: EndpointState) -> None:
        if state is EndpointState.DOWN:
            log.warning("endpoint.down", endpoint=str(ip), misses=self.settings.fall)
        else:
            log.info("endpoint.up", endpoint=str(ip))
        if self.on_change is not None:
            try:
                self.on_change(ip, state)
            except Exception:
                log.exception("endpoint.on_change_failed", endpoint=str(ip))

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set; an unexpected error is logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("endpoint.prober_tick_failed")
                stop.wait(self.settings.interval_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
