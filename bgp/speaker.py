"""BgpSpeaker: the thin I/O shell that runs ExaBGP and drives it with the `bgp.speaking.Announcer` state machine.

Threading model: a thread-safe object with its own background thread (the gateway service is a thread-based
reconcile loop). Public methods only take a lock and poke the thread; all I/O happens in the thread:

    ExaBGP (child, current netns or `command_prefix`)  --runs-->  python -m bgp.api_bridge SOCKET
        bridge <-- unix socket (workdir/api.sock) --> BgpSpeaker thread <-> Announcer (pure)

ExaBGP is supervised by `appliance.host.supervision.Supervisor`, ticked from the background thread: respawned at
once when it exits (with a back-off only for a crash loop: several exits in a row without a session reaching
Established; a session up marks it healthy); every new bridge connection resends the whole desired set, and a
session that comes up gets its End-of-RIB only after its routes were acknowledged (`manual-eor`), so routers that
kept our routes through a graceful restart never flush them early. `stop()` terminates ExaBGP: without graceful
restart it closes its sessions with a NOTIFICATION (the routers withdraw our routes at once); with graceful restart
negotiated it closes them silently and the routers keep our routes for the restart time (that is not a drain; see
`bgp.draining`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.core.events import EventLogger
from appliance.host.supervision import ChildEvents, Supervisor, Tick, kill_stale, spawn_child, stop_group
from bgp.announcing import Announcement
from bgp.exabgp_config import exabgp_environment, render_exabgp_config
from bgp.settings import BgpSettings
from bgp.speaking import AckTimeout, Announcer, CommandFailed, Event, ExabgpShutdown, PeerChanged, PeerState

log = EventLogger(logging.getLogger(__name__))

_TICK_S = 0.1
#: ExaBGP logs every API command; keep one previous file of this size
_LOG_ROTATE_BYTES = 16 * 1024 * 1024
_EXABGP_EVENTS = ChildEvents(started="bgp.exabgp_started", exited="bgp.exabgp_exited",
                             spawn_failed="bgp.exabgp_spawn_failed")


class BgpSpeaker:
    def __init__(
        self,
        settings: BgpSettings,
        workdir: Path | str,
        *,
        command_prefix: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        ack_timeout_s: float = 5.0,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.settings = settings
        self.workdir = Path(workdir)
        self.command_prefix = tuple(command_prefix)
        self._clock = clock
        self._on_event = on_event
        self._lock = threading.Condition()
        self._announcer = Announcer(peers=settings.peers, local_asn=settings.local_asn, ack_timeout_s=ack_timeout_s,
                                    manual_eor=settings.graceful_restart.enabled,
                                    desired_wait_s=float(settings.graceful_restart.restart_time_s))
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._exabgp = Supervisor(spawn=self._spawn, stop=stop_group, events=_EXABGP_EVENTS,
                                  logger=log.bind(config=str(self.config_path)))
        self._conn: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._buf = b""  # partial line from the channel
        self.ack_timeouts = 0

    # ----- public API (thread-safe) -----

    @property
    def restarts(self) -> int:
        """How many times ExaBGP exited (and was respawned) since `start()`."""
        return self._exabgp.restarts

    @property
    def socket_path(self) -> Path:
        return self.workdir / "api.sock"

    @property
    def config_path(self) -> Path:
        return self.workdir / "exabgp.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "exabgp.log"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "exabgp.pid"

    def start(self) -> None:
        """Write the config, listen on the socket, start ExaBGP and the background thread."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        kill_stale(self.pid_path, str(self.config_path))  # a previous run that died without stopping ExaBGP
        bridge = [sys.executable, "-m", "bgp.api_bridge", str(self.socket_path)]
        self.config_path.write_text(render_exabgp_config(self.settings, bridge_command=bridge))
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket_path))
        self._listener.listen(4)
        self._thread = threading.Thread(target=self._run, name="bgp-speaker", daemon=True)
        self._thread.start()

    def set_announcements(self, announcements: frozenset[Announcement]) -> None:
        """Declarative: the full desired set; the speaker diffs and converges in the background."""
        with self._lock:
            self._announcer.set_desired(announcements)
        self._wake()

    def acknowledged(self) -> frozenset[Announcement]:
        with self._lock:
            return self._announcer.acknowledged()

    def peer_states(self) -> dict[str, str]:
        with self._lock:
            return self._announcer.peer_states()

    def converged(self) -> bool:
        with self._lock:
            return self._announcer.converged()

    def wait_converged(self, timeout_s: float) -> bool:
        """Block until ExaBGP acknowledged exactly the desired set on every peer (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not self._announcer.converged():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, _TICK_S))
            return True

    def wait_peers(self, state: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not all(s == state for s in self._announcer.peer_states().values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, _TICK_S))
            return True

    @property
    def exabgp_pid(self) -> int | None:
        return self._exabgp.pid

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate ExaBGP (sessions close: the routers drop our routes) and the thread; idempotent."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s + 2.0)
        self._kill_exabgp(timeout_s)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # ----- background thread -----

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start ExaBGP (rotating its log first); the supervisor calls this when a (re)spawn is due."""
        env = dict(os.environ)
        env.update(exabgp_environment(self.settings))
        env["exabgp_api_pipename"] = f"egressgw-{os.getpid()}-{id(self):x}"
        argv = [*self.command_prefix, str(self.settings.exabgp_binary), "server", str(self.config_path)]
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
        return spawn_child(argv, env=env, log_path=self.log_path, pid_path=self.pid_path)

    def _kill_exabgp(self, timeout_s: float) -> None:
        self._exabgp.stop(timeout_s)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                try:
                    self._iterate(sel)
                except Exception:  # never let one bad iteration kill BGP for the whole service
                    log.exception("bgp.speaker_iteration_failed")
                    time.sleep(_TICK_S)
        finally:
            self._drop_conn(sel)
            sel.close()
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def _iterate(self, sel: selectors.BaseSelector) -> None:
        """One pass of the background thread: supervise ExaBGP, read the channel, write commands."""
        if self._exabgp.tick() is Tick.EXITED:
            self._drop_conn(sel)
        for key, _ in sel.select(_TICK_S):
            if key.data == "wake":
                os.read(self._wake_r, 4096)
            elif key.data == "listen":
                conn, _ = self._listener.accept()
                self._drop_conn(sel)
                self._conn = conn
                sel.register(conn, selectors.EVENT_READ, "conn")
                with self._lock:
                    self._announcer.channel_up()
                log.info("bgp.api_connected")
            elif key.data == "conn" and key.fileobj is self._conn and self._conn is not None:
                data = self._conn.recv(65536)
                if not data:
                    self._drop_conn(sel)
                    continue
                *lines, self._buf = (self._buf + data).split(b"\n")
                for raw in lines:
                    self._handle_line(raw.decode("utf-8", "replace"))
        self._flush(sel)

    def _handle_line(self, line: str) -> None:
        with self._lock:
            events = self._announcer.receive(line, now=self._clock())
            self._lock.notify_all()
        for ev in events:
            if isinstance(ev, PeerChanged) and ev.state is PeerState.UP:
                self._exabgp.mark_healthy()  # this ExaBGP did its job: a crash after this is not a crash loop
            self._report(ev)

    def _flush(self, sel: selectors.BaseSelector) -> None:
        with self._lock:
            commands, events = self._announcer.poll(now=self._clock())
            self._lock.notify_all()
        for ev in events:
            self._report(ev)
        if any(isinstance(e, AckTimeout) for e in events):
            self.ack_timeouts += 1
            self._drop_conn(sel)
            self._kill_exabgp(2.0)  # respawned by the loop; the new channel resends everything
            return
        if commands and self._conn is not None:
            payload = "".join(c + "\n" for c in commands).encode()
            try:
                self._conn.sendall(payload)
            except OSError:
                self._drop_conn(sel)
                return
            for c in commands:
                log.info("bgp.command_sent", command=c)

    def _drop_conn(self, sel: selectors.BaseSelector) -> None:
        if self._conn is not None:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(self._conn)
            self._conn.close()
            self._conn = None
            with self._lock:
                self._announcer.channel_down()
                self._lock.notify_all()
            log.warning("bgp.api_disconnected")
        self._buf = b""

    def _report(self, ev: Event) -> None:
        if isinstance(ev, PeerChanged):
            log.info("bgp.peer_changed", peer=ev.peer, state=ev.state, reason=ev.reason)
        elif isinstance(ev, CommandFailed):
            log.warning("bgp.command_failed", command=ev.command)
        elif isinstance(ev, AckTimeout):
            log.error("bgp.ack_timeout", command=ev.command, waited_s=round(ev.waited_s, 3), action="restart_exabgp")
        elif isinstance(ev, ExabgpShutdown):
            log.warning("bgp.exabgp_shutdown", line=ev.line)
        if self._on_event is not None:
            self._on_event(ev)
