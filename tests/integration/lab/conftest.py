"""Fixtures for the lab tests: one lab per module (bring-up takes about a second without the API node), torn down
even when a test fails. Helpers live in labtest_support.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from labtest_support import EXABGP, PREFIX, TOPOLOGIES, require

from lab.runner import Lab


@pytest.fixture(scope="module")
def bird_lab() -> Iterator[Lab]:
    require("bird", "birdc", "nft", str(EXABGP))
    lab = Lab.up(TOPOLOGIES / "default.clab.yml", prefix=f"{PREFIX}b-", without=("api",))
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def frr_lab() -> Iterator[Lab]:
    require("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "/usr/lib/frr/bfdd", "vtysh", str(EXABGP))
    lab = Lab.up(TOPOLOGIES / "default-frr.clab.yml", prefix=f"{PREFIX}f-", without=("api",))
    try:
        yield lab
    finally:
        lab.down()


