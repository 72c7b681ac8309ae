"""The upstream router (BIRD 2 and FRR variants) peers with a stub gateway speaker and installs only EIP routes.

ExaBGP 5 on gw1 announces host routes inside the EIP pools and some outside them; the router must install the
pool /32 and /128 in its kernel (next hop = the gateway) and reject everything else, and must remove the route
again when the speaker goes away.
"""

from __future__ import annotations

import subprocess
import threading

import pytest
from labtest_support import start_exabgp, start_gateway_bird

from appliance.core.waiting import wait_until
from lab.runner import Lab

IN_POOL_4, OUT_4, WIDE_4 = "203.0.113.200/32", "203.0.113.5/32", "203.0.113.128/25"
IN_POOL_6, OUT_6 = "2001:db8:e1::5/128", "2001:db8:e2::5/128"


def routes(lab: Lab, family: str) -> str:
    return lab.exec("router", ["ip", family, "route", "show"]).stdout


@pytest.mark.lab
@pytest.mark.parametrize("router_lab", ["bird_lab", "frr_lab"])
def test_router_installs_only_pool_host_routes(router_lab: str, request: pytest.FixtureRequest) -> None:
    lab: Lab = request.getfixturevalue(router_lab)
    start_exabgp(lab, "gw1", [IN_POOL_4, OUT_4, WIDE_4], [IN_POOL_6, OUT_6])
    try:
        wait_until(lambda: "203.0.113.200 " in routes(lab, "-4"),
                   timeout=20, what=f"{IN_POOL_4} in the router's kernel", interval=0.1)
        wait_until(lambda: "2001:db8:e1::5 " in routes(lab, "-6"),
                   timeout=20, what=f"{IN_POOL_6} in the router's kernel", interval=0.1)
        v4, v6 = routes(lab, "-4"), routes(lab, "-6")
        line4 = next(line for line in v4.splitlines() if line.startswith("203.0.113.200 "))
        assert "via 198.51.100.11" in line4
        assert ("proto bird" in line4) or ("proto bgp" in line4)
        line6 = next(line for line in v6.splitlines() if line.startswith("2001:db8:e1::5 "))
        assert "via 2001:db8:198::11" in line6
        # outside the pools, or not a host route: rejected by the import filter
        assert "203.0.113.5 " not in v4
        assert "203.0.113.128/25" not in v4
        assert "2001:db8:e2::5" not in v6
        # the pod networks are static routes, not learned
        assert "100.64.1.0/24 via 100.127.0.11" in v4
    finally:
        lab.stop_daemon("gw1", "exabgp")
    wait_until(lambda: "203.0.113.200 " not in routes(lab, "-4"),
               timeout=10, what="the route to be removed after the speaker stopped", interval=0.1)
    wait_until(lambda: "2001:db8:e1::5 " not in routes(lab, "-6"),
               timeout=10, what="the IPv6 route to be removed", interval=0.1)


@pytest.mark.lab
def test_external_server_reaches_an_eip_via_the_announcing_gateway(bird_lab: Lab) -> None:
    """Traffic to an announced EIP leaves the router toward the gateway that announced it."""
    lab = bird_lab
    lab.exec("gw1", ["ip", "addr", "add", "203.0.113.201/32", "dev", "lo"])
    start_exabgp(lab, "gw1", ["203.0.113.201/32"], [])
    try:
        wait_until(lambda: "203.0.113.201 " in routes(lab, "-4"), timeout=20, what="the EIP route", interval=0.1)
        out = lab.exec("ext", ["ping", "-c", "1", "-W", "2", "203.0.113.201"], check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        lab.stop_daemon("gw1", "exabgp")
        lab.exec("gw1", ["ip", "addr", "del", "203.0.113.201/32", "dev", "lo"], check=False)


def bfd_up(lab: Lab, router_lab: str) -> bool:
    if router_lab == "bird_lab":
        out = lab.exec("router", ["birdc", "-s", str(lab.node_dir("router") / "bird.ctl"), "show", "bfd",
                                  "sessions"], check=False).stdout
        return any("198.51.100.12" in line and " Up " in line and "0.050" in line for line in out.splitlines())
    out = lab.exec("router", ["vtysh", "-N", lab.netns("router"), "-c", "show bfd peers"], check=False).stdout
    return "peer 198.51.100.12" in out and "Status: up" in out and "Transmission interval: 50ms" in out


# BFD control packets (single hop, RFC 5881: UDP destination port 3784) stop in both directions on the gateway; BGP
# (TCP 179, keepalive 1 s, hold 3 s) keeps flowing, so the hold timer never expires and only BFD can withdraw
BLOCK_BFD = """\
table inet egt_lb_bfd {
  chain in { type filter hook input priority 0; udp dport 3784 counter drop; }
  chain out { type filter hook output priority 0; udp dport 3784 counter drop; }
}
"""


class RouteMonitor:
    """`ip monitor route` in the router's namespace, read by a thread: every kernel route change, none missed."""

    def __init__(self, lab: Lab, family: str) -> None:
        self.lines: list[str] = []
        self.proc = lab.popen("router", ["ip", family, "monitor", "route"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def deleted(self, prefix: str) -> bool:
        return any(line.startswith(f"Deleted {prefix} ") for line in list(self.lines))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.mark.lab
@pytest.mark.parametrize("router_lab", ["bird_lab", "frr_lab"])
def test_bfd_alone_withdraws_a_gateway(router_lab: str, request: pytest.FixtureRequest) -> None:
    """With BFD (50 ms x 3) on the sessions, a gateway whose BFD goes silent is withdrawn although its BGP session
    still exchanges keepalives: the router's BGP follows BFD. (How fast, compared with the hold time, is a figure of
    `egressgw bench failover`, not an assertion here.)"""
    lab: Lab = request.getfixturevalue(router_lab)
    start_gateway_bird(lab, "gw2", "203.0.113.202/32")
    monitor: RouteMonitor | None = None
    try:
        wait_until(lambda: "203.0.113.202 " in routes(lab, "-4"),
                   timeout=30, what="the route from the BIRD stub gateway", interval=0.1)
        wait_until(lambda: bfd_up(lab, router_lab), timeout=30, what="the BFD session to gw2 (50 ms)", interval=0.1)
        monitor = RouteMonitor(lab, "-4")
        lab.exec("gw2", ["nft", "-f", "-"], input=BLOCK_BFD)
        # every kernel route change is recorded, so a withdrawal followed by a quick re-announcement (the BGP
        # session re-forms over the still-working link) is seen all the same
        wait_until(lambda: monitor is not None and monitor.deleted("203.0.113.202"), timeout=30, interval=0.1,
                   what="the router to delete the route to 203.0.113.202 after BFD went silent",
                   describe=lambda: monitor.lines[-5:] if monitor else None)
    finally:
        if monitor is not None:
            monitor.stop()
        lab.exec("gw2", ["nft", "delete", "table", "inet", "egt_lb_bfd"], check=False)
        lab.stop_daemon("gw2", "gateway-bird")
