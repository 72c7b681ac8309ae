"""Running the state-sync channels: one supervised conntrackd per peer, its resync and its statistics.

`StateSyncDaemons.apply(plan)` converges the running daemons on a `StateSyncPlan` (start the new channels, stop the
removed ones, restart a channel whose configuration changed; the others are left alone, so a member joining or
leaving never restarts the channels of the rest). `tick()`, called from one owner thread, supervises every daemon
(respawn, back-off in a crash loop: `appliance.host.supervision`), asks a (re)started daemon for a full resync from
its peer (`conntrackd -n`), re-sends its own entries every `refresh_interval_s` (`conntrackd -B`: an injected
entry expires with the timeout it was sent with), reads the statistics (`conntrackd -s`) and follows each peer's
liveness: the daemon's received-packet counter moving (FTFW sends keep-alives when idle) means the peer is there.

A resync counts as done when, after the request, the channel to the peer is up and, over a whole statistics interval
from then, the entries received per interval stopped growing - the peer's burst is in, or an idle peer sent nothing
(`plan.state_sync.step_resync`; a request sent before the channel was up and answered by nothing is sent again once
it is up) - or it is given up after `resync_timeout_s` from the first request (a peer that is gone must not hold
anyone up). Each daemon is handled on its own: a peer that disappears only marks its own channel down.

Every daemon runs in the foreground (`conntrackd -C conf`), in its own session, with the parent-death signal, its
output appended to its log; its files live in `<state_dir>/state-sync/`, named by the channel's port (unique among
the channels of one member): `ch-<port>.conf`, `.ctl` (UNIX socket), `.lock`, `.log`, `.pid`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.core.events import EventLogger, error_text
from appliance.datapath.plan.state_sync import (
    ChannelPaths,
    ChannelStats,
    ResyncProgress,
    StateSyncPlan,
    StateSyncSettings,
    SyncChannel,
    parse_stats,
    render_conntrackd_conf,
    step_resync,
)
from appliance.host.supervision import ChildEvents, Supervisor, Tick, kill_stale, spawn_child, stop_group

#: seconds a starting daemon gets to open its UNIX socket
START_TIMEOUT_S = 3.0
#: seconds a `conntrackd -s`/`-n` call may take (it talks to the local daemon over its UNIX socket)
CALL_TIMEOUT_S = 2.0
#: a UNIX socket path is at most 108 bytes
_MAX_SOCKET_PATH = 100

_EVENTS = ChildEvents(started="state_sync.daemon_started", exited="state_sync.daemon_exited",
                      spawn_failed="state_sync.daemon_spawn_failed")


class ResyncState:
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerState:
    """What one channel looks like now (for the view, the metrics and the announcement gate)."""

    peer: str
    address: str
    port: int
    running: bool
    up: bool
    resync: str
    #: duration of the last finished resync (None before the first)
    resync_seconds: float | None
    stats: ChannelStats
    #: why the daemon is not running (spawn failure, no route to the peer)
    problem: str = ""


def route_interface(peer: str, local: str) -> str:
    """The interface the route toward `peer` from `local` leaves by (`ip route get`); conntrackd needs its name."""
    proc = subprocess.run(["ip", "-j", "route", "get", peer, "from", local], capture_output=True, text=True,
                          timeout=CALL_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"no route to {peer} from {local}: {proc.stderr.strip()[:200]}")
    routes = json.loads(proc.stdout or "[]")
    dev = routes[0].get("dev") if routes else None
    if not dev:
        raise RuntimeError(f"no route to {peer} from {local}")
    return str(dev)


def channel_dir(state_dir: Path) -> Path:
    return state_dir / "state-sync"


def _socket_dir(base: Path) -> Path:
    """Where the UNIX sockets go: next to the configs, or (a long state directory) a short private directory."""
    if len(str(base / "ch-65535.ctl")) <= _MAX_SOCKET_PATH:
        return base
    short = Path(tempfile.gettempdir()) / f"egw-ss-{hashlib.sha256(str(base).encode()).hexdigest()[:12]}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short


@dataclass
class _Channel:
    """One daemon and what we follow of it (owned by the tick thread; replaced, never edited, by `apply`)."""

    channel: SyncChannel
    conf_text: str
    conf: Path
    paths: ChannelPaths
    log: Path
    pid: Path
    supervisor: Supervisor[subprocess.Popen[bytes]] | None = None
    stats: ChannelStats = field(default_factory=ChannelStats)
    stats_at: float | None = None
    heard_at: float | None = None
    up: bool = False
    resync: str = ResyncState.PENDING
    #: the first request of this resync (its duration and timeout count from here) and the last one
    resync_started_at: float = 0.0
    resync_requested_at: float = 0.0
    resync_progress: ResyncProgress = field(default_factory=ResyncProgress)
    resync_seconds: float | None = None
    refreshed_at: float = 0.0
    problem: str = ""


class StateSyncDaemons:
    def __init__(self, state_dir: Path, settings: StateSyncSettings, *, member: str,
                 interface_of: Callable[[str, str], str] = route_interface,
                 clock: Callable[[], float] = time.monotonic, log: EventLogger | None = None) -> None:
        self.dir = channel_dir(state_dir)
        self.settings = settings
        self.member = member
        self.interface_of = interface_of
        self.clock = clock
        self.log = log or EventLogger("egressgw.gateway.state_sync", node=member)
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._retired: list[_Channel] = []
        #: resync durations reported since the last `take_resyncs` (for the gauge and events)
        self.last_resync_seconds: float | None = None

    # ----- converge (reconcile thread) -----

    def apply(self, plan: StateSyncPlan) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Converge the set of channels on `plan`: (changes, failures). Daemons start in the next `tick`."""
        changes: list[str] = []
        failures: list[str] = []
        desired: dict[str, _Channel] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        sockets = _socket_dir(self.dir)
        for sc in plan.channels:
            try:
                dev = self.interface_of(str(sc.peer_address), str(sc.local_address))
            except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as e:
                failures.append(f"state sync channel to {sc.peer}: {error_text(e)}")
                continue
            name = f"ch-{sc.port}"
            paths = ChannelPaths(socket=str(sockets / f"{name}.ctl"), lock=str(self.dir / f"{name}.lock"))
            text = render_conntrackd_conf(sc, member=self.member, interface=dev, paths=paths)
            desired[sc.peer] = _Channel(channel=sc, conf_text=text, conf=self.dir / f"{name}.conf", paths=paths,
                                        log=self.dir / f"{name}.log", pid=self.dir / f"{name}.pid")
        with self._lock:
            for peer, old in list(self._channels.items()):
                new = desired.get(peer)
                if new is not None and new.conf_text == old.conf_text:
                    desired[peer] = old
                    continue
                self._retired.append(old)
                changes.append(f"state sync: stop channel to {peer} (port {old.channel.port})")
            for peer, c in desired.items():
                if self._channels.get(peer) is not c:
                    changes.append(f"state sync: start channel to {peer} at {c.channel.peer_address} "
                                   f"port {c.channel.port}")
            self._channels = desired
        return tuple(changes), tuple(failures)

    # ----- supervise (tick thread) -----

    def tick(self) -> None:
        """Stop retired daemons, supervise the current ones, resync, read statistics."""
        with self._lock:
            retired, self._retired = self._retired, []
            current = list(self._channels.values())
        for ch in retired:
            self._stop(ch)
            self.log.info("state_sync.channel_stopped", peer=ch.channel.peer, port=ch.channel.port)
        now = self.clock()
        for ch in current:
            try:
                self._tick_one(ch, now)
            except Exception as e:  # one channel's trouble never stops the others
                ch.problem = error_text(e)
                self.log.warning("state_sync.tick_failed", peer=ch.channel.peer, error=ch.problem)

    def _tick_one(self, ch: _Channel, now: float) -> None:
        if ch.supervisor is None:
            ch.supervisor = Supervisor(spawn=lambda: self._spawn(ch), stop=stop_group, events=_EVENTS,
                                       clock=self.clock, logger=self.log.bind(peer=ch.channel.peer))
        tick = ch.supervisor.tick()
        if tick is Tick.SPAWNED:
            ch.problem = ""
            ch.stats, ch.stats_at, ch.heard_at = ChannelStats(), None, None
            ch.resync, ch.resync_progress = ResyncState.PENDING, ResyncProgress()
        elif tick is Tick.SPAWN_FAILED:
            ch.problem = "conntrackd did not start (see its log)"
        if not ch.supervisor.running():
            self._set_up(ch, False)
            return
        read = ch.stats_at is None or now - ch.stats_at >= self.settings.stats_interval_s
        readings = self._read_stats(ch, now) if read else None
        self._set_up(ch, ch.heard_at is not None and now - ch.heard_at < self.settings.peer_timeout_s)
        if ch.resync == ResyncState.PENDING:
            self._ask_resync(ch, now)
            ch.resync, ch.resync_started_at = ResyncState.RUNNING, now
        elif ch.resync == ResyncState.RUNNING and readings is not None and now > ch.resync_requested_at:
            self._step_resync(ch, readings, now)
        refresh = self.settings.refresh_interval_s
        if refresh > 0 and now - ch.refreshed_at >= refresh:
            self._call(ch, "-B")  # keep the peer's copies of our steady flows from expiring
            ch.refreshed_at = now
        if ch.resync == ResyncState.RUNNING and now - ch.resync_started_at >= self.settings.resync_timeout_s:
            ch.resync = ResyncState.TIMED_OUT
            self.log.warning("state_sync.resync_timed_out", peer=ch.channel.peer,
                             timeout_s=self.settings.resync_timeout_s)

    def _read_stats(self, ch: _Channel, now: float) -> tuple[ChannelStats, ChannelStats] | None:
        """Read the daemon's statistics: (the reading before, this one), None when the call failed."""
        out = self._call(ch, "-s")
        if out is None:
            return None
        new = parse_stats(out)
        old, ch.stats, ch.stats_at = ch.stats, new, now
        if new.packets_received > old.packets_received:
            ch.heard_at = now
        return old, new

    def _ask_resync(self, ch: _Channel, now: float) -> None:
        """Send a full-resync request (`conntrackd -n`); the peer's answer is followed from the next reading."""
        self._call(ch, "-n")
        ch.resync_requested_at = ch.refreshed_at = now
        ch.resync_progress = ResyncProgress(asked_up=ch.up)

    def _step_resync(self, ch: _Channel, readings: tuple[ChannelStats, ChannelStats], now: float) -> None:
        old, new = readings
        ch.resync_progress = step_resync(ch.resync_progress, old=old, new=new, at=now,
                                         interval_s=self.settings.stats_interval_s, up=ch.up)
        if ch.resync_progress.ask_again:
            # the first request went out before the channel was up and nothing answered it: the peer's daemon
            # was not there yet (it adds our channel once it sees us in the cluster state)
            self._call(ch, "-n")
            ch.resync_requested_at = now
            self.log.info("state_sync.resync_asked_again", peer=ch.channel.peer)
        elif ch.resync_progress.done:
            ch.resync = ResyncState.DONE
            ch.resync_seconds = self.last_resync_seconds = now - ch.resync_started_at
            self.log.info("state_sync.resync_done", peer=ch.channel.peer, seconds=round(ch.resync_seconds, 3),
                          entries=ch.resync_progress.received)

    def _set_up(self, ch: _Channel, up: bool) -> None:
        if up == ch.up:
            return
        ch.up = up
        if up:
            self.log.info("state_sync.peer_up", peer=ch.channel.peer, address=ch.channel.peer_address,
                          port=ch.channel.port)
        else:
            self.log.warning("state_sync.peer_lost", peer=ch.channel.peer, address=ch.channel.peer_address,
                             port=ch.channel.port, timeout_s=self.settings.peer_timeout_s)

    def _spawn(self, ch: _Channel) -> subprocess.Popen[bytes]:
        ch.conf.write_text(ch.conf_text)
        kill_stale(ch.pid, str(ch.conf))
        for stale in (ch.paths.lock, ch.paths.socket):
            with contextlib.suppress(FileNotFoundError):
                Path(stale).unlink()
        proc = spawn_child([self.settings.binary, "-C", str(ch.conf)], log_path=ch.log, pid_path=ch.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not Path(ch.paths.socket).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_group(proc, 1.0)
                raise RuntimeError(f"conntrackd for {ch.channel.peer} did not open {ch.paths.socket}")
            time.sleep(0.02)
        return proc

    def _call(self, ch: _Channel, flag: str) -> str | None:
        try:
            proc = subprocess.run([self.settings.binary, "-C", str(ch.conf), flag], capture_output=True, text=True,
                                  timeout=CALL_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            ch.problem = f"conntrackd {flag}: {error_text(e)}"
            return None
        if proc.returncode != 0:
            ch.problem = f"conntrackd {flag}: exit {proc.returncode}: {proc.stderr.strip()[:200]}"
            return None
        return proc.stdout

    def _stop(self, ch: _Channel) -> None:
        if ch.supervisor is not None:
            ch.supervisor.stop(3.0)
        else:
            kill_stale(ch.pid, str(ch.conf))
        for f in (ch.conf, ch.pid, Path(ch.paths.lock), Path(ch.paths.socket)):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()

    # ----- read (any thread) -----

    def states(self) -> tuple[PeerState, ...]:
        with self._lock:
            current = list(self._channels.values())
        return tuple(
            PeerState(peer=ch.channel.peer, address=str(ch.channel.peer_address), port=ch.channel.port,
                      running=ch.supervisor is not None and ch.supervisor.running(), up=ch.up, resync=ch.resync,
                      resync_seconds=ch.resync_seconds, stats=ch.stats, problem=ch.problem)
            for ch in sorted(current, key=lambda c: c.channel.peer)
        )

    def resync_settled(self) -> bool:
        """Every current channel finished (or gave up) its last resync."""
        with self._lock:
            current = list(self._channels.values())
        return all(ch.resync in (ResyncState.DONE, ResyncState.TIMED_OUT) for ch in current)

    def stop_all(self) -> None:
        with self._lock:
            chans, self._channels = list(self._channels.values()) + self._retired, {}
            self._retired = []
        for ch in chans:
            self._stop(ch)

    def run(self, stop: threading.Event, period_s: float = 0.2) -> None:
        """The tick loop (the owner's thread)."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                self.log.exception("state_sync.tick_crashed")
            stop.wait(period_s)
