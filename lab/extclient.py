"""Client for the lab's external server: "which source address did you see?", and queries of its record.

Run inside a pod (or any lab) namespace:
- `python -m lab.extclient source --server 203.0.113.2 [--proto udp|tcp]` prints the source address the server saw
  (exit 1 on timeout). Works for IPv4 and IPv6 server addresses.
- `python -m lab.extclient peers [--control 127.0.0.1:7080]` (inside the server's namespace) prints the JSON record;
  `events --since N` and `reset` likewise.
The functions are importable for tests that already run inside a namespace.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
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
    for name in ("peers", "events", "reset"):
        p = sub.add_parser(name, help=f"{name} (control endpoint, inside the server's namespace)")
        p.add_argument("--control", default=DEFAULT_CONTROL)
        if name == "events":
            p.add_argument("--since", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "source":
            print(seen_source(args.server, port=args.port, proto=args.proto, timeout=args.timeout))
        elif args.cmd == "peers":
            print(json.dumps(control("/peers", address=args.control)))
        elif args.cmd == "events":
            print(json.dumps(control(f"/events?since={args.since}", address=args.control)))
        else:
            print(json.dumps(control("/reset", address=args.control, method="POST")))
    except (OSError, TimeoutError) as exc:
        print(f"extclient: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
