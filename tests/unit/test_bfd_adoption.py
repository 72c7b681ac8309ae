"""The BFD sidecar's adoption pieces: a BIRD left running by a previous run is supervised through its pid (poll,
wait) and stopped through its process group; `start()` adopts only a BIRD running our unchanged config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bgp.bfd_sidecar import AdoptedBird, BfdSidecar, _stop_bird, render_bird_bfd_config
from bgp.settings import parse_bgp_settings

SETTINGS = parse_bgp_settings({"local_asn": 64513, "router_id": "198.51.100.11",
                               "peers": [{"address": "198.51.100.1", "asn": 64512}]})


def test_an_adopted_process_is_polled_waited_and_stopped_by_pid() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    adopted = AdoptedBird(proc.pid)
    try:
        assert adopted.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            adopted.wait(0.1)
        proc.poll()
        assert _stop_bird(adopted, 5.0) is True
        proc.wait(5)  # reap it (in real life the init process does)
        assert adopted.poll() == 0 and adopted.wait(0.1) == 0
        assert _stop_bird(adopted, 1.0) is False  # nothing left to stop
    finally:
        proc.kill()
        proc.wait()


def test_only_a_running_bird_with_our_unchanged_config_is_adoptable(tmp_path: Path) -> None:
    sidecar = BfdSidecar(SETTINGS, tmp_path)
    conf = tmp_path / "bird-bfd.conf"
    rendered = render_bird_bfd_config(SETTINGS)
    assert sidecar._adoptable(conf, rendered) is None  # no pid file
    conf.write_text(rendered)
    # a process whose command line names our config, but no control socket: not a BIRD we can talk to
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(conf)])
    try:
        (tmp_path / "bird-bfd.pid").write_text(f"{proc.pid}\n")
        assert sidecar._adoptable(conf, rendered) is None
        assert sidecar._adoptable(conf, rendered + "# changed\n") is None
    finally:
        proc.kill()
        proc.wait()
