"""kill_stale: kills a previous run's daemon only when its command line still names our config; stop_group: TERM,
then KILL after the timeout, for the whole process group."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from bgp.processes import kill_stale, parent_death_signal, stop_group


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


def test_stop_group_terms_then_kills_the_group() -> None:
    assert stop_group(None, 1.0) is False
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    assert stop_group(polite, 5.0) is True
    assert polite.returncode == -signal.SIGTERM
    assert stop_group(polite, 1.0) is False  # already exited
    stubborn = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(30)"],
        start_new_session=True, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"1\n"  # the handler is in place
        assert stop_group(stubborn, 0.3) is True
        assert stubborn.returncode == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()
        if stubborn.stdout is not None:
            stubborn.stdout.close()
