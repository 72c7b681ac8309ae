"""The lab's external server: answers TCP, UDP and ICMP and records the source address of every peer.

It stands for "the internet" behind the upstream router; the whole point of the project is *which source address*
it sees (an EIP or a node IP), so it both records that and tells the sender:
- UDP (default port 7000): each datagram is echoed back with `|<source address>` appended.
- TCP (same port): each line received is echoed back as `<line>|<source address>\\n`.
- ICMP/ICMPv6 echo requests are recorded through raw sockets (the kernel still answers them).
- Control (HTTP on 127.0.0.1:7080 inside the server's namespace): `GET /peers` (per protocol and source: first and
  last time seen, count), `GET /events?since=N` (each contact with a sequence number), `POST /reset`.

Run: `python -m lab.extserver [--port 7000] [--control 127.0.0.1:7080] [--state-file F]`; query it with
`python -m lab.extclient peers` from inside the same namespace.
"""

from __future__ import annotations

import argparse
import collections
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
        self._events: collections.deque[tuple[int, float, str, str, int]] = collections.deque(maxlen=max_events)
        self._seq = 0

    def record(self, proto: str, source: str, port: int = 0) -> None:
        now = time.time()
        with self._lock:
            self._seq += 1
            self._events.append((self._seq, now, proto, source, port))
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
                {"seq": q, "time": t, "proto": p, "source": s, "port": port}
                for q, t, p, s, port in self._events if q > since
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


def serve_udp(sock: socket.socket, rec: Recorder) -> None:
    while True:
        data, addr = sock.recvfrom(65535)
        src = normalise(addr[0])
        rec.record("udp", src, addr[1])
        sock.sendto(data + b"|" + src.encode(), addr)


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


def make_control(address: str, rec: Recorder) -> ThreadingHTTPServer:
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
            else:
                self._reply({"error": "not found"}, 404)

        def do_POST(self) -> None:
            if urlparse(self.path).path == "/reset":
                rec.reset()
                self._reply({"reset": True})
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
    args = parser.parse_args(argv)
    rec = Recorder()
    udp = _dual_stack(socket.SOCK_DGRAM, args.port)
    tcp = _dual_stack(socket.SOCK_STREAM, args.port)
    control = make_control(args.control, rec)
    threads = [threading.Thread(target=serve_udp, args=(udp, rec), daemon=True),
               threading.Thread(target=serve_tcp, args=(tcp, rec), daemon=True),
               threading.Thread(target=control.serve_forever, daemon=True)]
    if not args.no_icmp:
        threads.append(threading.Thread(target=serve_icmp, args=(rec,), daemon=True))
    if args.state_file:
        threads.append(threading.Thread(target=_dump, args=(rec, args.state_file), daemon=True))
    for t in threads:
        t.start()
    print(f"extserver: udp+tcp port {args.port}, control http://{args.control}", flush=True)
    try:
        while all(t.is_alive() for t in threads):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    print("extserver: a serving thread died", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
