"""BFD toward the routers: a BFD-only BIRD 2 instance next to ExaBGP (ExaBGP has no BFD).

Why BIRD (see docs/bgp.md): a maintained, interoperable RFC 5880/5881 implementation with static single-hop
neighbors, measured at ~0.3 % CPU at 50 ms x 3 on this kind of machine, while the only Python implementation on PyPI
is unmaintained and costs ~8 % CPU at 20 ms. The router runs BFD on its BGP session (`bfd on` in BIRD, `neighbor X
bfd` in FRR); when our gateway dies, the router's BFD session times out and it drops our BGP routes within
~multiplier x interval. Our BIRD never touches the kernel routing table and has no BGP: only `protocol device`
(interface tracking) and `protocol bfd`.

`render_bird_bfd_config` is pure; `BfdSidecar` starts/stops `bird` (foreground, own control socket and pid file in
the workdir, kept running by an `appliance.host.supervision.Supervisor` ticked from a small thread) and reads the
session states with `birdc show bfd sessions`.

BFD says whether the member's forwarding plane is there, and that outlives a restart of the service (the kernel state
stays, see `appliance.gateway.service`): the routers drop a member's routes on a BFD down even while they keep them
for a BGP graceful restart, and a BFD session cannot be handed from one BIRD to another. So BIRD runs without the
parent-death signal: a restart stop `detach()`es it (left running, BFD stays up), a service killed outright leaves it
running too, and the next `start()` adopts a BIRD still running with the same config (supervised by pid from then
on) instead of replacing it. Only an explicit `stop()` ends it (politely, AdminDown; or abruptly); a config change
replaces it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.core.events import EventLogger
from appliance.host.supervision import (
    ChildEvents,
    Supervisor,
    kill_stale,
    process_alive,
    spawn_child,
    stop_group,
)
from bgp.settings import BgpSettings

log = EventLogger(logging.getLogger(__name__))

BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"
_BIRD_EVENTS = ChildEvents(started="bfd.sidecar_started", exited="bfd.sidecar_exited",
                           spawn_failed="bfd.sidecar_respawn_failed")
#: how often the supervising thread looks at BIRD
_TICK_S = 0.2
#: how long a (re)spawned BIRD may take to open its control socket
_SPAWN_TIMEOUT_S = 5.0


def render_bird_bfd_config(settings: BgpSettings) -> str:
    """A BIRD 2 config running only BFD toward every configured peer (single hop)."""
    b = settings.bfd
    lines = [
        "# rendered by egressgw (bgp.bfd_sidecar): BFD only, no routing protocols, no kernel routes",
        f"router id {settings.router_id};",
        "protocol device { scan time 10; }",
        "protocol bfd egressgw_bfd {",
        '    interface "*" {',
        f"        min rx interval {b.min_rx_ms} ms;",
        f"        min tx interval {b.min_tx_ms} ms;",
        f"        idle tx interval {max(b.min_tx_ms, 1000)} ms;",
        f"        multiplier {b.multiplier};",
        "    };",
    ]
    for peer in sorted(settings.peers, key=lambda p: (p.address.version, p.address)):
        local = f" local {peer.local_address}" if peer.local_address is not None else ""
        lines.append(f"    neighbor {peer.address}{local};")
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class BfdSession:
    peer: str
    interface: str
    state: str  # Up, Down, Init, AdminDown (BIRD's words)
    since: str
    interval_s: float
    timeout_s: float


_ROW = re.compile(r"^(?P<ip>[0-9a-fA-F:.]+)\s+(?P<iface>\S+)\s+(?P<state>\w+)\s+(?P<since>\S+(?: \S+)?)\s+"
                  r"(?P<interval>[\d.]+)\s+(?P<timeout>[\d.]+)\s*$")  # fmt: skip


def parse_bfd_sessions(text: str) -> dict[str, BfdSession]:
    """Parse `birdc show bfd sessions` (BIRD 2.0.x table) into peer -> session."""
    out: dict[str, BfdSession] = {}
    for line in text.splitlines():
        m = _ROW.match(line.strip())
        if m:
            out[m["ip"]] = BfdSession(
                peer=m["ip"],
                interface=m["iface"],
                state=m["state"],
                since=m["since"],
                interval_s=float(m["interval"]),
                timeout_s=float(m["timeout"]),
            )
    return out


class AdoptedBird:
    """A BIRD started by a previous run of the service (not our child): supervised through its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not process_alive(self.pid):
            self.returncode = 0  # its exit status went to whoever reaps it, not to us
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"bird pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return 0


def _stop_bird(child: subprocess.Popen[bytes] | AdoptedBird | None, timeout_s: float) -> bool:
    """SIGTERM BIRD's process group (it runs in its own session), SIGKILL after `timeout_s`. An adopted BIRD is not
    our child (someone else reaps it): wait for it a bounded time after the SIGKILL."""
    return stop_group(child, timeout_s, reap_timeout_s=5.0 if isinstance(child, AdoptedBird) else None)


