"""The upstream router (BIRD 2 and FRR variants) peers with a stub gateway speaker and installs only EIP routes.

ExaBGP 5 on gw1 announces host routes inside the EIP pools and some outside them; the router must install the
pool /32 and /128 in its kernel (next hop = the gateway) and reject everything else, and must remove the route
again when the speaker goes away.
"""

from __future__ import annotations

import time

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


@pytest.mark.lab
@pytest.mark.parametrize("router_lab", ["bird_lab", "frr_lab"])
def test_bfd_detects_a_silent_gateway_before_the_hold_timer(router_lab: str, request: pytest.FixtureRequest) -> None:
    """With BFD (50 ms x 3) the router drops a gateway whose switch port died well before the 3 s hold time."""
    lab: Lab = request.getfixturevalue(router_lab)
    start_gateway_bird(lab, "gw2", "203.0.113.202/32")
    try:
        wait_until(lambda: "203.0.113.202 " in routes(lab, "-4"),
                   timeout=20, what="the route from the BIRD stub gateway", interval=0.1)
        wait_until(lambda: bfd_up(lab, router_lab), timeout=10, what="the BFD session to gw2 (50 ms)", interval=0.1)
        lab.cut_link("gw2", "eth1")
        started = time.monotonic()
        wait_until(lambda: "203.0.113.202 " not in routes(lab, "-4"),
                   timeout=5, what="the route to be withdrawn", interval=0.1)
        elapsed = time.monotonic() - started
        assert elapsed < 2.5, f"route removed after {elapsed:.2f}s: BFD did not act before the hold timer"
    finally:
        lab.restore_link("gw2", "eth1")
        lab.stop_daemon("gw2", "gateway-bird")
