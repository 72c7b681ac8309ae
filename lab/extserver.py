"""The lab's external server: answers TCP, UDP and ICMP and records the source address of every peer.

It stands for "the internet" behind the upstream router; the whole point of the project is *which source address*
it sees (an EIP or a node IP), so it both records that and tells the sender:
- UDP (default port 7000): each datagram is echoed back with `|<source address>` appended.
- TCP (same port): each line received is echoed back as `<line>|<source address>\\n`.
- ICMP/ICMPv6 echo requests are recorded through raw sockets (the kernel still answers them).
- Server push (`--push-port P`, off by default), for flows where the server keeps talking after the client went
  quiet (what a policy change must never turn into a pod-IP leak): UDP: a datagram `push [SECONDS [INTERVAL_MS]]`
  starts a stream of `push <seq>|<source seen>` datagrams to its sender (every `--push-interval-ms`, for SECONDS or
  `--push-duration`); TCP: the server speaks first on every accepted connection and keeps sending such lines until
  the connection breaks or the duration ends. Whatever the client sends back is recorded (`udp-push`, `tcp-push`).
  `python -m lab.extclient push` is the matching client (it acknowledges each pushed message).
- Source ports (`--report-port`, off by default): UDP echoes and pushed messages carry `|<source>|<source port>`
  instead of `|<source>`, so a client learns the SNAT port the server saw for each datagram (whether a failover
  kept a flow's source port).
- Wire record (`--wire`, off by default: it costs a Python wake-up per packet, keep it away from throughput runs):
  every IPv4/IPv6 packet arriving on any interface of the namespace is recorded by source address through a packet
  socket, whether or not a socket accepts it (a TCP segment from an address with no connection is reset by the
  kernel and never reaches `accept`, but it did leave the cluster).
- Control (HTTP on 127.0.0.1:7080 inside the server's namespace): `GET /peers` (per protocol and source: first and
  last time seen, count), `GET /events?since=N` (each contact with a sequence number; UDP events carry the
  payload's first 64 bytes up to a `|` as `tag`), `GET /wire`, `GET /wire/events?since=N` (the wire record, same
  shapes, `port` = destination port), `POST /reset` (both records), `POST /push/stop` (ends every push).

Run: `python -m lab.extserver [--port 7000] [--control 127.0.0.1:7080] [--state-file F] [--push-port P] [--wire]
[--report-port]`; query it with `python -m lab.extclient peers` from inside the same namespace.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ipaddress
import json
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

DEFAULT_PORT = 7000
DEFAULT_CONTROL = "127.0.0.1:7080"


def normalise(addr: str) -> str:
    """'::ffff:1.2.3.4' -> '1.2.3.4' (the dual-stack socket reports IPv4 peers mapped)."""
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class Recorder:
    """Thread-safe record of contacts: per (protocol, source) aggregates plus a bounded event log."""

    def __init__(self, max_events: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._peers: dict[tuple[str, str], list[float]] = {}
        self._events: collections.deque[tuple[int, float, str, str, int, str]] = collections.deque(
            maxlen=max_events)
        self._seq = 0

    def record(self, proto: str, source: str, port: int = 0, tag: str = "") -> None:
        now = time.time()
        with self._lock:
            self._seq += 1
            self._events.append((self._seq, now, proto, source, port, tag))
            agg = self._peers.get((proto, source))
            if agg is None:
                self._peers[(proto, source)] = [now, now, 1]
            else:
                agg[1] = now
                agg[2] += 1

    def peers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"proto": p, "source": s, "first": v[0], "last": v[1], "count": int(v[2])}
                for (p, s), v in sorted(self._peers.items(), key=lambda kv: kv[1][0])
            ]

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"seq": q, "time": t, "proto": p, "source": s, "port": port, "tag": tag}
                for q, t, p, s, port, tag in self._events if q > since
            ]

    def reset(self) -> None:
        with self._lock:
            self._peers.clear()
            self._events.clear()


def _dual_stack(kind: socket.SocketKind, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    return s


def tag_of(data: bytes) -> str:
    """What a UDP event records of its payload: up to 64 bytes, up to the first `|`."""
    return data[:64].split(b"|", 1)[0].decode(errors="replace")


def seen_suffix(src: str, port: int, *, report_port: bool) -> str:
    """What the server appends to an echo or a pushed message: `|<source>`, or `|<source>|<port>`."""
    return f"|{src}|{port}" if report_port else f"|{src}"


def serve_udp(sock: socket.socket, rec: Recorder, report_port: bool = False) -> None:
    while True:
        data, addr = sock.recvfrom(65535)
        src = normalise(addr[0])
        rec.record("udp", src, addr[1], tag_of(data))
        sock.sendto(data + seen_suffix(src, addr[1], report_port=report_port).encode(), addr)


class Pusher:
    """Server-push streams: one thread per UDP peer or TCP connection, all ended by `stop()`."""

    def __init__(self, rec: Recorder, *, interval: float, duration: float, report_port: bool = False) -> None:
        self.rec = rec
        self.report_port = report_port
        self.interval = interval
        self.duration = duration
        self._lock = threading.Lock()
        self._udp_peers: set[Any] = set()
        self._generation = 0

    def stop(self) -> None:
        with self._lock:
            self._generation += 1

    def _running(self, generation: int, until: float) -> bool:
        return generation == self._generation and time.monotonic() < until

    def serve_udp(self, sock: socket.socket) -> None:
        while True:
            data, addr = sock.recvfrom(65535)
            src = normalise(addr[0])
            self.rec.record("udp-push", src, addr[1], tag_of(data))
            words = data.split()
            if not words or words[0] != b"push":
                continue
            with self._lock:
                if addr in self._udp_peers:
                    continue
                self._udp_peers.add(addr)
                generation = self._generation
            duration = float(words[1]) if len(words) > 1 else self.duration
            interval = float(words[2]) / 1000.0 if len(words) > 2 else self.interval
            threading.Thread(target=self._push_udp, args=(sock, addr, src, generation, duration, interval),
                             daemon=True).start()

    def _push_udp(self, sock: socket.socket, addr: Any, src: str, generation: int, duration: float,
                  interval: float) -> None:
        until = time.monotonic() + min(duration, self.duration)
        seq = 0
        try:
            while self._running(generation, until):
                seq += 1
                with contextlib.suppress(OSError):  # no route for a moment: keep pushing, outlive the change
                    sock.sendto(f"push {seq}{seen_suffix(src, addr[1], report_port=self.report_port)}".encode(),
                                addr)
                time.sleep(interval)
        finally:
            with self._lock:
                self._udp_peers.discard(addr)

    def serve_tcp(self, sock: socket.socket) -> None:
        sock.listen(128)
        while True:
            conn, addr = sock.accept()
            threading.Thread(target=self._tcp_conn, args=(conn, addr), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket, addr: Any) -> None:
        src = normalise(addr[0])
        self.rec.record("tcp-push", src, addr[1])
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            generation = self._generation
        threading.Thread(target=self._tcp_read, args=(conn, src, addr[1]), daemon=True).start()
        until = time.monotonic() + self.duration
        seq = 0
        with conn:
            while self._running(generation, until):
                seq += 1
                try:
                    conn.sendall(f"push {seq}{seen_suffix(src, addr[1], report_port=self.report_port)}\n".encode())
                except OSError:
                    return
                time.sleep(self.interval)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _tcp_read(self, conn: socket.socket, src: str, port: int) -> None:
        buf = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            lines = buf.split(b"\n")
            buf = lines.pop()
            for line in lines:
                self.rec.record("tcp-push", src, port, tag_of(line))


ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}


def parse_frame(frame: bytes) -> tuple[str, str, int] | None:
    """(protocol, source address, destination port or 0) of an Ethernet frame carrying IPv4/IPv6, else None."""
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        proto, source, l4 = frame[23], str(ipaddress.IPv4Address(frame[26:30])), 14 + ihl
    elif ethertype == 0x86DD and len(frame) >= 54:
        proto, source, l4 = frame[20], str(ipaddress.IPv6Address(frame[22:38])), 54
    else:
        return None
    port = int.from_bytes(frame[l4 + 2:l4 + 4], "big") if proto in (6, 17) and len(frame) >= l4 + 4 else 0
    return _L4_NAMES.get(proto, str(proto)), source, port


def serve_wire(rec: Recorder) -> None:
    """Record every IP packet arriving on the namespace's interfaces (not loopback, not our own output)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    while True:
        frame, addr = sock.recvfrom(65535)
        if addr[0] == "lo" or addr[2] == PACKET_OUTGOING:
            continue
        parsed = parse_frame(frame)
        if parsed is not None:
            rec.record(parsed[0], parsed[1], parsed[2])


