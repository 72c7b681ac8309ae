"""The service commands in the lab (namespaces `egt-sv-*`, real kube-apiserver, BIRD 2 router, ExaBGP, BFD, the real
data path): an agent restart keeps and adopts the data path, `gateway status`, the maintenance file, SIGTERM drains
with make-before-break, and `agent cleanup` removes only our state."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.core.waiting import wait_until
from lab.system import System
from tests.integration.service.service_lab_support import EIP, carrier, deploy_web_policy

pytestmark = [pytest.mark.lab, pytest.mark.netns]


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    s = System.up(prefix="egt-sv-")
    try:
        deploy_web_policy(s, "svc", {"failover": {"failbackHoldSeconds": 1}})
        assert s.wait_source("w1p1", EIP, timeout=90) == EIP
        yield s
    finally:
        s.down()


def egressgw(system: System, node: str, *args: str, check: bool = False) -> tuple[int, str]:
    res = system.lab.exec(node, [sys.executable, "-m", "appliance.cli", *args], check=check, timeout=90)
    return res.returncode, str(res.stdout) + str(res.stderr)


def gw_config(system: System, gw: str) -> str:
    return str(system.lab.node_dir(gw) / "gateway.yaml")


def test_agent_restart_keeps_and_adopts_the_data_path(system: System) -> None:
    assert system.seen_source("w1p2") == "100.127.0.11"  # unselected pod: node IP
    log = system.lab.daemon("worker1", "egressgw-agent")
    assert log is not None
    system.stop_service("worker1", sig=signal.SIGTERM)
    rc, _ = egressgw(system, "worker1", "agent", "cleanup", "--help")
    assert rc == 0
    # the agent is gone, the data path is not: selected traffic still leaves with the EIP
    assert system.lab.exec("worker1", ["nft", "list", "table", "inet", "egressgw"], check=False).returncode == 0
    assert system.seen_source("w1p1") == EIP
    offset = len(Path(log.log).read_text())
    system.start_agent("worker1")

    def first_pass() -> str:
        text = Path(log.log).read_text()[offset:]
        return next((line for line in text.splitlines() if "event=reconcile.pass" in line), "")

    line = wait_until(first_pass, timeout=60, what="the restarted agent's first pass")
    assert "result=ok" in line
    assert "changed=0" in line, f"restart did not adopt the data path: {line}"
    assert system.seen_source("w1p1") == EIP


def test_hand_flushed_tables_are_repaired_before_the_resync(system: System) -> None:
    primary = wait_until(lambda: carrier(system), timeout=30, what="a route for the EIP")
    # Proves: the repair is triggered by the drift check (agent) / health tick (gateway) noticing the missing table,
    # not by the periodic resync - the pass that put the table back ran for the reason `drift`.
    for node in ("worker1", primary):
        rec = system.lab.daemon(node, "egressgw-agent" if node == "worker1" else "egressgw-gateway")
        assert rec is not None
        offset = len(Path(rec.log).read_text())
        system.lab.exec(node, ["nft", "delete", "table", "inet", "egressgw"])

        def repair_pass(log: str = rec.log, offset: int = offset) -> str:
            text = Path(log).read_text()[offset:]
            return next((line for line in text.splitlines()
                         if "event=reconcile.pass" in line and "result=ok" in line and "changed=0" not in line), "")

        line = wait_until(repair_pass, timeout=60, what=f"{node}: a pass that puts our nft table back")
        assert "drift" in line.split("reasons=", 1)[1].split(" ", 1)[0], line
        assert system.lab.exec(node, ["nft", "list", "table", "inet", "egressgw"], check=False).returncode == 0
    assert system.wait_source("w1p1", EIP, timeout=20) == EIP


def test_gateway_status_and_maintenance_file(system: System) -> None:
    primary = wait_until(lambda: carrier(system), timeout=30, what="a route for the EIP")
    rc, out = egressgw(system, primary, "gateway", "status", "--config", gw_config(system, primary))
    assert rc == 0, out
    assert "Healthy" in out and "bgp up" in out and "bfd Up" in out and f"{EIP}/32" in out
    other = next(g for g in system.gateways if g != primary)
    maintenance = system.lab.node_dir(primary) / "egressgw" / "maintenance"
    maintenance.touch()
    try:
        wait_until(lambda: carrier(system) == other,
                   timeout=15, what="the EIP moved away from the member in maintenance")
        assert system.seen_source("w1p1") == EIP
        rc, out = egressgw(system, primary, "gateway", "status", "--config", gw_config(system, primary))
        assert "Disabled" in out
    finally:
        maintenance.unlink()
    # back after rise + hold-down (1 s): it takes its primary back
    try:
        wait_until(lambda: carrier(system) == primary, timeout=30, what="the EIP back on its primary")
    except AssertionError:
        states = [
            egressgw(system, g, "gateway", "status", "--config", gw_config(system, g))[1] for g in system.gateways
        ]
        raise AssertionError("\n".join([system.router_routes(4), *states])) from None
    assert system.seen_source("w1p1") == EIP


def test_sigterm_drains_then_cleanup(system: System) -> None:
    primary = wait_until(lambda: carrier(system), timeout=30, what="a route for the EIP")
    other = next(g for g in system.gateways if g != primary)
    rec = system.lab.daemon(primary, "egressgw-gateway")
    assert rec is not None
    # the lab sends SIGKILL if the service is still running after `grace`: `gateway.stopped` in the log proves the
    # service finished its drain and its shutdown by itself
    system.stop_service(primary, sig=signal.SIGTERM, grace=60)
    text = Path(rec.log).read_text()
    assert "event=gateway.stopped" in text, text[-2000:]
    assert "event=drain.done" in text and "acknowledged=true" in text.split("event=drain.done")[-1].splitlines()[0]
    assert carrier(system) == other
    assert system.seen_source("w1p1") == EIP
    # the drained member removed its state
    assert system.lab.exec(primary, ["nft", "list", "table", "inet", "egressgw"], check=False).returncode != 0
    rc, out = egressgw(system, primary, "gateway", "status", "--config", gw_config(system, primary))
    assert rc == 1 and "stopped" in out
    system.start_gateway(primary)

    # agent cleanup on worker2 removes our table and nothing else (the lab CNI's table stays)
    system.stop_service("worker2", sig=signal.SIGTERM)
    rc, out = egressgw(system, "worker2", "agent", "cleanup")
    assert rc == 0, out
    assert system.lab.exec("worker2", ["nft", "list", "table", "inet", "egressgw"], check=False).returncode != 0
    assert system.lab.exec("worker2", ["nft", "list", "table", "inet", "lab_cni"], check=False).returncode == 0
    system.start_agent("worker2")
