"""Thin wrappers around `ip` for the lab: namespaces, commands inside them, the processes they hold.

Every command names its namespace explicitly (`ip -n NS ...`, `ip netns exec NS ...`); nothing here ever touches the
host namespace's links or routes. Process identity is checked with the kernel's start time so a recycled PID is
never mistaken for (or killed as) a lab daemon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from appliance.core.waiting import poll_until

NETNS_DIR = Path("/run/netns")


class LabCommandError(RuntimeError):
    """A command inside the lab failed; the message carries the command, exit code and output."""


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0, input: str | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input,
            env=dict(env) if env is not None else None, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabCommandError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        raise LabCommandError(
            f"exit {proc.returncode}: {' '.join(argv)}\n{proc.stdout.strip()}\n{proc.stderr.strip()}".rstrip()
        )
    return proc


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", "-n", ns, *args], check=check)


def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    """argv prefixed so it runs inside namespace `ns` (ip netns exec keeps the PID: it execs the command)."""
    return ["ip", "netns", "exec", ns, *argv]


def list_namespaces() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir())


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def add(ns: str) -> None:
    run(["ip", "netns", "add", ns])
    ip(ns, "link", "set", "lo", "up")


def pids(ns: str) -> list[int]:
    """PIDs of every process whose network namespace is `ns`."""
    if not exists(ns):
        return []
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return sorted({int(tok) for tok in out.split() if tok.isdigit()})


def proc_start_time(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) of `pid`, or None when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, start_time: int | None = None) -> bool:
    st = proc_start_time(pid)
    return st is not None and (start_time is None or st == start_time)


def kill_all(pids_: Iterable[int], *, grace: float = 2.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL whatever is left."""
    targets = [p for p in pids_ if p > 1 and p != os.getpid()]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    def all_gone() -> bool:
        return not any(alive(p) for p in targets)

    poll_until(all_gone, timeout=grace, interval=0.02)
    for pid in targets:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    poll_until(all_gone, timeout=2.0, interval=0.02)


def kill_namespace(ns: str, *, grace: float = 2.0) -> None:
    """Kill every process inside `ns` (twice: a dying daemon may have forked)."""
    for _ in range(3):
        found = pids(ns)
        if not found:
            return
        kill_all(found, grace=grace)


def delete(ns: str) -> None:
    if exists(ns):
        run(["ip", "netns", "del", ns], check=False)
