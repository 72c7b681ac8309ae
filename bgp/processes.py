"""Child-process hygiene for the daemons we run (ExaBGP, the BIRD BFD sidecar).

Two failure modes matter: a service that dies without running its shutdown code would leave ExaBGP announcing our
EIPs with nobody driving it (and a restarted service would start a second ExaBGP toward the same routers). So:
- `parent_death_signal()` asks the kernel to SIGTERM the child when the thread that spawned it dies;
- `kill_stale(pidfile, marker)` kills a previous run's daemon recorded in our pid file, but only if its command line
  still contains `marker` (our config path), so a recycled pid of an unrelated process is never touched;
- `stop_group(proc, timeout_s)` stops a daemon we started in its own session: SIGTERM to its process group, SIGKILL
  when it has not exited within the timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
try:  # loaded once here: a dlopen in the forked child of a threaded process could deadlock
    _PRCTL: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets `sig` when the spawning thread exits (Linux only; best effort)."""
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def kill_stale(pidfile: Path, marker: str, *, timeout_s: float = 3.0) -> bool:
    """Kill the process named in `pidfile` if its command line contains `marker`; True when one was killed."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    if marker.encode() not in cmdline:
        return False
    log.warning("process.stale_killed pid=%s marker=%s", pid, marker)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def stop_group(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
    """SIGTERM the process group of `proc` (started with `start_new_session`), SIGKILL it after `timeout_s`, reap it.

    False when there was nothing to stop (never started, or already exited)."""
    if proc is None or proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return True
