"""A lab comes up and goes down leaving nothing behind (namespaces, links, processes, state), twice in a row,
and `lab down` cleans up after a runner killed with SIGKILL (after bring-up and in the middle of it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from labtest_support import PREFIX, ROOT, TOPOLOGIES, lab_leftovers, require

from appliance.core.waiting import wait_until
from lab import netns, state
from lab.runner import Lab

EGRESSGW = str(ROOT / ".venv" / "bin" / "egressgw")


def host_links() -> set[str]:
    """The host namespace's links and routes (IPv4 and IPv6): a lab must never change them."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    links = {"link " + line.split(":")[1].strip() for line in out.splitlines()}
    for family in ("-4", "-6"):
        routes = subprocess.run(["ip", family, "route", "show", "table", "all"], capture_output=True, text=True,
                                check=True).stdout
        links |= {f"route {line.strip()}" for line in routes.splitlines() if "expires" not in line}
    return links


def assert_nothing_left(prefix: str, name: str, pids: list[int], links_before: set[str]) -> None:
    assert lab_leftovers(prefix) == []
    assert not state.lab_dir(name).exists()
    assert [p for p in pids if netns.alive(p)] == []
    assert host_links() == links_before


@pytest.mark.lab
def test_up_down_twice_leaves_nothing() -> None:
    require("bird", "nft")
    prefix = f"{PREFIX}c-"
    links_before = host_links()
    for _ in range(2):
        lab = Lab.up(TOPOLOGIES / "default.clab.yml", prefix=prefix, without=("api",))
        assert lab.name == "egt-lb-c"
        assert len(lab_leftovers(prefix)) == 12
        pids = [d.pid for d in lab.daemons()]
        assert len(pids) == 2 and all(netns.alive(p) for p in pids)
        assert host_links() == links_before  # nothing of the lab in the host namespace
        lab.down()
        assert_nothing_left(prefix, lab.name, pids, links_before)


@pytest.mark.lab
def test_down_after_sigkill_of_the_runner() -> None:
    require("bird", "nft")
    prefix, name = f"{PREFIX}k-", "egt-lb-k"
    links_before = host_links()
    code = (f"import time; from lab.runner import Lab; Lab.up({str(TOPOLOGIES / 'default.clab.yml')!r}, "
            f"prefix={prefix!r}, without=('api',)); print('up', flush=True); time.sleep(600)")
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert runner.stdout is not None
        assert runner.stdout.readline().strip() == "up"
        pids = [d.pid for d in state.read_daemons(name)]
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=5)
        assert all(netns.alive(p) for p in pids)  # the lab outlives its runner ...
        done = subprocess.run([EGRESSGW, "lab", "down", name], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert_nothing_left(prefix, name, pids, links_before)  # ... until `lab down`
    finally:
        runner.kill()
        if state.read_meta(name):
            Lab.attach(name).down()


@pytest.mark.lab
def test_down_after_sigkill_during_bring_up() -> None:
    require("bird", "nft")
    prefix, name = f"{PREFIX}m-", "egt-lb-m"
    links_before = host_links()
    runner = subprocess.Popen([EGRESSGW, "lab", "up", str(TOPOLOGIES / "default.clab.yml"), "--name-prefix", prefix,
                               "--without", "api"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(lab_leftovers(prefix)) >= 3, timeout=10, what="bring-up to be under way", interval=0.1)
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=5)
        assert lab_leftovers(prefix)
        done = subprocess.run([EGRESSGW, "lab", "down", name], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert_nothing_left(prefix, name, [], links_before)
    finally:
        runner.kill()


@pytest.mark.lab
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_bring_up_removes_what_it_created(sig: signal.Signals) -> None:
    require("bird", "nft")
    prefix, name = f"{PREFIX}i-", "egt-lb-i"
    links_before = host_links()
    runner = subprocess.Popen([EGRESSGW, "lab", "up", str(TOPOLOGIES / "default.clab.yml"), "--name-prefix", prefix,
                               "--without", "api"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(lab_leftovers(prefix)) >= 3, timeout=10, what="bring-up to be under way", interval=0.1)
        runner.send_signal(sig)
        _, err = runner.communicate(timeout=30)
        assert runner.returncode == 130, err
        assert_nothing_left(prefix, name, [], links_before)
    finally:
        runner.kill()
        if state.read_meta(name):
            Lab.attach(name).down()
