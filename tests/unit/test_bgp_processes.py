"""kill_stale: kills a previous run's daemon only when its command line still names our config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bgp.processes import kill_stale, parent_death_signal


def spawn(marker: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])


def test_kills_only_a_matching_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    ours, other = spawn(str(tmp_path / "exabgp.conf")), spawn("something-else")
    try:
        pidfile.write_text(f"{other.pid}\n")
        assert kill_stale(pidfile, str(tmp_path / "exabgp.conf")) is False
        assert other.poll() is None
        pidfile.write_text(f"{ours.pid}\n")
        assert kill_stale(pidfile, str(tmp_path / "exabgp.conf")) is True
        assert ours.wait(5) != 0
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


def test_missing_or_garbage_pidfile(tmp_path: Path) -> None:
    assert kill_stale(tmp_path / "none.pid", "x") is False
    (tmp_path / "bad.pid").write_text("not a pid")
    assert kill_stale(tmp_path / "bad.pid", "x") is False


def test_parent_death_signal_is_available_on_linux() -> None:
    fn = parent_death_signal()
    assert fn is not None
    p = subprocess.Popen(["true"], preexec_fn=fn)
    assert p.wait(5) == 0
