"""The gateway member's state directory: how `egressgw gateway drain` and `status` talk to the running service.

Why files and a signal rather than an RPC socket: they work with nothing running (status says "not running" and
shows the last state), survive the service's restart, need no protocol, and are trivial to inspect by hand.

- `gateway.pid`: the running service's PID, `flock`ed while it runs (a second service on the same state dir is
  refused; a stale file from a crash is not mistaken for a live service).
- `status.json`: the member's state (health, announcements desired vs acknowledged, peers, BFD, drain phase, the
  planners' skips): the status document of the service's `MemberView`, replaced atomically on every health tick;
  `updated_at` (wall clock) tells its age.
- `drain.request`: written by `egressgw gateway drain` before it sends SIGUSR1; the service also polls for it (a lost
  signal cannot lose a drain) and removes a stale one at start (a restart after a drain must not drain again).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from appliance.gateway.status import state_sync_line

PID_FILE = "gateway.pid"
STATUS_FILE = "status.json"
DRAIN_FILE = "drain.request"


class AlreadyRunning(Exception):
    """Another service holds the state directory's PID file lock."""


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_file: TextIO | None = None

    @property
    def pid_path(self) -> Path:
        return self.path / PID_FILE

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def drain_path(self) -> Path:
        return self.path / DRAIN_FILE

    # ----- the service side -----

    def acquire(self) -> None:
        """Create the directory, lock and write the PID file; raise `AlreadyRunning` if another service holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.pid_path, "a+")  # noqa: SIM115 - kept open (and locked) for the service's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise AlreadyRunning(f"another gateway service uses {self.path} (pid {self.read_pid()})") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f
        with contextlib.suppress(FileNotFoundError):
            self.drain_path.unlink()

    def release(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
            self._lock_file.close()
            self._lock_file = None

    def write_status(self, doc: Mapping[str, Any]) -> None:
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**doc, "updated_at": time.time()}, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.status_path)

    def drain_requested(self) -> bool:
        return self.drain_path.exists()

    # ----- the command side -----

    def read_status(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """The PID of a live service holding the lock, else None (a stale PID file from a crash is ignored)."""
        pid = self.read_pid()
        if pid is None:
            return None
        try:
            with open(self.pid_path) as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                return None  # we got the lock: nobody holds it
        except BlockingIOError:
            return pid
        except OSError:
            return None

    def request_drain(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.drain_path.write_text(f"{time.time()}\n")


def _age(doc: Mapping[str, Any], now: float) -> str:
    updated = doc.get("updated_at")
    return f"{now - float(updated):.1f}s ago" if isinstance(updated, int | float) else "unknown"


def render_skip(skip: Mapping[str, Any]) -> str:
    """One skip of the status document on one line: `reason  subject  policy ...  (planner)`."""
    reason = skip.get("reason", "?")
    rest = [f"{k}={v}" for k, v in skip.items() if k not in ("reason", "planner", "detail")]
    detail = f"; {skip['detail']}" if skip.get("detail") else ""
    return f"{reason:<28} {' '.join(rest)}{detail} ({skip.get('planner', '?')})"


def render_status(doc: Mapping[str, Any] | None, *, running_pid: int | None, now: float) -> str:
    """Human-readable member status (what `egressgw gateway status` prints)."""
    if doc is None:
        return "gateway member: no status recorded (never started with this state directory?)\n"
    lines = [
        f"member:        {doc.get('node', '?')}  (pid {running_pid if running_pid else 'not running'}; "
        f"updated {_age(doc, now)})",
        f"phase:         {doc.get('phase', '?')}",
    ]
    h = doc.get("health") or {}
    failing = ", ".join(h.get("failing") or []) or "-"
    lines.append(f"health:        {h.get('status', '?')} ({h.get('reason', '?')}); failing: {failing}")
    if h.get("hold_down_remaining_s"):
        lines.append(f"hold-down:     {h['hold_down_remaining_s']:.1f}s left (announcing with the worst preference)")
    checks = h.get("checks") or {}
    if checks:
        lines.append("checks:        " + "  ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in sorted(checks.items())))
    loop = doc.get("reconcile") or {}
    if loop:
        lines.append(
            f"reconcile:     last pass {loop.get('result', '?')} ({loop.get('duration_ms', '?')} ms), "
            f"{loop.get('passes', 0)} passes, {loop.get('failed_passes', 0)} failed"
        )
    ann = doc.get("announcements") or {}
    desired = ann.get("desired") or []
    acked = set(ann.get("acknowledged") or [])
    lines.append(f"announcements: mode {ann.get('mode', '-')}, {len(desired)} desired, {len(acked)} acknowledged")
    for item in desired:
        mark = "acked" if item in acked else "PENDING"
        lines.append(f"  {item:<48} {mark}")
    for item in sorted(acked - set(desired)):
        lines.append(f"  {item:<48} withdrawing")
    peers = doc.get("peers") or {}
    for peer, state in sorted(peers.items()):
        lines.append(f"peer {peer:<22} bgp {state}")
    bfd = doc.get("bfd") or {}
    for peer, state in sorted(bfd.items()):
        lines.append(f"peer {peer:<22} bfd {state}")
    lines.append(f"state sync:    {state_sync_line(doc.get('state_sync'))}")
    for p in (doc.get("state_sync") or {}).get("peers") or []:
        lines.append(f"  {p['peer']:<22} {p['address']}:{p['port']} {'up' if p.get('up') else 'DOWN'}, resync "
                     f"{p.get('resync')}, sent {p.get('sent', 0)} received {p.get('received', 0)} lost "
                     f"{p.get('lost', 0)}" + (f" ({p['problem']})" if p.get("problem") else ""))
    skipped = doc.get("skipped") or []
    if skipped:
        lines.append(f"skipped:       {len(skipped)} (left out by the planners; see the `plan.skipped` log events)")
    for skip in skipped:
        lines.append("  " + render_skip(skip))
    for cond in doc.get("conditions") or []:
        if cond.get("status") == "True":
            what = f"{cond.get('type', '?')} ({cond.get('reason', '?')})"
            lines.append(f"condition:     {what}: {cond.get('message', '')}")
    drain = doc.get("drain") or {}
    if drain:
        lines.append(f"drain:         {drain.get('state', '?')} {drain.get('detail', '')}".rstrip())
    return "\n".join(lines) + "\n"
