"""A flapping uplink in the lab (namespaces `egt-fl-*`, real kube-apiserver, BIRD 2 router, ExaBGP, BFD, the real
data path): the primary member's link is cut on the switch side and restored 10 times in 10 s. The member's own
link stays up, so its health checks never fail (the loss is shorter than any `fall`), but BFD and BGP drop each
time. The EIP moves to the backup once and comes back only after the failback hold-down (20 s here) has passed
since the sessions last returned: not on every re-peering (`bgp.health.step_sessions`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from appliance.core.waiting import wait_until
from lab.system import System
from tests.integration.service.service_lab_support import EIP, carrier, deploy_web_policy
from tests.integration.service.test_service_lab import egressgw, gw_config

pytestmark = [pytest.mark.lab, pytest.mark.netns]

HOLD_S = 20.0


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    s = System.up(prefix="egt-fl-")
    try:
        deploy_web_policy(s, "flap", {"failover": {"failbackHoldSeconds": HOLD_S}})
        assert s.wait_source("w1p1", EIP, timeout=90) == EIP
        yield s
    finally:
        s.down()


def status_of(system: System, gw: str) -> str:
    return egressgw(system, gw, "gateway", "status", "--config", gw_config(system, gw))[1]


def test_a_link_flapping_10_times_in_10_s_moves_the_eip_once_each_way(system: System) -> None:
    # right after start the first member to announce carries the EIP for a moment; wait until the router sends it
    # to the member the gateway status ranks primary, and that member is past its hold-down
    def ranked_primary() -> str:
        status = system.get("EgressGateway", "egw").get("status") or {}
        named = next((str(e.get("primary") or "") for e in status.get("eips") or [] if e.get("ip") == EIP), "")
        return named if named and carrier(system) == named else ""

    primary = wait_until(ranked_primary, timeout=HOLD_S + 60, interval=0.5,
                         what="the router and the status to agree on the EIP's primary")
    wait_until(lambda: "mode ranked" in status_of(system, primary) or None,
               timeout=HOLD_S + 30, interval=1.0, what="the primary past its hold-down")
    wait_until(lambda: carrier(system) == primary, timeout=30, interval=0.2, what="the EIP on its ranked primary")
    seen: list[str] = [primary]

    def observe() -> None:
        now = carrier(system)
        if now and now != seen[-1]:
            seen.append(now)

    for _ in range(10):  # 10 flaps in 10 s: 0.5 s cut, 0.5 s restored
        system.lab.cut_link(primary, "eth1")
        for _ in range(5):
            observe()
            time.sleep(0.1)
        system.lab.restore_link(primary, "eth1")
        for _ in range(5):
            observe()
            time.sleep(0.1)
    # the sessions re-establish; the member stays in hold-down and the EIP stays on the backup meanwhile
    def session_back() -> str | None:
        out = status_of(system, primary)
        return out if "bgp up" in out else None

    status = wait_until(session_back, timeout=HOLD_S / 2, interval=0.2, what="the primary's BGP session back") or ""
    assert "health:        Healthy" in status and "mode hold_down" in status, status
    observe()
    assert len(seen) == 2 and seen[1] != primary, seen  # moved away once, not back on a re-peering
    # after the hold-down it takes the EIP back: the second and last move
    wait_until(lambda: carrier(system) == primary, timeout=HOLD_S + 30, interval=0.2,
               what="the EIP back on its primary")
    assert system.seen_source("w1p1") == EIP
