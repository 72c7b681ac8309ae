"""Client for the lab's external server: "which source address did you see?", and queries of its record.

Run inside a pod (or any lab) namespace:
- `python -m lab.extclient source --server 203.0.113.2 [--proto udp|tcp]` prints the source address the server saw
  (exit 1 on timeout). Works for IPv4 and IPv6 server addresses.
- `python -m lab.extclient push --server 203.0.113.2 --port 7001 [--proto udp|tcp] [--duration S]` is the client of
  the server-push mode: it opens one flow (UDP: a `push` datagram; TCP: a connection on which the server speaks
  first), acknowledges every pushed message on the same flow (`ack <seq>`), and at the end (duration, SIGTERM or
  the connection closing) prints a JSON report: messages received, acknowledgements sent, the sources the server
  said it saw, and why it ended.
- `python -m lab.extclient peers [--control 127.0.0.1:7080]` (inside the server's namespace) prints the JSON record;
  `events --since N`, `wire`, `wire-events --since N`, `reset` and `push-stop` likewise.
The functions are importable for tests that already run inside a namespace.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from lab.extserver import DEFAULT_CONTROL, DEFAULT_PORT


def _family(server: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in server else socket.AF_INET


def seen_source(server: str, *, port: int = DEFAULT_PORT, proto: str = "udp", timeout: float = 2.0,
                tries: int = 3) -> str:
    """Ask the external server which source address it saw for us. Raises TimeoutError when there is no answer."""
    token = b"whoami"
    if proto == "udp":
        with socket.socket(_family(server), socket.SOCK_DGRAM) as s:
            s.settimeout(timeout / tries)
            for _ in range(tries):
                s.sendto(token, (server, port))
                try:
                    data = s.recv(65535)
                except TimeoutError:
                    continue
                return data.split(b"|", 1)[1].decode()
        raise TimeoutError(f"no UDP answer from {server}:{port}")
    with socket.create_connection((server, port), timeout=timeout) as s:
        s.sendall(token + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65535)
            if not chunk:
                raise TimeoutError(f"TCP connection to {server}:{port} closed without an answer")
            buf += chunk
        return buf.strip().split(b"|", 1)[1].decode()


def push_client(server: str, *, port: int, proto: str = "udp", duration: float = 30.0, interval_ms: float = 20.0,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """One server-push flow, acknowledged message by message, until `duration`, `stop` or the flow ends."""
    stop = stop or threading.Event()
    sources: collections.Counter[str] = collections.Counter()
    received = acked = 0
    ended = "duration"
    until = time.monotonic() + duration
    if proto == "udp":
        with socket.socket(_family(server), socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            hello = f"push {duration + 5:.0f} {interval_ms:g}".encode()
            s.sendto(hello, (server, port))
            last_hello = time.monotonic()
            while not stop.is_set() and time.monotonic() < until:
                try:
                    data = s.recv(65535)
                except TimeoutError:
                    if not received and time.monotonic() - last_hello > 1.0:  # the first hello can be lost
                        s.sendto(hello, (server, port))
                        last_hello = time.monotonic()
                    continue
                except OSError:
                    continue  # an ICMP error for an earlier datagram: the flow goes on
                head, _, seen = data.partition(b"|")
                received += 1
                sources[seen.decode(errors="replace")] += 1
                try:
                    s.sendto(b"ack " + head.split(b" ", 1)[-1], (server, port))
                    acked += 1
                except OSError:
                    pass
    else:
        try:
            conn = socket.create_connection((server, port), timeout=5.0)
        except OSError as exc:
            return {"received": 0, "acked": 0, "sources": {}, "ended": f"connect: {exc}"}
        with conn:
            conn.settimeout(0.2)
            buf = b""
            while True:
                if stop.is_set() or time.monotonic() >= until:
                    break
                try:
                    chunk = conn.recv(65535)
                except TimeoutError:
                    continue
                except OSError as exc:
                    ended = f"error: {exc}"
                    break
                if not chunk:
                    ended = "closed by the server"
                    break
                buf += chunk
                lines = buf.split(b"\n")
                buf = lines.pop()
                for line in lines:
                    head, _, seen = line.partition(b"|")
                    received += 1
                    sources[seen.decode(errors="replace")] += 1
                    try:
                        conn.sendall(b"ack " + head.split(b" ", 1)[-1] + b"\n")
                        acked += 1
                    except OSError as exc:
                        ended = f"error: {exc}"
    if stop.is_set():
        ended = "stopped"
    return {"received": received, "acked": acked, "sources": dict(sources), "ended": ended}


def control(path: str, *, address: str = DEFAULT_CONTROL, method: str = "GET", timeout: float = 5.0) -> Any:
    req = urllib.request.Request(f"http://{address}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.extclient")
    sub = parser.add_subparsers(dest="cmd", required=True)
    src = sub.add_parser("source", help="print the source address the server saw")
    src.add_argument("--server", default="203.0.113.2")
    src.add_argument("--port", type=int, default=DEFAULT_PORT)
    src.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    src.add_argument("--timeout", type=float, default=2.0)
    push = sub.add_parser("push", help="one server-push flow, acknowledged; prints a JSON report at the end")
    push.add_argument("--server", default="203.0.113.2")
    push.add_argument("--port", type=int, required=True)
    push.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    push.add_argument("--duration", type=float, default=30.0)
    push.add_argument("--interval-ms", type=float, default=20.0, help="UDP: asked of the server")
    for name in ("peers", "events", "wire", "wire-events", "reset", "push-stop"):
        p = sub.add_parser(name, help=f"{name} (control endpoint, inside the server's namespace)")
        p.add_argument("--control", default=DEFAULT_CONTROL)
        if name.endswith("events"):
            p.add_argument("--since", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "source":
            print(seen_source(args.server, port=args.port, proto=args.proto, timeout=args.timeout))
        elif args.cmd == "push":
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            print(json.dumps(push_client(args.server, port=args.port, proto=args.proto, duration=args.duration,
                                         interval_ms=args.interval_ms, stop=stop)), flush=True)
        elif args.cmd in ("peers", "wire"):
            print(json.dumps(control("/peers" if args.cmd == "peers" else "/wire", address=args.control)))
        elif args.cmd in ("events", "wire-events"):
            path = "/events" if args.cmd == "events" else "/wire/events"
            print(json.dumps(control(f"{path}?since={args.since}", address=args.control)))
        elif args.cmd == "push-stop":
            print(json.dumps(control("/push/stop", address=args.control, method="POST")))
        else:
            print(json.dumps(control("/reset", address=args.control, method="POST")))
    except (OSError, TimeoutError) as exc:
        print(f"extclient: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
