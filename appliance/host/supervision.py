"""Supervising the daemons the services run as children (ExaBGP, the BIRD BFD sidecar): one implementation.

What every child needs, and why:
- respawn with back-off when it exits (0.5 s doubling to 10 s; back to 0.5 s once a child ran for 30 s): a crashing
  daemon must come back quickly, but a crash loop must not burn a CPU;
- `parent_death_signal()`: the kernel SIGTERMs the child when the thread that spawned it dies, so a service that
  dies without running its shutdown code does not leave ExaBGP announcing our EIPs with nobody driving it;
- `kill_stale(pidfile, marker)`: a restarted service first kills the daemon a previous run left behind (else two
  ExaBGPs talk to the same routers), but only when that pid's command line still carries `marker` (our config
  path), so a recycled pid of an unrelated process is never touched;
- `stop_group(proc, timeout_s)`: a child started in its own session is stopped with its helpers (ExaBGP's API
  bridge): SIGTERM to the process group, SIGKILL when it has not exited within the timeout.

`Supervisor` is the respawn policy without a thread of its own: the owner calls `tick()` from its loop (the BGP
speaker from its selector loop, the BFD sidecar from a small thread). Spawning, stopping and the clock are
injected, so unit tests drive the back-off with fakes and a fake clock.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from appliance.core.backoff import Backoff, BackoffPolicy
from appliance.core.events import EventLogger, error_text

log = EventLogger(logging.getLogger(__name__))

#: the respawn back-off of every supervised daemon
RESPAWN_BACKOFF = BackoffPolicy(initial=0.5, maximum=10.0)
#: a child that ran this long is healthy again: its next exit starts the back-off from the beginning
STABLE_UPTIME_S = 30.0

_PR_SET_PDEATHSIG = 1
try:  # loaded once here, at import: a dlopen in the forked child of a threaded process could deadlock
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
    log.warning("process.stale_killed", pid=pid, marker=marker)
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


def spawn_child(argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None,
                pid_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a daemon the supervised way: its own session (so `stop_group` reaches its helpers), the parent-death
    signal, stdin closed, stdout and stderr appended to `log_path`; its pid written to `pid_path` when given (for
    `kill_stale` after a crash of ours; leave it None for daemons that write their own pid file)."""
    with log_path.open("ab") as logf:
        proc = subprocess.Popen(
            list(argv), env=None if env is None else dict(env), stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=parent_death_signal(),
        )  # fmt: skip
    if pid_path is not None:
        pid_path.write_text(f"{proc.pid}\n")
    return proc


class Child(Protocol):
    """What the supervisor needs of a child process (`subprocess.Popen` has it; tests pass fakes)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildEvents:
    """The event names one supervised daemon logs under (operators know them per daemon, e.g. `bgp.exabgp_exited`)."""

    started: str
    exited: str
    spawn_failed: str


class Tick(enum.Enum):
    """What one `Supervisor.tick()` did."""

    #: the child is running, or a respawn is not due yet
    IDLE = "idle"
    #: the child was found exited; a respawn is scheduled after the back-off
    EXITED = "exited"
    #: a (re)spawn succeeded
    SPAWNED = "spawned"
    #: a (re)spawn failed; retried after the back-off
    SPAWN_FAILED = "spawn_failed"


C = TypeVar("C", bound=Child)

#: what a failed spawn raises: the binary is missing (OSError) or the daemon did not come up (RuntimeError)
SPAWN_ERRORS: tuple[type[Exception], ...] = (OSError, RuntimeError)


class Supervisor(Generic[C]):
    """Keeps one child running: spawns it when due, notices its exit, respawns it after a back-off.

    Not thread-safe and without a thread: one owner loop calls `tick()` (and `start()` once, optionally). `stop()`
    stops the current child; the owner stops ticking first when it means "for good" (else the next tick respawns,
    which is how a stuck daemon is restarted).
    """

    def __init__(self, *, spawn: Callable[[], C], stop: Callable[[C | None, float], bool], events: ChildEvents,
                 policy: BackoffPolicy = RESPAWN_BACKOFF, stable_uptime_s: float = STABLE_UPTIME_S,
                 clock: Callable[[], float] = time.monotonic, logger: EventLogger | None = None,
                 rng: random.Random | None = None) -> None:
        self._spawn = spawn
        self._stop = stop
        self._events = events
        self._stable_uptime_s = stable_uptime_s
        self._clock = clock
        self._log = logger or log
        self._backoff = Backoff(policy, rng)
        self._child: C | None = None
        self._started_at = 0.0
        self._next_spawn = 0.0
        #: how many times the child exited (each exit schedules a respawn)
        self.restarts = 0

    @property
    def child(self) -> C | None:
        """The current child (possibly exited and not yet noticed), or None."""
        return self._child

    @property
    def pid(self) -> int | None:
        """The running child's pid, None when none runs."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def running(self) -> bool:
        return self.pid is not None

    def seconds_until_due(self) -> float:
        """How long until a pending respawn is due (0 when due now or nothing is pending)."""
        if self._child is not None:
            return 0.0
        return max(0.0, self._next_spawn - self._clock())

    def start(self, spawn: Callable[[], C] | None = None) -> C:
        """Spawn the first child now, raising the spawn's error (a daemon that cannot start at all is fatal to the
        caller); afterwards `tick()` keeps it running. `spawn` replaces the usual spawn for this first one (e.g. with
        the caller's start timeout)."""
        child = (spawn or self._spawn)()
        self._adopt(child)
        return child

    def tick(self) -> Tick:
        """Supervise once: notice an exit (and schedule the respawn), or spawn when due."""
        now = self._clock()
        child = self._child
        if child is not None:
            if child.poll() is None:
                return Tick.IDLE
            uptime = now - self._started_at
            if uptime >= self._stable_uptime_s:
                self._backoff.reset()
            delay = self._backoff.next()
            self._child = None
            self._next_spawn = now + delay
            self.restarts += 1
            self._log.warning(self._events.exited, pid=child.pid, rc=child.returncode, uptime_s=round(uptime, 3),
                              respawn_in_s=round(delay, 3))
            return Tick.EXITED
        if now < self._next_spawn:
            return Tick.IDLE
        try:
            child = self._spawn()
        except SPAWN_ERRORS as exc:
            delay = self._backoff.next()
            self._next_spawn = now + delay
            self._log.error(self._events.spawn_failed, error=error_text(exc), retry_in_s=round(delay, 3))
            return Tick.SPAWN_FAILED
        self._adopt(child)
        return Tick.SPAWNED

    def stop(self, timeout_s: float) -> bool:
        """Stop the current child (see `stop_group`); False when none was running."""
        return self._stop(self._child, timeout_s)

    def _adopt(self, child: C) -> None:
        self._child = child
        self._started_at = self._clock()
        self._log.info(self._events.started, pid=child.pid)
