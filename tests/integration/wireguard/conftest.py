"""Fixtures for the WireGuard namespace tests: a fresh testbed per test, always torn down."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from appliance.datapath.apply.wireguard import running_wireguard_go
from lab.testbeds.wireguard import WireguardTestbed


@pytest.fixture
def testbed() -> Iterator[WireguardTestbed]:
    yield from _testbed(datapath=False)


@pytest.fixture
def dp_testbed() -> Iterator[WireguardTestbed]:
    """The testbed with the shared data path (steering, EIPs, SNAT, nft checks) instead of the stand-ins."""
    yield from _testbed(datapath=True)


def _testbed(*, datapath: bool) -> Iterator[WireguardTestbed]:
    for tool in ("wg", "wireguard-go", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install --no-install-recommends wireguard-tools wireguard-go "
                        "nftables", pytrace=False)
    tb = WireguardTestbed()
    try:
        tb.up(datapath=datapath)
        yield tb
    finally:
        tb.close()
        leftovers = [pid for pid in running_wireguard_go("egt-wg-") if _mine(tb, pid)]
        assert not leftovers, f"wireguard-go processes left behind: {leftovers}"


def _mine(tb: WireguardTestbed, pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(tb.token_owns(a) for a in args)
