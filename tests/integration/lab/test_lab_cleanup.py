"""The test suite's clean-up (`scripts/cleanup.sh`, run before and after the suite) removes only what the suite
creates: labs and namespaces under its own `egt-` prefix. A user's lab (`egl-*`, e.g. `egressgw lab demo --keep`)
survives it, state record, namespace and processes.

Cheap: no lab is brought up. Two stand-ins are made by hand, each a state record plus a namespace with a process in
it: a "test" lab under a prefix unique to this run, and a "user" lab under the default `egl-` prefix. The script runs
on a private state root (`EGRESSGW_LAB_STATE`) and on this run's test prefix (`EGRESSGW_TEST_PREFIX`), so it cannot
reach anyone else's labs while it is being tested.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtest_support import ROOT

from lab import netns, state
from lab.topology import default_prefix

pytestmark = pytest.mark.lab

TAG = f"cu{os.getpid() % 100000}"


def stand_in(name: str, prefix: str) -> tuple[str, subprocess.Popen[bytes]]:
    """A lab record `name` whose one node `n1` is a namespace `<prefix>n1` running a sleeper."""
    ns = f"{prefix}n1"
    state.write_meta(state.Meta(name=name, topology="/nonexistent.clab.yml", topology_name=name, prefix=prefix,
                                namespaces=(ns,), nodes=("n1",), switch=None, without=(), created=time.time(),
                                runner_pid=os.getpid()))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
    return ns, sleeper


@pytest.fixture
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "lab-state"
    monkeypatch.setattr(state, "STATE_ROOT", root)
    yield root


def test_cleanup_removes_the_suites_labs_and_keeps_a_users_lab(private_state: Path) -> None:
    test_prefix = f"egt-{TAG}-"
    user_name = TAG
    user_prefix = default_prefix(user_name)  # egl-<name>-: what `egressgw lab up` gives a user's lab
    assert user_prefix.startswith("egl-")
    test_ns, test_sleeper = stand_in(test_prefix.rstrip("-"), test_prefix)
    stray = f"{test_prefix}left"  # a namespace of a killed test run that no record mentions
    subprocess.run(["ip", "netns", "add", stray], check=True)
    user_ns, user_sleeper = stand_in(user_name, user_prefix)
    try:
        env = {**os.environ, "EGRESSGW_LAB_STATE": str(private_state), "EGRESSGW_TEST_PREFIX": test_prefix}
        done = subprocess.run(["bash", str(ROOT / "scripts" / "cleanup.sh")], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        # the suite's own: gone, processes included
        assert not netns.exists(test_ns) and not netns.exists(stray)
        assert not state.lab_dir(test_prefix.rstrip("-")).exists()
        assert test_sleeper.wait(timeout=30) is not None
        # the user's: untouched
        assert netns.exists(user_ns)
        assert state.read_meta(user_name) is not None
        assert user_sleeper.poll() is None, "the user's lab process was killed"
        assert state.list_labs() == [user_name]
    finally:
        for proc in (test_sleeper, user_sleeper):
            proc.kill()
            proc.wait(timeout=30)
        for ns in (test_ns, stray, user_ns):
            netns.kill_namespace(ns)
            netns.delete(ns)


def test_cleanup_refuses_a_prefix_outside_the_suites() -> None:
    """A mistyped prefix must not turn the clean-up into a removal of a user's labs."""
    env = {**os.environ, "EGRESSGW_LAB_STATE": "/nonexistent-egressgw-state", "EGRESSGW_TEST_PREFIX": "egl-"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "cleanup.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "refusing" in done.stderr


@pytest.mark.parametrize("argv", [["down", "x", "--prefix", "egt-"], ["down", "--prefix", ""]],
                         ids=["name-and-prefix", "empty-prefix"])
def test_lab_down_refuses_ambiguous_scopes(argv: list[str], private_state: Path) -> None:
    """`--prefix` never widens into "every lab": with a name as well, or empty, nothing is removed (exit 2)."""
    user_ns, user_sleeper = stand_in(TAG, default_prefix(TAG))
    try:
        env = {**os.environ, "EGRESSGW_LAB_STATE": str(private_state)}
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "egressgw"), "lab", *argv], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert netns.exists(user_ns) and state.read_meta(TAG) is not None and user_sleeper.poll() is None
    finally:
        user_sleeper.kill()
        user_sleeper.wait(timeout=30)
        netns.kill_namespace(user_ns)
        netns.delete(user_ns)
