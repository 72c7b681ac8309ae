"""Condition probes for the WireGuard namespace tests: one echo round trip, a UDP probe that runs until told to stop,
and the liveness prober's log read while it runs.

Why not the testbed's fixed-duration probe: a probe that stops after N seconds only covers the scenario when the
machine is fast enough; these run until the test has seen the scenario through, so the tests wait on conditions
and never on sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

from lab.testbeds.wireguard import EXTERNAL, EXTERNAL6, WireguardTestbed

#: WireGuard alone re-handshakes only after KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s) of unanswered data; the agent's
#: prober resets the session after misses x interval (0.3 s here). The recovery bound sits well above the expected
#: figure (~0.5 s) and below WireGuard's own 15 s, so a recovery only WireGuard's timers could make fails the test.
RECOVERY_BOUND_S = 12.0

#: echo port of `WireguardTestbed.start_echo_server`
ECHO_PORT = "9000"

_ONE_ECHO = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, port)); s.settimeout(0.5)
for attempt in range(3):
    s.send(b"echo")
    try:
        s.recv(64); print("answered"); break
    except OSError:
        pass
"""

# sends a numbered datagram every `interval` until the stop file exists, then collects replies until one second
# passes without any; prints one JSON line (same keys as the testbed's probe)
_STOPPABLE_PROBE = """
import json, os, select, socket, sys, time
host, port, interval, stop = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, port)); s.setblocking(False)
got, sent, seq = set(), set(), 0
nxt = time.monotonic()
def drain():
    while True:
        try: got.add(int(s.recv(64)))
        except (OSError, ValueError): return
while not os.path.exists(stop):
    if time.monotonic() >= nxt:
        seq += 1; sent.add(seq)
        try: s.send(str(seq).encode())
        except OSError: pass
        nxt += interval
    select.select([s], [], [], max(0.0, nxt - time.monotonic())); drain()
while select.select([s], [], [], 1.0)[0]:
    drain()
lost = sorted(sent - got); run = best = 0; prev = None
for q in lost:
    run = run + 1 if prev == q - 1 else 1; best = max(best, run); prev = q
print(json.dumps({"sent": len(sent), "received": len(got), "lost": len(lost), "max_run": best,
                  "outage_ms": round(best * interval * 1000, 1)}), flush=True)
"""


def echo_answered(tb: WireguardTestbed, *, v6: bool = False) -> bool:
    """One datagram pod -> external echo server -> pod answered (up to three tries); needs `start_echo_server`."""
    host = str(EXTERNAL6 if v6 else EXTERNAL)
    return "answered" in tb.run("pod", sys.executable, "-c", _ONE_ECHO, host, ECHO_PORT, check=False)


class StoppableProbe:
    """The 10 ms UDP echo probe pod -> external -> pod, running until `stop()`; `stop()` returns its figures."""

    def __init__(self, tb: WireguardTestbed, *, interval: float = 0.01, v6: bool = False, name: str = "probe") -> None:
        self._stop = tb.workdir / f"{name}.stop"
        self._stop.unlink(missing_ok=True)
        host = str(EXTERNAL6 if v6 else EXTERNAL)
        self._proc = tb.spawn("pod", sys.executable, "-c", _STOPPABLE_PROBE, host, ECHO_PORT, str(interval),
                              str(self._stop))  # fmt: skip

    def stop(self) -> dict[str, float]:
        self._stop.touch()
        out, err = self._proc.communicate(timeout=60)
        lines = out.strip().splitlines()
        assert lines, f"the probe printed nothing (rc {self._proc.returncode}): {err}"
        return {k: float(v) for k, v in json.loads(lines[-1]).items()}


class OutputTail:
    """Everything a running process has written to its stderr so far (read without blocking, accumulated)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self._fd = proc.stderr.fileno()
        os.set_blocking(self._fd, False)
        self._text = ""

    def text(self) -> str:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._fd, 65536):
                self._text += chunk.decode(errors="replace")
        return self._text
