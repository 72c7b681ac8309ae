"""The other shipped topologies come up and do what their header says: a third gateway; an IPv6-only underlay
between workers and gateways (the router drops IPv4 between those LANs) while pods keep IPv4 and IPv6 egress."""

from __future__ import annotations

import sys

import pytest
from labtest_support import PREFIX, TOPOLOGIES, lab_leftovers, require

from lab.runner import Lab


def ping(lab: Lab, node: str, addr: str) -> bool:
    return lab.exec(node, ["ping", "-c", "1", "-W", "1", addr], check=False).returncode == 0


@pytest.mark.lab
def test_three_gateways() -> None:
    require("bird", "nft")
    with Lab.up(TOPOLOGIES / "three-gateways.clab.yml", prefix=f"{PREFIX}3-", without=("api",)) as lab:
        assert {"gw1", "gw2", "gw3"} <= set(lab.meta.nodes)
        for addr in ("198.51.100.13", "2001:db8:198::13"):
            assert ping(lab, "worker1", addr)
    assert lab_leftovers(f"{PREFIX}3-") == []


@pytest.mark.lab
def test_ipv6_underlay_lab() -> None:
    require("bird", "nft")
    with Lab.up(TOPOLOGIES / "dual-stack.clab.yml", prefix=f"{PREFIX}6-", without=("api",)) as lab:
        assert not ping(lab, "worker1", "198.51.100.11")  # no IPv4 between workers and gateways
        assert ping(lab, "worker1", "2001:db8:198::11")
        assert ping(lab, "gw1", "203.0.113.2")  # gateways still reach the outside over IPv4
        out = lab.exec("w1p1", [sys.executable, "-m", "lab.extclient", "source", "--server", "203.0.113.2"])
        assert out.stdout.strip() == "100.127.0.11"
    assert lab_leftovers(f"{PREFIX}6-") == []
