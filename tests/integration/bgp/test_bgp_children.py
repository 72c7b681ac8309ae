"""Children and a SIGKILLed service process (no shutdown code runs): ExaBGP and its API bridge die with it (the
kernel's parent-death signal, `appliance.host.supervision.spawn_child`); the BFD sidecar is deliberately left
running (BFD tracks the forwarding plane, which outlives the service: the routers keep our routes through the
graceful restart only while BFD stays up) and the next start adopts it instead of replacing it.

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
from bgp.bfd_sidecar import BfdSidecar
from lab.testbeds.bgp import Bed, gateway_settings, gw_v4

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


def test_sigkill_of_the_service_takes_exabgp_with_it_and_the_next_start_adopts_bfd(bed: Bed, tmp_path: Path) -> None:
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
        wait_until(lambda: not any("exabgp" in c or "api_bridge" in c for c in _ours(ns)), timeout=20,
                   what="ExaBGP and the bridge of the SIGKILLed service to be gone", describe=lambda: _ours(ns))
        left = [c for c in _ours(ns) if "bird" in c]
        assert len(left) == 1, left  # the BFD sidecar outlives the service
        bird_pid = int((tmp_path / "gw1" / "bird-bfd.pid").read_text())
        bfd = BfdSidecar(gateway_settings(1), tmp_path / "gw1", command_prefix=("ip", "netns", "exec", ns))
        bfd.start()
        try:
            assert bfd.pid == bird_pid  # adopted, not replaced (the e2e graceful-restart test shows BFD staying up)
        finally:
            bfd.stop()
        wait_until(lambda: not _ours(ns), timeout=20, what="the adopted sidecar to stop", describe=lambda: _ours(ns))
    finally:
        service.kill()
        service.wait()
        if service.stdout is not None:
            service.stdout.close()