def _tcp_conn(conn: socket.socket, addr: Any, rec: Recorder) -> None:
    src = normalise(addr[0])
    rec.record("tcp", src, addr[1])
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    with conn:
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            lines = buf.split(b"\n")
            buf = lines.pop()
            out = b"".join(line + b"|" + src.encode() + b"\n" for line in lines)
            if lines:
                rec.record("tcp", src, addr[1])
                try:
                    conn.sendall(out)
                except OSError:
                    return


def serve_tcp(sock: socket.socket, rec: Recorder) -> None:
    sock.listen(128)
    while True:
        conn, addr = sock.accept()
        threading.Thread(target=_tcp_conn, args=(conn, addr, rec), daemon=True).start()


def serve_icmp(rec: Recorder) -> None:
    socks: dict[socket.socket, str] = {}
    for family, proto, name in ((socket.AF_INET, socket.IPPROTO_ICMP, "icmp"),
                                (socket.AF_INET6, socket.IPPROTO_ICMPV6, "icmp6")):
        try:
            socks[socket.socket(family, socket.SOCK_RAW, proto)] = name
        except OSError as exc:
            print(f"extserver: no raw {name} socket: {exc}", file=sys.stderr, flush=True)
    while socks:
        ready, _, _ = select.select(list(socks), [], [])
        for s in ready:
            data, addr = s.recvfrom(65535)
            if socks[s] == "icmp":
                ihl = (data[0] & 0x0F) * 4
                is_echo = len(data) > ihl and data[ihl] == 8
            else:
                is_echo = len(data) > 0 and data[0] == 128
            if is_echo:
                rec.record(socks[s], normalise(addr[0]))


