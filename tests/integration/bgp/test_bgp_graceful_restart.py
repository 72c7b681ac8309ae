"""BGP graceful restart against real routers (BIRD 2 and FRR as helpers) in namespaces.

ExaBGP dying on every member at once must not take the EIPs off the routers: the routers keep our routes (stale)
while the speakers respawn, and flush only what we did not resend at our End-of-RIB. A real member failure must still
move the route at BFD speed: a BFD-detected down is a hard down, not a restart (BIRD `bfd on`, FRR without
`check-control-plane-failure`). The router's kernel route is watched with `ip monitor route` for the whole restart,
so a route that disappeared for a moment and came back is seen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest
from conftest import require, started_bed

from appliance.core.waiting import wait_until
from bgp.announcing import Announcement
from lab.testbeds.bgp import Bed, Testbed, gw_v4, gw_v6

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

EIP4 = "203.0.113.130/32"
EIP6 = "2001:db8:e1::130/128"


@pytest.fixture(params=["bird", "frr"])
def gr_bed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bed]:
    require(request.param)
    with started_bed(Testbed(workdir=tmp_path / "bed", router=request.param, graceful_restart=True)) as b:
        yield b


class RouteMonitor:
    """`ip monitor route` in the router's namespace, read by a thread: every kernel route change, none missed."""

    def __init__(self, bed: Bed) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(["ip", "-n", bed.tb.router_ns, "monitor", "route"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def changes(self, prefix: str) -> list[str]:
        """Kernel route events for `prefix` (host routes are printed without their /32 or /128)."""
        addr = prefix.split("/")[0]
        return [line for line in list(self.lines) if line.split(" ")[:2] in ([addr], [addr, "via"])
                or line.startswith(f"Deleted {addr} ") or line.startswith(f"{addr} ")]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def anns(med: int) -> frozenset[Announcement]:
    return frozenset(Announcement(prefix=ip_network(p), med=med) for p in (EIP4, EIP6))


def _primary_and_backup(bed: Bed) -> None:
    g1, g2 = bed.gateway(1), bed.gateway(2)
    g1.speaker.set_announcements(anns(100))
    g2.speaker.set_announcements(anns(110))
    for g in (g1, g2):
        assert g.speaker.wait_peers("up", 30), g.speaker.peer_states()
        assert g.speaker.wait_converged(30)
        wait_until(lambda g=g: set(g.bfd.peer_states().values()) == {"Up"}, timeout=30,  # type: ignore[misc]
                   what=f"BFD up on gw{g.index}", describe=g.bfd.peer_states)  # fmt: skip
    wait_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(1))] and bed.tb.router_route(EIP6) == [str(gw_v6(1))],
               timeout=30, what="the router's kernel routes via gw1",
               describe=lambda: (bed.tb.router_route(EIP4), bed.tb.router_route(EIP6)))  # fmt: skip


def _stale_in_rib(bed: Bed) -> bool:
    """The router still marks one of our paths stale (graceful restart not finished)."""
    if bed.tb.router == "bird":
        out = bed.tb.router_cli(f"show route {EIP4} all") + bed.tb.router_cli(f"show route {EIP6} all")
        return "stale" in out.lower()
    out = bed.tb.router_cli(f"show bgp ipv4 unicast {EIP4}") + bed.tb.router_cli(f"show bgp ipv6 unicast {EIP6}")
    return "stale" in out.lower()


def test_every_speaker_killed_at_once_the_router_keeps_the_routes(gr_bed: Bed) -> None:
    bed = gr_bed
    _primary_and_backup(bed)
    g1, g2 = bed.gateways
    for rnd in range(3):
        monitor = RouteMonitor(bed)
        try:
            samples: list[tuple[list[str], list[str]]] = []
            old = [g.speaker.exabgp_pid for g in (g1, g2)]
            restarts = [g.speaker.restarts for g in (g1, g2)]
            for pid in old:
                assert pid is not None
                os.kill(pid, signal.SIGKILL)

            def recovered(samples: list[tuple[list[str], list[str]]] = samples, restarts: list[int] = restarts,
                          old: list[int | None] = old) -> bool:
                samples.append((bed.tb.router_route(EIP4), bed.tb.router_route(EIP6)))
                return all(g.speaker.restarts > r and g.speaker.exabgp_pid not in (None, p)
                           and g.speaker.wait_peers("up", 0) and g.speaker.converged()
                           for g, r, p in zip((g1, g2), restarts, old, strict=True)) and not _stale_in_rib(bed)

            wait_until(recovered, timeout=60, interval=0.01, what=f"round {rnd}: both speakers back, routes resent",
                       describe=lambda: ([g.speaker.peer_states() for g in (g1, g2)], _stale_in_rib(bed)))
            # the router's kernel route never left gw1: not in any sample taken while the speakers restarted, and
            # no kernel route event at all (a delete and re-add between two samples would be one)
            assert samples and all(s == ([str(gw_v4(1))], [str(gw_v6(1))]) for s in samples), samples
            assert bed.tb.router_route(EIP4) == [str(gw_v4(1))]
        finally:
            monitor.stop()
        assert monitor.changes(EIP4) == [] and monitor.changes(EIP6) == [], monitor.lines
        print(f"\n[{bed.tb.router}] round {rnd}: every ExaBGP SIGKILLed, routes kept ({len(samples)} samples)")


def _reason_is_bfd(bed: Bed) -> bool:
    if bed.tb.router == "bird":
        out = bed.tb.router_cli("show protocols all gw1_v4")
        return "BFD session down" in out
    out = bed.tb.router_cli(f"show bgp neighbors {gw_v4(1)}")
    return "(Cease/BFD Down)" in out


def test_a_member_failure_still_moves_the_route_at_bfd_speed(gr_bed: Bed) -> None:
    """The member's link is cut (no TCP close, no NOTIFICATION): BFD notices, and the router treats it as a hard
    down, not as a restart: the route moves to the backup (with graceful restart it would stay 30 s)."""
    bed = gr_bed
    _primary_and_backup(bed)
    bed.tb.cut(1)
    wait_until(lambda: bed.tb.router_route(EIP4) == [str(gw_v4(2))] and bed.tb.router_route(EIP6) == [str(gw_v6(2))],
               timeout=15, interval=0.005, what="the route to move to gw2 after the link cut",
               describe=lambda: (bed.tb.router_route(EIP4), _stale_in_rib(bed)))  # fmt: skip
    wait_until(lambda: _reason_is_bfd(bed), timeout=10, what="the router to name BFD as the reason of the down",
               describe=lambda: bed.tb.router_cli("show protocols all gw1_v4" if bed.tb.router == "bird"
                                                  else f"show bgp neighbors {gw_v4(1)}"))  # fmt: skip
    assert not _stale_in_rib(bed)
