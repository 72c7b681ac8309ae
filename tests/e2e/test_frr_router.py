"""The failover scenario with FRR (zebra + bgpd + bfdd) as the upstream router instead of BIRD 2."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.scenarios import measure_failure, policy_manifest, router_next_hop, stable_primary
from lab.system import TOPOLOGIES, System
from tests.e2e.conftest import DEFAULT_EIP_V4, Scenario, lab_with_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.lab]


@pytest.fixture(scope="module")
def frr_system() -> Iterator[System]:
    yield from lab_with_gateway(TOPOLOGIES / "default-frr.clab.yml", "egt-e2f-")


def test_frr_uplink_cut_failover_keeps_the_eip(frr_system: System) -> None:
    sc = Scenario(frr_system, "frr-failover")
    try:
        sc.pod("web", "w1p1", {"app": "web"})
        sc.apply(policy_manifest(sc.namespace, "p", match_labels={"app": "web"}))
        assert frr_system.wait_source("w1p1", DEFAULT_EIP_V4, timeout=60) == DEFAULT_EIP_V4
        primary = stable_primary(frr_system, DEFAULT_EIP_V4)
        report = measure_failure(frr_system, "w1p1", lambda: frr_system.lab.cut_link(primary, "eth1"), after=3.0)
        print(f"\nFRR uplink cut of {primary}: lost={report.lost} outage={report.longest_gap_ms:.0f} ms")
        assert router_next_hop(frr_system, DEFAULT_EIP_V4) not in ("", primary)
        assert {s.source for s in report.sources} == {DEFAULT_EIP_V4}
        assert report.sources[-1].last > (report.outage_end or 0) - 1  # traffic flowed again after the outage
        frr_system.lab.restore_link(primary, "eth1")
    finally:
        sc.cleanup()