class BfdSidecar:
    """Runs `bird` with the BFD-only config in `workdir`; `command_prefix` e.g. ("ip", "netns", "exec", NS)."""

    def __init__(self, settings: BgpSettings, workdir: Path | str, *, command_prefix: Sequence[str] = ()) -> None:
        self.settings = settings
        self.workdir = Path(workdir)
        self.command_prefix = tuple(command_prefix)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._bird: Supervisor[subprocess.Popen[bytes] | AdoptedBird] = Supervisor(
            spawn=self._spawn, stop=_stop_bird, events=_BIRD_EVENTS, logger=log)

    @property
    def restarts(self) -> int:
        """How many times BIRD exited (and was respawned) since `start()`."""
        return self._bird.restarts

    @property
    def pid(self) -> int | None:
        """BIRD's pid while it runs."""
        return self._bird.pid

    @property
    def control_socket(self) -> Path:
        return self.workdir / "bird-bfd.ctl"

    def start(self, timeout_s: float = 5.0) -> None:
        """Start BIRD and a supervisor thread that respawns it (a dead sidecar makes the router drop our session).

        The first BIRD is spawned by the supervisor thread too, and `start` waits for it (raising what the spawn
        raised): the parent-death signal is bound to the spawning thread, so a BIRD started by a caller's short-lived
        thread would be SIGTERMed when that thread ends."""
        if not self.settings.bfd.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "bird-bfd.conf"
        rendered = render_bird_bfd_config(self.settings)
        adopted = self._adoptable(conf, rendered)
        if adopted is None:
            kill_stale(self.workdir / "bird-bfd.pid", str(conf))  # left by a previous run, with another config
            conf.write_text(rendered)
        else:
            log.info("bfd.sidecar_adopted", pid=adopted.pid, reason="left running by the previous run of the service")
        self._stop.clear()
        first: list[BaseException] = []
        started = threading.Event()
        self._watcher = threading.Thread(target=self._supervise, args=(timeout_s, started, first, adopted),
                                         name="bfd-sidecar", daemon=True)  # fmt: skip
        self._watcher.start()
        started.wait()
        if first:
            self._watcher.join()
            self._watcher = None
            raise first[0]

    def _adoptable(self, conf: Path, rendered: str) -> AdoptedBird | None:
        """The BIRD a previous run left running, when it runs our config unchanged and answers on its socket."""
        try:
            pid = int((self.workdir / "bird-bfd.pid").read_text().strip())
            running_ours = str(conf).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            same = conf.read_text() == rendered
        except (OSError, ValueError):
            return None
        if not (running_ours and same and process_alive(pid) and self.control_socket.exists()):
            return None
        try:
            res = subprocess.run([BIRDC, "-s", str(self.control_socket), "show", "status"], capture_output=True,
                                 timeout=2.0, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        return AdoptedBird(pid) if res.returncode == 0 else None

    def _spawn(self, timeout_s: float = _SPAWN_TIMEOUT_S) -> subprocess.Popen[bytes]:
        """Start BIRD (it writes its own pid file) and wait for its control socket: up means answering `birdc`.
        A BIRD that does not come up in time is stopped again, so a failed spawn leaves nothing running."""
        with contextlib.suppress(FileNotFoundError):
            self.control_socket.unlink()
        argv = [*self.command_prefix, BIRD, "-f", "-c", str(self.workdir / "bird-bfd.conf"),
                "-s", str(self.control_socket), "-P", str(self.workdir / "bird-bfd.pid")]  # fmt: skip
        proc = spawn_child(argv, log_path=self.workdir / "bird-bfd.log", parent_death=False)
        deadline = time.monotonic() + timeout_s
        while not self.control_socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_group(proc, 1.0)
                raise RuntimeError(f"bird (BFD sidecar) did not start; see {self.workdir / 'bird-bfd.log'}")
            time.sleep(0.05)
        return proc

    def _supervise(self, timeout_s: float, started: threading.Event, failure: list[BaseException],
                   adopted: AdoptedBird | None = None) -> None:
        try:
            self._bird.start(lambda: adopted or self._spawn(timeout_s))
        except BaseException as exc:  # handed to start(), which raises it in the caller's thread
            failure.append(exc)
            return
        finally:
            started.set()
        pause = _TICK_S
        while not self._stop.wait(pause):
            self._bird.tick()
            # a pending respawn is made on time, not up to a tick late
            pause = _TICK_S if self._bird.child is not None else min(_TICK_S, self._bird.seconds_until_due())

    def running(self) -> bool:
        return self._bird.running()

    def sessions(self) -> dict[str, BfdSession]:
        """Current BFD sessions; empty when the sidecar is not running or does not answer."""
        if not self.running():
            return {}
        try:
            res = subprocess.run(
                [BIRDC, "-s", str(self.control_socket), "show", "bfd", "sessions"],
                capture_output=True, text=True, timeout=2.0, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {}
        return parse_bfd_sessions(res.stdout)

    def peer_states(self) -> dict[str, str]:
        """peer -> BFD state (`Up`, `Down`, `Init`, `AdminDown`, or `Unknown` when BIRD has no session)."""
        sessions = self.sessions()
        return {str(p.address): sessions[str(p.address)].state if str(p.address) in sessions else "Unknown"
                for p in self.settings.peers}  # fmt: skip

    def detach(self, timeout_s: float = 3.0) -> None:
        """Stop supervising and leave BIRD running (a restart stop: the BFD sessions stay up, so the routers keep the
        routes they hold for our graceful restart); the next `start()` adopts it."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout_s + 6.0)
            self._watcher = None
        log.info("bfd.sidecar_detached", pid=self._bird.pid)

    def stop(self, timeout_s: float = 3.0, *, abrupt: bool = False) -> None:
        """Stop BIRD. Politely (SIGTERM), BIRD tells the routers `AdminDown`, which they must not take for a
        failure (RFC 5882): with graceful restart they then keep our routes for the restart time. `abrupt` (SIGKILL)
        sends nothing: the routers' BFD times out and they drop our routes at once, which is what a hard stop that
        could not withdraw (drain not acknowledged) needs."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout_s + 6.0)
            self._watcher = None
        if abrupt:
            proc = self._bird.child
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                log.warning("bfd.sidecar_killed", reason="hard stop: the routers' BFD must see us fail")
            return
        if self._bird.stop(timeout_s):
            log.info("bfd.sidecar_stopped")