def make_control(address: str, rec: Recorder, wire: Recorder | None = None,
                 pusher: Pusher | None = None) -> ThreadingHTTPServer:
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: Any, code: int = 200) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/peers":
                self._reply({"peers": rec.peers()})
            elif url.path == "/events":
                since = int(parse_qs(url.query).get("since", ["0"])[0])
                self._reply({"events": rec.events(since)})
            elif url.path == "/wire" and wire is not None:
                self._reply({"peers": wire.peers()})
            elif url.path == "/wire/events" and wire is not None:
                since = int(parse_qs(url.query).get("since", ["0"])[0])
                self._reply({"events": wire.events(since)})
            else:
                self._reply({"error": "not found"}, 404)

        def do_POST(self) -> None:
            path = urlparse(self.path).path
            if path == "/reset":
                rec.reset()
                if wire is not None:
                    wire.reset()
                self._reply({"reset": True})
            elif path == "/push/stop" and pusher is not None:
                pusher.stop()
                self._reply({"stopped": True})
            else:
                self._reply({"error": "not found"}, 404)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)


def _dump(rec: Recorder, path: str) -> None:
    while True:
        time.sleep(1.0)
        with open(path + ".tmp", "w") as f:
            json.dump({"peers": rec.peers()}, f)
        os.replace(path + ".tmp", path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.extserver", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP and UDP port (all addresses)")
    parser.add_argument("--control", default=DEFAULT_CONTROL, help="HTTP control endpoint HOST:PORT")
    parser.add_argument("--state-file", help="also write the peers as JSON to this file every second")
    parser.add_argument("--no-icmp", action="store_true")
    parser.add_argument("--push-port", type=int, default=0, help="server-push UDP and TCP port (0: off)")
    parser.add_argument("--push-interval-ms", type=float, default=20.0, help="between two pushed messages")
    parser.add_argument("--push-duration", type=float, default=60.0, help="longest push stream, seconds")
    parser.add_argument("--wire", action="store_true", help="record every arriving IP packet by source")
    parser.add_argument("--report-port", action="store_true",
                        help="echoes and pushed messages also carry the source port the server saw")
    args = parser.parse_args(argv)
    rec = Recorder()
    wire = Recorder() if args.wire else None
    pusher = (Pusher(rec, interval=args.push_interval_ms / 1000.0, duration=args.push_duration,
                     report_port=args.report_port) if args.push_port else None)
    udp = _dual_stack(socket.SOCK_DGRAM, args.port)
    tcp = _dual_stack(socket.SOCK_STREAM, args.port)
    control = make_control(args.control, rec, wire, pusher)
    threads = [threading.Thread(target=serve_udp, args=(udp, rec, args.report_port), daemon=True),
               threading.Thread(target=serve_tcp, args=(tcp, rec), daemon=True),
               threading.Thread(target=control.serve_forever, daemon=True)]
    if pusher is not None:
        threads += [
            threading.Thread(target=pusher.serve_udp, args=(_dual_stack(socket.SOCK_DGRAM, args.push_port),),
                             daemon=True),
            threading.Thread(target=pusher.serve_tcp, args=(_dual_stack(socket.SOCK_STREAM, args.push_port),),
                             daemon=True)]
    if wire is not None:
        threads.append(threading.Thread(target=serve_wire, args=(wire,), daemon=True))
    if not args.no_icmp:
        threads.append(threading.Thread(target=serve_icmp, args=(rec,), daemon=True))
    if args.state_file:
        threads.append(threading.Thread(target=_dump, args=(rec, args.state_file), daemon=True))
    for t in threads:
        t.start()
    extra = (f", push port {args.push_port}" if pusher else "") + (", wire record" if wire else "")
    print(f"extserver: udp+tcp port {args.port}{extra}, control http://{args.control}", flush=True)
    try:
        while all(t.is_alive() for t in threads):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    print("extserver: a serving thread died", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
