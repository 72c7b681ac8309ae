"""Child-process supervision: kill_stale kills a previous run's daemon only when its command line still names our
config; stop_group: TERM, then KILL after the timeout, for the whole process group; Supervisor: respawn with back-off
(at once, then 0.5 s doubling to 10 s in a crash loop; reset by a healthy run or a stable uptime), driven here by fake
children and a fake clock; a real child dies with its parent (parent-death signal)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.core.waiting import wait_until
from appliance.host.supervision import (
    QUICK_RESPAWNS,
    STABLE_UPTIME_S,
    ChildEvents,
    Supervisor,
    Tick,
    kill_stale,
    parent_death_signal,
    spawn_child,
    stop_group,
)


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


# ----- the respawn policy, with fake children and a fake clock -----


class FakeChild:
    """A child that runs until `exit(rc)`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def exit(self, rc: int = 1) -> None:
        self.returncode = rc


class FakeHost:
    """Spawns FakeChildren (or fails while `failing`), and a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.children: list[FakeChild] = []
        self.failing = False
        self.stopped: list[FakeChild | None] = []

    def spawn(self) -> FakeChild:
        if self.failing:
            raise FileNotFoundError("no such binary")
        child = FakeChild(1000 + len(self.children))
        self.children.append(child)
        return child

    def stop(self, child: FakeChild | None, timeout_s: float) -> bool:
        self.stopped.append(child)
        if child is None or child.returncode is not None:
            return False
        child.exit(-signal.SIGTERM)
        return True

    def clock(self) -> float:
        return self.now


EVENTS = ChildEvents(started="test.started", exited="test.exited", spawn_failed="test.spawn_failed")


def supervisor(host: FakeHost) -> Supervisor[FakeChild]:
    return Supervisor(spawn=host.spawn, stop=host.stop, events=EVENTS, clock=host.clock)


def respawn_delays(host: FakeHost, sup: Supervisor[FakeChild], crashes: int, uptime: float) -> list[float]:
    """Let the child run `uptime` seconds and crash, `crashes` times; the delay before each respawn."""
    delays = []
    for _ in range(crashes):
        host.now += uptime
        host.children[-1].exit()
        assert sup.tick() is Tick.EXITED
        delays.append(sup.seconds_until_due())
        host.now += delays[-1] - 0.01
        assert sup.tick() is Tick.IDLE  # not due yet
        host.now += 0.01
        assert sup.tick() is Tick.SPAWNED
    return delays


def test_first_tick_spawns_and_a_running_child_is_left_alone() -> None:
    host = FakeHost()
    sup = supervisor(host)
    assert sup.pid is None and not sup.running()
    assert sup.tick() is Tick.SPAWNED
    assert sup.pid == 1000 and sup.running()
    assert sup.tick() is Tick.IDLE and len(host.children) == 1


def test_a_crash_is_respawned_at_once_and_a_crash_loop_backs_off_from_half_a_second_to_ten() -> None:
    host = FakeHost()
    sup = supervisor(host)
    sup.start()
    quick = [0.0] * QUICK_RESPAWNS
    assert respawn_delays(host, sup, QUICK_RESPAWNS + 7, uptime=1.0) == [*quick, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert sup.crash_loop
    assert sup.restarts == QUICK_RESPAWNS + 7 and len(host.children) == QUICK_RESPAWNS + 8


def test_a_healthy_run_ends_the_crash_loop() -> None:
    """ExaBGP killed again and again, but every time after its session came up: never a back-off."""
    host = FakeHost()
    sup = supervisor(host)
    sup.start()
    delays = []
    for _ in range(QUICK_RESPAWNS + 5):
        sup.mark_healthy()  # the owner saw the child do its job (a BGP session up)
        delays += respawn_delays(host, sup, 1, uptime=1.0)
    assert delays == [0.0] * (QUICK_RESPAWNS + 5) and not sup.crash_loop
    # a loop that never gets healthy backs off (the last crash above is the first in a row); one healthy run starts
    # the count again
    assert respawn_delays(host, sup, QUICK_RESPAWNS + 1, uptime=1.0) == [0.0] * (QUICK_RESPAWNS - 1) + [0.5, 1.0]
    sup.mark_healthy()
    assert respawn_delays(host, sup, QUICK_RESPAWNS + 1, uptime=1.0) == [0.0] * QUICK_RESPAWNS + [0.5]


def test_stable_uptime_counts_as_healthy() -> None:
    host = FakeHost()
    sup = supervisor(host)
    sup.start()
    assert respawn_delays(host, sup, QUICK_RESPAWNS + 3, uptime=1.0)[-3:] == [0.5, 1.0, 2.0]
    assert respawn_delays(host, sup, 2, uptime=STABLE_UPTIME_S) == [0.0, 0.0]


def test_a_failed_spawn_is_retried_with_the_back_off() -> None:
    host = FakeHost()
    host.failing = True
    sup = supervisor(host)
    assert sup.tick() is Tick.SPAWN_FAILED and sup.seconds_until_due() == 0.5
    host.now += 0.5
    assert sup.tick() is Tick.SPAWN_FAILED and sup.seconds_until_due() == 1.0
    host.failing = False
    host.now += 1.0
    assert sup.tick() is Tick.SPAWNED and sup.running()


def test_start_raises_what_the_first_spawn_raises() -> None:
    host = FakeHost()
    host.failing = True
    with pytest.raises(FileNotFoundError):
        supervisor(host).start()


def test_stop_stops_the_child_and_the_next_tick_respawns_it() -> None:
    host = FakeHost()
    sup = supervisor(host)
    assert sup.stop(1.0) is False  # nothing started
    sup.start()
    assert sup.stop(1.0) is True and not sup.running()
    assert sup.tick() is Tick.EXITED and sup.restarts == 1  # a stuck daemon is restarted this way
    assert sup.tick() is Tick.SPAWNED and sup.pid == 1001


PARENT = """
import sys, time
from pathlib import Path
from appliance.host.supervision import spawn_child
child = spawn_child([sys.executable, "-c", "import time; time.sleep(60)"], log_path=Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_spawned_child_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL of the service process (no shutdown code runs): the kernel's parent-death signal ends the child."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "child.log")], stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert Path(f"/proc/{child_pid}").exists()
        parent.kill()
        parent.wait()
        wait_until(lambda: not _running(child_pid), timeout=10, what="the child to die with its parent")
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_exits_and_failures_are_logged_as_events(caplog: pytest.LogCaptureFixture) -> None:
    host = FakeHost()
    sup = supervisor(host)
    with caplog.at_level(logging.INFO):
        sup.start()
        host.children[-1].exit(3)
        sup.tick()
        host.failing = True
        host.now += 0.5
        sup.tick()
    events = [(r.egressgw_event, r.egressgw_fields) for r in caplog.records]  # type: ignore[attr-defined]
    assert [e for e, _ in events] == ["test.started", "test.exited", "test.spawn_failed"]
    assert events[1][1] == {"pid": 1000, "rc": 3, "uptime_s": 0.0, "respawn_in_s": 0.0}
    assert events[2][1] == {"error": "FileNotFoundError: no such binary", "retry_in_s": 0.5}


def test_spawn_child_writes_the_pid_file_and_the_log(tmp_path: Path) -> None:
    proc = spawn_child([sys.executable, "-c", "print('hello')"], log_path=tmp_path / "x.log",
                       pid_path=tmp_path / "x.pid")
    assert proc.wait(10) == 0
    assert (tmp_path / "x.pid").read_text() == f"{proc.pid}\n"
    assert (tmp_path / "x.log").read_text() == "hello\n"
