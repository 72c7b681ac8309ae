"""BgpSpeaker's process shell against a fake ExaBGP (no network): bridge wiring, acks, respawn + resend, ack timeout.

The fake is a small script with ExaBGP's command line (`exabgp server CONF`): it starts the `run` program of the
config's process block with pipes (as ExaBGP does), reports `neighbor <peer> up` for each neighbor, answers each
command with `done` (or never, in `noack` mode), and records the commands it got in a file.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from ipaddress import ip_network
from pathlib import Path

import pytest

from bgp.announcing import Announcement
from bgp.settings import parse_bgp_settings
from bgp.speaker import BgpSpeaker

FAKE = r'''#!PYTHON
import os, re, subprocess, sys
conf = open(sys.argv[2]).read()
run = re.search(r"run (.*);", conf).group(1).split()
peers = re.findall(r"^neighbor (\S+) \{", conf, re.M)
mode = open(os.environ["FAKE_MODE"]).read().strip() if os.path.exists(os.environ["FAKE_MODE"]) else "ack"
log = open(os.environ["FAKE_LOG"], "a", buffering=1)
log.write(f"start {os.getpid()}\n")
p = subprocess.Popen(run, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
for peer in peers:
    p.stdin.write(f"neighbor {peer} up\n".encode())
for line in p.stdout:
    log.write(line.decode())
    if mode == "ack":
        p.stdin.write(b"done\n")
'''

A = Announcement(prefix=ip_network("203.0.113.130/32"), med=100)
B = Announcement(prefix=ip_network("203.0.113.131/32"), med=110)


def wait(pred: object, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exe = tmp_path / "exabgp"
    exe.write_text(FAKE.replace("PYTHON", sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "commands.log"))
    monkeypatch.setenv("FAKE_MODE", str(tmp_path / "mode"))
    return exe


def speaker(fake: Path, tmp_path: Path, **kw: float) -> BgpSpeaker:
    s = parse_bgp_settings({"local_asn": 64513, "router_id": "198.51.100.11", "exabgp_binary": str(fake),
                            "peers": [{"address": "198.51.100.1", "asn": 64512}]})  # fmt: skip
    return BgpSpeaker(s, tmp_path / "work", **kw)  # type: ignore[arg-type]


def commands(tmp_path: Path) -> list[str]:
    p = tmp_path / "commands.log"
    return p.read_text().splitlines() if p.exists() else []


def test_announce_ack_and_resend_after_exabgp_dies(fake: Path, tmp_path: Path) -> None:
    sp = speaker(fake, tmp_path)
    sp.start()
    try:
        sp.set_announcements(frozenset({A}))
        assert sp.wait_converged(10) and sp.acknowledged() == {A}
        assert sp.wait_peers("up", 5)
        assert "neighbor 198.51.100.1 announce route 203.0.113.130/32 next-hop self med 100" in commands(tmp_path)
        sp.set_announcements(frozenset({B}))
        assert sp.wait_converged(5) and sp.acknowledged() == {B}
        assert "neighbor 198.51.100.1 withdraw route 203.0.113.130/32" in commands(tmp_path)
        pid = sp.exabgp_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # respawned (back-off 0.5 s), the new channel gets everything again
        assert wait(lambda: sp.restarts == 1 and sum(c.startswith("start") for c in commands(tmp_path)) == 2)
        assert sp.wait_converged(10)
        after = commands(tmp_path)[[i for i, c in enumerate(commands(tmp_path)) if c.startswith("start")][-1]:]
        assert "neighbor 198.51.100.1 announce route 203.0.113.131/32 next-hop self med 110" in after
    finally:
        sp.stop()
    assert sp.exabgp_pid is None and not sp.socket_path.exists()


def test_ack_timeout_restarts_exabgp(fake: Path, tmp_path: Path) -> None:
    (tmp_path / "mode").write_text("noack")
    sp = speaker(fake, tmp_path, ack_timeout_s=0.5)
    sp.start()
    try:
        sp.set_announcements(frozenset({A}))
        assert wait(lambda: sp.ack_timeouts >= 1)
        (tmp_path / "mode").write_text("ack")
        assert sp.wait_converged(15)
        assert sum(c.startswith("start") for c in commands(tmp_path)) >= 2
    finally:
        sp.stop()


def test_missing_binary_is_retried_not_fatal(tmp_path: Path) -> None:
    sp = speaker(tmp_path / "no-such-exabgp", tmp_path)
    sp.start()
    try:
        sp.set_announcements(frozenset({A}))
        assert not sp.wait_converged(1.0)
        assert sp._thread is not None and sp._thread.is_alive()
        assert sp.peer_states() == {"198.51.100.1": "unknown"} and sp.acknowledged() == frozenset()
    finally:
        sp.stop()
