"""The state directory protocol between `egressgw gateway` and its `drain`/`status` commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.cli.gateway import drain_command, status_command
from appliance.gateway.member_state import AlreadyRunning, StateDir

# a stand-in service: holds the state dir lock, writes a status, exits 0 on SIGUSR1 after "draining"
_FAKE_SERVICE = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from appliance.gateway.member_state import StateDir
    state = StateDir(Path(sys.argv[1]))
    state.acquire()
    done = []
    signal.signal(signal.SIGUSR1, lambda *_: done.append(1))
    state.write_status({"node": "gw1", "phase": "running"})
    print("ready", flush=True)
    while not done:
        time.sleep(0.02)
    assert state.drain_requested()
    state.write_status({"node": "gw1", "phase": "draining", "drain": {"state": "settling", "acknowledged": True}})
    time.sleep(0.2)
    state.release()
    """
)


def test_lock_refuses_a_second_service_and_clears_a_stale_drain(tmp_path: Path) -> None:
    (tmp_path / "drain.request").write_text("old\n")
    a = StateDir(tmp_path)
    a.acquire()
    try:
        assert not a.drain_requested()  # a restart after a drain must not drain again
        assert a.running_pid() == os.getpid()
        b = StateDir(tmp_path)
        try:
            b.acquire()
            raise AssertionError("second acquire succeeded")
        except AlreadyRunning:
            pass
    finally:
        a.release()
    assert StateDir(tmp_path).running_pid() is None


def test_stale_pid_file_is_not_a_running_service(tmp_path: Path) -> None:
    (tmp_path / "gateway.pid").write_text("999999\n")
    assert StateDir(tmp_path).running_pid() is None
    assert drain_command(StateDir(tmp_path), timeout_s=1, wait=True) == 1


def test_drain_command_signals_and_follows_until_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _FAKE_SERVICE, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert status_command(StateDir(tmp_path), as_json=True) == 0
        # 0 means the command saw the service release its lock (it returns 1 when its timeout passes first)
        assert drain_command(StateDir(tmp_path), timeout_s=60, wait=True) == 0
        assert "gateway service stopped" in capsys.readouterr().out
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
