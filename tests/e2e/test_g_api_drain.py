"""Maintenance drain through the API in the whole system: `kubectl egressgw drain` (the plugin's code, run in-process)
annotates the primary member's Node (`egressgw.io/drain`); the member withdraws and the router moves the EIP to the
other member without losing more probes than a control run allows; the member's data path stays in place. A restart
of its service (as the DaemonSet's new pod) keeps it drained; `kubectl egressgw undrain` brings it back through its
failback hold-down, after which the router sends the EIP to it again.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from appliance.cli import kubectl_plugin
from appliance.core.waiting import wait_until
from lab.bench.harness import member_status
from lab.scenarios import policy_manifest, router_next_hop, stable_primary
from lab.system import System
from tests.e2e.conftest import DEFAULT_EIP_V4, Scenario
from tests.e2e.test_a_policies import expect_source
from tests.e2e.test_z_failures import assert_kept_flowing, measure_against_control

pytestmark = [pytest.mark.e2e, pytest.mark.lab]


def plugin(system: System, *args: str) -> None:
    kubeconfig = str(system.lab.state_dir / "kubeconfig.host")
    assert kubectl_plugin.main([*args, "--kubeconfig", kubeconfig]) == 0, args


def gateway_log(system: System, gw: str) -> str:
    return (system.lab.state_dir / "logs" / f"{gw}.egressgw-gateway.log").read_text(errors="replace")


def drained_and_ready(system: System, gw: str, *, not_pid: int | None = None) -> dict[str, Any] | None:
    """The member's status once it reports Maintenance, announces nothing and has the EIP in place."""
    doc = member_status(system, gw)
    ok = (doc.get("pid") != not_pid and doc.get("reconcile") is not None
          and (doc.get("health") or {}).get("reason") == "Maintenance"
          and "not_in_maintenance" in (doc.get("health") or {}).get("failing", ())
          and (doc.get("announcements") or {}).get("desired") == []
          and DEFAULT_EIP_V4 in doc.get("eips_in_place", ()))
    return doc if ok else None


def test_g_api_drain_moves_the_eip_survives_a_restart_and_returns_after_hold_down(
        system: System, scenario: Scenario) -> None:
    scenario.pod("web", "w1p1", {"app": "web"})
    scenario.apply(policy_manifest(scenario.namespace, "p", match_labels={"app": "web"}))
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
    primary = stable_primary(system, DEFAULT_EIP_V4)
    other = next(g for g in system.gateways if g != primary)
    try:
        control, report = measure_against_control(
            system, "w1p1", lambda: plugin(system, "drain", primary, "--reason", "e2e maintenance"), after=3.0)
        print(f"\nAPI drain of {primary}: sent={report.sent} lost={report.lost} "
              f"(control: {control.lost}/{control.sent}) outage={report.longest_gap_ms:.0f} ms")
        wait_until(lambda: router_next_hop(system, DEFAULT_EIP_V4) == other, timeout=30, interval=0.2,
                   what=f"the router to send the EIP to {other}")
        assert_kept_flowing(control, report)
        assert {s.source for s in report.sources} == {DEFAULT_EIP_V4}, "the EIP changed during the drain"
        before = wait_until(lambda: drained_and_ready(system, primary), timeout=30, interval=0.2,
                            what=f"{primary} to report Maintenance with its data path in place")

        # a restart of the drained member's service: the new one reads the annotation and stays out
        system.stop_service(primary, grace=30)
        restarted_at = len(gateway_log(system, primary))
        system.start_gateway(primary)
        wait_until(lambda: drained_and_ready(system, primary, not_pid=before["pid"]), timeout=60, interval=0.2,
                   what=f"the restarted {primary} to report Maintenance with its data path in place")
        assert router_next_hop(system, DEFAULT_EIP_V4) == other
        expect_source(system, "w1p1", DEFAULT_EIP_V4)
    finally:
        plugin(system, "undrain", primary)
    # back through rise and the failback hold-down (worst preference), then primary again
    wait_until(lambda: router_next_hop(system, DEFAULT_EIP_V4) == primary, timeout=90, interval=0.2,
               what=f"{primary} back as primary after its hold-down")
    log = gateway_log(system, primary)[restarted_at:]
    resumed = next((m.start() for m in re.finditer(r"event=member\.maintenance .*drained=false", log)), -1)
    assert resumed >= 0, ("the restarted member did not log the end of its maintenance: "
                          + "\n".join(ln for ln in log.splitlines() if "member." in ln or "--- " in ln)[-3000:])
    assert "event=eip.announced" not in log[:resumed], "the restarted member announced while drained"
    assert "mode=hold_down" in log[resumed:], "the member did not come back through the failback hold-down"
    expect_source(system, "w1p1", DEFAULT_EIP_V4)
