"""Fast re-handshake after a gateway failover: probe through each WireGuard tunnel, reset the session on loss.

Why: the worker's single peer per instance has the instance EIP as endpoint and the members share the instance
key, so when the routers move the EIP to another member, the worker keeps sending data with a session that member
has never seen; it drops them, and WireGuard's own timers only re-handshake after ~5-15 s (REKEY_TIMEOUT +
KEEPALIVE_TIMEOUT). The agent therefore pings the gateway's probe address (`fe80::1`, the same on every member)
through each tunnel every `interval`; after `misses` unanswered probes in a row it drops the peer's session
(`WireguardApplier.reset_peer`: remove + re-add in one `wg set`), so the next packet - the next probe - starts a
fresh handshake with whichever member now holds the endpoint. Outage ~ misses x interval + one round trip.

While no member is reachable the probe keeps failing: resets then back off exponentially (x2 per fruitless reset,
at most 4x: one reset per 1.2 s with the defaults), so an unreachable instance costs a handshake initiation a second,
not ten. The cap is low on purpose: the next reset after the routers have the EIP again is what ends the outage
(WireGuard's own retry only comes after 5 s); with 32x the lab measured 2.8 s from the route's return to
traffic, with 4x 0.9 s.

`SessionWatch` is the pure state machine (unit-tested with no sockets); `Pinger` and `LivenessProber` are the shell:
raw ICMPv6 sockets bound to the WireGuard device. `python -m appliance.datapath.apply.wireguard_liveness IF=PEERKEY
...` runs it standalone inside a namespace (the lab and the benchmarks use that; the agent runs `LivenessProber` in a
thread).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from appliance.core.events import EventLogger
from appliance.datapath.apply.wireguard import WireguardApplier
from appliance.datapath.plan.wireguard import GATEWAY_PROBE_ADDRESS

log = EventLogger("egressgw.wireguard.liveness")

ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129


@dataclass(slots=True, kw_only=True)
class SessionWatch:
    """Consecutive-miss counter with reset back-off. `record(answered)` -> True when the session must be reset."""

    misses_to_reset: int = 3
    #: at most this many times `misses_to_reset` between fruitless resets (bounds the recovery once a member is back)
    max_backoff: int = 4
    misses: int = 0
    fruitless_resets: int = 0
    resets: int = 0

    def record(self, answered: bool) -> bool:
        if answered:
            self.misses = 0
            self.fruitless_resets = 0
            return False
        self.misses += 1
        if self.misses < self.misses_to_reset * min(2**self.fruitless_resets, self.max_backoff):
            return False
        self.misses = 0
        self.fruitless_resets += 1
        self.resets += 1
        return True


class Pinger:
    """ICMPv6 echo to the gateway probe address through one device (raw socket, SO_BINDTODEVICE)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.ident = (os.getpid() ^ hash(device)) & 0xFFFF
        self.seq = 0
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        self.sock.setblocking(False)

    def send(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFF
        packet = struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, self.ident, self.seq) + b"egressgw-wg-probe"
        try:
            scope = socket.if_nametoindex(self.device)
            self.sock.sendto(packet, (str(GATEWAY_PROBE_ADDRESS), 0, 0, scope))
        except OSError:
            pass  # device gone or no route: counts as a miss
        return self.seq

    def drain(self) -> set[int]:
        """Sequence numbers of the echo replies waiting on the socket."""
        seqs: set[int] = set()
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, OSError):
                return seqs
            if len(data) >= 8:
                kind, _, _, ident, seq = struct.unpack("!BBHHH", data[:8])
                if kind == ICMP6_ECHO_REPLY and ident == self.ident:
                    seqs.add(seq)

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True, kw_only=True)
class _Target:
    pinger: Pinger
    peer: str
    watch: SessionWatch
    last_seq: int = 0
    answered_once: bool = False
    answered: set[int] = field(default_factory=set)


class LivenessProber:
    """Probe every (device, peer) target each `interval`; call `reset(device, peer)` after `misses` misses."""

    def __init__(self, reset: Callable[[str, str], None], *, interval: float = 0.1, misses: int = 3) -> None:
        self.reset = reset
        self.interval = interval
        self.misses = misses
        self.targets: dict[str, _Target] = {}
        self.lock = threading.Lock()
        self.resets = 0

    def set_targets(self, probes: Sequence[tuple[str, str]]) -> None:
        """The plan's `probes` (device, instance public key); sockets of vanished devices are closed."""
        with self.lock:
            wanted = dict(probes)
            for dev in set(self.targets) - set(wanted):
                self.targets.pop(dev).pinger.close()
            for dev, peer in wanted.items():
                if dev not in self.targets:
                    try:
                        pinger = Pinger(dev)
                    except OSError as exc:  # device not there (yet): the next pass retries
                        log.warning("wireguard.probe_unavailable", interface=dev, error=str(exc))
                        continue
                    self.targets[dev] = _Target(pinger=pinger, peer=peer,
                                                watch=SessionWatch(misses_to_reset=self.misses))
                self.targets[dev].peer = peer

    def tick(self) -> None:
        """Judge the previous round's probes, then send the next round, then collect replies for one interval."""
        with self.lock:
            targets = list(self.targets.items())
        for dev, t in targets:
            ok = t.last_seq in t.answered
            t.answered_once |= ok
            if t.last_seq and t.watch.record(ok):
                self.resets += 1
                log.warning("wireguard.session_lost", interface=dev, peer=t.peer, resets=t.watch.resets)
                try:
                    self.reset(dev, t.peer)
                except Exception:
                    log.exception("wireguard.peer_reset_failed", interface=dev)
            t.answered.clear()
            t.last_seq = t.pinger.send()
        deadline = time.monotonic() + self.interval
        while (left := deadline - time.monotonic()) > 0:
            # a reconcile pass may close a vanished device's socket meanwhile (set_targets runs in another thread)
            live = [t for _, t in targets if t.pinger.sock.fileno() >= 0]
            if not live:
                time.sleep(left)
                break
            try:
                ready, _, _ = select.select([t.pinger.sock for t in live], [], [], left)
            except (OSError, ValueError):
                continue
            for t in live:
                if t.pinger.sock in ready:
                    t.answered |= t.pinger.drain()

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set; an unexpected error is logged and the loop goes on (the thread never dies)."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("wireguard.prober_tick_failed")
                time.sleep(self.interval)

    def answering(self, device: str) -> bool:
        """True when the last judged probe through `device` was answered (the tunnel works end to end)."""
        with self.lock:
            t = self.targets.get(device)
            return t is not None and t.answered_once and t.watch.misses == 0

    def close(self) -> None:
        self.set_targets(())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="WireGuard session liveness prober (run inside the node's netns)")
    parser.add_argument("targets", nargs="+", help="DEVICE=PEER_PUBLIC_KEY")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--misses", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    applier = WireguardApplier(prefix="")
    prober = LivenessProber(applier.reset_peer, interval=args.interval, misses=args.misses)
    prober.set_targets([(dev, key) for dev, _, key in (t.partition("=") for t in args.targets)])
    stop = threading.Event()
    with contextlib.suppress(KeyboardInterrupt):
        prober.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
