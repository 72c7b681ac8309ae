"""ExaBGP's API process: relay ExaBGP's stdin/stdout to the speaker's unix socket, nothing else.

ExaBGP starts this (`run <python> -m bgp.api_bridge <socket>` in its config) and talks to it over pipes; the
`BgpSpeaker` in the gateway service listens on the unix socket. Keeping the bridge dumb means all protocol logic
lives in the service (`bgp.speaking`), survives ExaBGP restarts and is unit-testable, and the bridge can be respawned
by ExaBGP without losing anything. The bridge exits when either side closes, so a dead service or a dead ExaBGP
never leaves it behind.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time

#: how long to keep retrying the connection to the speaker (it may be restarting)
CONNECT_TIMEOUT_S = 10.0


def _connect(path: str) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    parent = os.getppid()
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline or os.getppid() != parent:  # give up, or ExaBGP is gone
                raise
            time.sleep(0.1)


def relay(path: str, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    sock = _connect(path)
    sel = selectors.DefaultSelector()
    sel.register(stdin_fd, selectors.EVENT_READ, "exabgp")
    sel.register(sock, selectors.EVENT_READ, "speaker")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "exabgp":
                    data = os.read(stdin_fd, 65536)
                    if not data:
                        return 0
                    sock.sendall(data)
                else:
                    data = sock.recv(65536)
                    if not data:
                        return 0
                    view = memoryview(data)
                    while view:
                        n = os.write(stdout_fd, view)
                        view = view[n:]
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bgp.api_bridge SOCKET", file=sys.stderr)
        return 2
    return relay(args[0])


if __name__ == "__main__":
    raise SystemExit(main())
