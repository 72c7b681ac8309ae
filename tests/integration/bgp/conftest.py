"""Fixtures for the BGP namespace tests: a `lab.testbeds.bgp.Bed` (router + gateways, prefix `egt-bg-`), per router
kind.

Binaries that are missing make the tests FAIL (not skip): a green run must mean BIRD/FRR/ExaBGP were exercised.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab.testbeds.bgp import Bed, Testbed

REQUIRED = {
    "bird": ["bird", "birdc"],
    "frr": ["/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "/usr/lib/frr/bfdd", "vtysh", "bird"],
}


def require(router: str) -> None:
    exabgp = Path(sys.executable).parent / "exabgp"
    missing = [b for b in REQUIRED[router] if shutil.which(b) is None] + ([] if exabgp.exists() else [str(exabgp)])
    if missing:
        pytest.fail(f"missing binaries for the BGP netns tests: {missing} (apt-get install bird2 frr; pip install "
                    "'exabgp>=5.0,<5.1')", pytrace=False)  # fmt: skip


@contextmanager
def started_bed(testbed: Testbed) -> Iterator[Bed]:
    """The testbed up with its router started; closed (namespaces removed) afterwards, also after a failure."""
    b = Bed(testbed)
    try:
        b.tb.up()
        b.tb.start_router()
        yield b
    finally:
        b.close()


@pytest.fixture(params=["bird", "frr"])
def bed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bed]:
    require(request.param)
    with started_bed(Testbed(workdir=tmp_path / "bed", router=request.param)) as b:
        yield b


@pytest.fixture(params=["bird", "frr"])
def md5_bed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bed]:
    """A testbed whose router requires TCP-MD5 (password `egt-s3cret`) on every session."""
    require(request.param)
    with started_bed(Testbed(workdir=tmp_path / "bed", router=request.param, md5="egt-s3cret")) as b:
        yield b
