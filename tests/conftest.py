"""Shared pytest set-up: fixtures from the fixture modules, and loud failures for missing prerequisites.

Integration tests need root (network namespaces) and real binaries; on a machine without them they FAIL with a
message saying what to install, never skip: a green run must mean the features were exercised.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest_plugins = ["tests.fixtures_apiserver"]

NEEDS_ROOT = {"netns", "lab", "e2e"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    marks = {m.name for m in item.iter_markers()}
    if marks & NEEDS_ROOT and os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces): run the suite as root", pytrace=False)
    if marks & NEEDS_ROOT and shutil.which("ip") is None:
        pytest.fail("iproute2 is missing: run scripts/setup.sh", pytrace=False)
