"""Supervising the daemons the services run as children (ExaBGP, the BIRD BFD sidecar): one implementation.

What every child needs, and why:
- respawn at once when it exits, back-off only for a crash loop: a daemon that crashed once (ExaBGP SIGKILLed on every
  member at once) must come back within its start time, because every second without it is a second the routers run
  on stale routes or none; but a daemon that keeps dying before it ever did its job must not burn a CPU. So the
  first `QUICK_RESPAWNS` exits in a row are respawned immediately, further ones after a back-off (0.5 s doubling to
  10 s); the owner calls `mark_healthy()` when the child did its job (ExaBGP: a BGP session reached Established),
  which ends the crash loop; a child that ran `STABLE_UPTIME_S` counts as healthy too (for owners that cannot tell);
- `parent_death_signal()`: the kernel SIGTERMs the child when the thread that spawned it dies, so a service that
  dies without running its shutdown code (SIGKILL, OOM) does not leave ExaBGP or BIRD running with nobody driving
  them; every long-running child is started with `spawn_child`, which sets it, from a thread that lives as long as
  the child should (the owner's supervising thread, never a short-lived caller's);
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

#: the respawn back-off of a daemon in a crash loop
RESPAWN_BACKOFF = BackoffPolicy(initial=0.5, maximum=10.0)
#: a child that ran this long counts as healthy (its exit is not part of a crash loop) even if never marked so
STABLE_UPTIME_S = 30.0
#: exits in a row without a healthy run in between that are respawned at once; the next ones back off. Three: a
#: crash, a second one while the routers still hold the session's last state, and one more, cost at most three
#: start times; a daemon that cannot start at all is then retried at 0.5, 1, 2 ... 10 s
QUICK_RESPAWNS = 3

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


def process_alive(pid: int) -> bool:
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
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


class GroupLeader(Protocol):
    """What `stop_group` needs of a process: a `subprocess.Popen`, or a process known only by its pid."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def stop_group(proc: GroupLeader | None, timeout_s: float, *, reap_timeout_s: float | None = None) -> bool:
    """SIGTERM the process group of `proc` (started with `start_new_session`), SIGKILL it after `timeout_s`, reap it
    (waiting at most `reap_timeout_s` after the SIGKILL, None = until it is gone).

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
        proc.wait(reap_timeout_s)
    return True


def spawn_child(argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None,
                pid_path: Path | None = None, parent_death: bool = True) -> subprocess.Popen[bytes]:
    """Start a daemon the supervised way: its own session (so `stop_group` reaches its helpers), the parent-death
    signal (unless `parent_death` is False: a daemon meant to outlive a restart of ours, adopted by the next start),
    stdin closed, stdout and stderr appended to `log_path`; its pid written to `pid_path` when given (for
    `kill_stale` after a crash of ours; leave it None for daemons that write their own pid file)."""
    with log_path.open("ab") as logf:
        proc = subprocess.Popen(
            list(argv), env=None if env is None else dict(env), stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=parent_death_signal() if parent_death else None,
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
    """Keeps one child running: spawns it when due, notices its exit, respawns it (at once, or after a back-off when
    it is in a crash loop).

    Not thread-safe and without a thread: one owner loop calls `tick()` (and `start()` once, optionally). `stop()`
    stops the current child; the owner stops ticking first when it means "for good" (else the next tick respawns,
    which is how a stuck daemon is restarted).
    """

    def __init__(self, *, spawn: Callable[[], C], stop: Callable[[C | None, float], bool], events: ChildEvents,
                 policy: BackoffPolicy = RESPAWN_BACKOFF, stable_uptime_s: float = STABLE_UPTIME_S,
                 quick_respawns: int = QUICK_RESPAWNS, clock: Callable[[], float] = time.monotonic,
                 logger: EventLogger | None = None, rng: random.Random | None = None) -> None:
        self._spawn = spawn
        self._stop = stop
        self._events = events
        self._stable_uptime_s = stable_uptime_s
        self._quick_respawns = quick_respawns
        #: exits (and failed spawns) since the child was last healthy: the crash-loop counter
        self._unhealthy_exits = 0
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
                self.mark_healthy()
            self._unhealthy_exits += 1
            delay = 0.0 if self._unhealthy_exits <= self._quick_respawns else self._backoff.next()
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
            self._unhealthy_exits += 1
            delay = self._backoff.next()
            self._next_spawn = now + delay
            self._log.error(self._events.spawn_failed, error=error_text(exc), retry_in_s=round(delay, 3))
            return Tick.SPAWN_FAILED
        self._adopt(child)
        return Tick.SPAWNED

    def mark_healthy(self) -> None:
        """The child did its job (e.g. ExaBGP established a session): whatever exits next is not a crash loop, and is
        respawned at once. Call from the thread that ticks."""
        self._unhealthy_exits = 0
        self._backoff.reset()

    @property
    def crash_loop(self) -> bool:
        """True while exits are being respawned after a back-off (more than `quick_respawns` without a healthy run)."""
        return self._unhealthy_exits > self._quick_respawns

    def stop(self, timeout_s: float) -> bool:
        """Stop the current child (see `stop_group`); False when none was running."""
        return self._stop(self._child, timeout_s)

    def _adopt(self, child: C) -> None:
        self._child = child
        self._started_at = self._clock()
        self._log.info(self._events.started, pid=child.pid)
