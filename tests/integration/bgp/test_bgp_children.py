"""Every child dies with its service: a SIGKILLed service process (no shutdown code runs) leaves no ExaBGP, no API
bridge and no BFD sidecar behind (the kernel's parent-death signal, `appliance.host.supervision.spawn_child`).

The "service" is a small Python process that runs a `BgpSpeaker` and a `BfdSidecar` in a gateway namespace of the
BGP testbed, the way the gateway service does (the sidecar started from the main thread, ExaBGP from the speaker's
thread); the test SIGKILLs it and waits for the namespace to hold no process of ours.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.core.waiting import wait_until
from lab.testbeds.bgp import Bed, gw_v4

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

EIP4 = "203.0.113.130/32"

SERVICE = """
import sys, time
from ipaddress import ip_network
from bgp.announcing import Announcement
from bgp.bfd_sidecar import BfdSidecar
from bgp.speaker import BgpSpeaker
from lab.testbeds.bgp import gateway_settings
work, ns = sys.argv[1], sys.argv[2]
settings = gateway_settings(1)
prefix = ("ip", "netns", "exec", ns)
bfd = BfdSidecar(settings, work, command_prefix=prefix)
bfd.start()
speaker = BgpSpeaker(settings, work, command_prefix=prefix)
speaker.start()
speaker.set_announcements(frozenset({Announcement(prefix=ip_network(sys.argv[3]), med=100)}))
if not (speaker.wait_peers("up", 60) and speaker.wait_converged(30)):
    sys.exit("the sessions did not come up")
print(speaker.exabgp_pid, bfd.pid, flush=True)
time.sleep(600)
"""


def _ours(ns: str) -> list[str]:
    """Command lines of the processes in the namespace that are ours (ExaBGP, its API bridge, BIRD)."""
    out = []
    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(k in cmd for k in ("exabgp", "bgp.api_bridge", "bird")):
            out.append(cmd)
    return out


def test_sigkill_of_the_service_takes_every_child_with_it(bed: Bed, tmp_path: Path) -> None:
    ns = bed.tb.gw_ns(1)
    service = subprocess.Popen([sys.executable, "-c", SERVICE, str(tmp_path / "gw1"), ns, EIP4],
                               stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[3])  # fmt: skip
    try:
        assert service.stdout is not None
        line = service.stdout.readline()
        assert line, f"the service did not start (rc {service.wait(10)})"
        wait_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(1))], timeout=30, what="the route via gw1")
        running = _ours(ns)
        assert any("exabgp" in c for c in running) and any("api_bridge" in c for c in running), running
        assert any("bird" in c for c in running), running
        service.kill()
        service.wait()
        wait_until(lambda: not _ours(ns), timeout=20, what="every child of the SIGKILLed service to be gone",
                   describe=lambda: _ours(ns))
    finally:
        service.kill()
        service.wait()
        if service.stdout is not None:
            service.stdout.close()
