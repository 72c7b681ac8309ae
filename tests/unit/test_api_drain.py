"""Maintenance drain through the API (the `egressgw.io/drain` annotation): the pure decision, parsing the annotation
from Nodes and appliance Leases, the health step, the gateway service with fakes (withdraw at once, stay drained
across a restart, return through the failback hold-down), `status` and the plugin's patch bodies."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.api.cluster_objects import parse_appliance_lease, parse_node
from appliance.cli import kubectl_plugin
from appliance.cli.status import gateway_lines, member_lines
from appliance.core.maintenance import drained_by_annotation
from appliance.core.model import DRAIN_ANNOTATION, Appliance, Node
from appliance.core.snapshot import Snapshot
from appliance.gateway.service import GatewayService
from bgp.announcing import MemberMode
from bgp.health import Check, HealthConfig, HealthReason, initial_health, step_health
from tests.unit.resolution_builders import ip
from tests.unit.test_gateway_service import make, run_pass, tick, world

CFG = HealthConfig(fall=3, rise=2, hold_s=30.0)


def drained_world(member: str = "gw1", reason: str = "kernel upgrade") -> Snapshot:
    snap = world()
    nodes = tuple(dataclasses.replace(n, drain_reason=reason) if n.name == member else n for n in snap.nodes)
    return dataclasses.replace(snap, nodes=nodes)


# ----- the decision -----

def test_decision_reads_the_members_node_or_appliance() -> None:
    appliance = Appliance(name="box1", gateway="egw", address=ip("198.51.100.21"), drain_reason="swap PSU")
    snap = Snapshot(nodes=(Node(name="gw1", drain_reason="kernel upgrade"), Node(name="gw2"),
                           Node(name="gw3", drain_reason="")),
                    appliances=(appliance, Appliance(name="box2", gateway="egw", address=ip("198.51.100.22"))))
    assert drained_by_annotation(snap, "gw1") == "kernel upgrade"
    assert drained_by_annotation(snap, "gw2") is None
    assert drained_by_annotation(snap, "gw3") == ""  # present with no value: still drained
    assert drained_by_annotation(snap, "box1") == "swap PSU"
    assert drained_by_annotation(snap, "box2") is None
    assert drained_by_annotation(snap, "elsewhere") is None
    assert drained_by_annotation(None, "gw1") is None  # no cluster view yet: nothing to decide on


def test_annotation_is_parsed_from_nodes_and_appliance_leases() -> None:
    def raw_node(annotations: dict[str, str]) -> dict[str, object]:
        return {"metadata": {"name": "gw1", "annotations": annotations}, "status": {"addresses": []}}

    assert parse_node(raw_node({DRAIN_ANNOTATION: "kernel upgrade"})).drain_reason == "kernel upgrade"
    assert parse_node(raw_node({DRAIN_ANNOTATION: ""})).drain_reason == ""
    assert parse_node(raw_node({})).drain_reason is None
    lease = {"metadata": {"name": "egressgw-member-box1", "labels": {"egressgw.io/gateway": "egw"},
                          "annotations": {"egressgw.io/underlay-address": "198.51.100.21",
                                          DRAIN_ANNOTATION: "swap PSU"}},
             "spec": {"renewTime": "2026-11-27T08:00:05Z", "leaseDurationSeconds": 10}}
    got = parse_appliance_lease(lease, datetime(2026, 11, 27, 8, 0, 30, tzinfo=UTC))
    assert got is not None and got.drain_reason == "swap PSU" and not got.alive  # expired Lease keeps the reason


def test_maintenance_check_acts_at_once_and_returns_through_rise_and_hold_down() -> None:
    ok = {Check.UPLINK: True, Check.NOT_IN_MAINTENANCE: True}
    s = step_health(step_health(initial_health(0.0), ok, now=1.0, config=CFG), ok, now=2.0, config=CFG)
    assert s.healthy
    s = step_health(s, {**ok, Check.NOT_IN_MAINTENANCE: False}, now=3.0, config=CFG)
    assert not s.healthy and s.reason is HealthReason.MAINTENANCE and s.failing == (Check.NOT_IN_MAINTENANCE,)
    s = step_health(s, ok, now=4.0, config=CFG)
    assert not s.healthy and s.reason is HealthReason.MAINTENANCE  # rise = 2
    s = step_health(s, ok, now=5.0, config=CFG)
    assert s.healthy and s.in_hold_down(5.0 + CFG.hold_s - 1) and not s.in_hold_down(5.0 + CFG.hold_s)
    both = {**ok, Check.NOT_IN_MAINTENANCE: False, Check.NOT_DRAINING: False}
    assert step_health(s, both, now=6.0, config=CFG).reason is HealthReason.DRAINING  # a running drain wins


# ----- the service (fakes, injected clock) -----

def change(svc: GatewayService, snap: Snapshot) -> None:
    """The cluster view changed (a Node's annotation): the store notifies the loop, as k8s_sync does."""
    svc.deps.source.snap = snap  # type: ignore[attr-defined]
    svc.reconciler.notify("Node/MODIFIED")


def test_service_withdraws_at_once_stays_drained_across_restart_and_returns_after_hold_down(tmp_path: Path) -> None:
    svc, dp, sp, clock = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock, 8)
    assert str(svc.mode) == MemberMode.RANKED and sp.current
    change(svc, drained_world())
    run_pass(svc, clock)
    tick(svc, clock)
    assert sp.current == frozenset() and svc.health.reason is HealthReason.MAINTENANCE
    assert Check.NOT_IN_MAINTENANCE in svc.health.failing and dp.removed == 0  # the data path stays in place
    tick(svc, clock, 20)
    assert sp.current == frozenset()

    # a restarted service (the DaemonSet's new pod) reads the annotation again: it never announces
    svc2, dp2, sp2, clock2 = make(tmp_path / "restarted")
    change(svc2, drained_world())
    run_pass(svc2, clock2)
    tick(svc2, clock2, 20)
    assert all(s == frozenset() for s in sp2.sets) and svc2.health.reason is HealthReason.MAINTENANCE
    assert dp2.converged, "the data path is set up while drained (ready to take traffic)"

    # the annotation removed: rise, then the failback hold-down (worst preference), then ranked
    change(svc2, world())
    run_pass(svc2, clock2)
    tick(svc2, clock2)
    assert sp2.current == frozenset()  # rise = 2
    tick(svc2, clock2)
    assert str(svc2.mode) == MemberMode.HOLD_DOWN
    (a,) = sp2.current
    assert a.med is not None and a.med >= 10000
    tick(svc2, clock2, 5)  # failback_hold_s = 5
    assert str(svc2.mode) == MemberMode.RANKED


def test_another_members_annotation_does_not_drain_this_one(tmp_path: Path) -> None:
    svc, _dp, sp, clock = make(tmp_path)
    change(svc, drained_world("gw2"))
    run_pass(svc, clock)
    tick(svc, clock, 8)
    assert sp.current and svc.health.healthy


# ----- status and the plugin -----

def test_status_shows_maintenance() -> None:
    member = {"name": "gw1", "kind": "Node", "healthy": False, "eips": [], "maintenance": "kernel upgrade"}
    other = {"name": "gw2", "kind": "Node", "healthy": False, "eips": [], "maintenance": None}
    doc = {"gateways": [{"name": "egw", "clusterDefault": False, "ready": True, "members": [member, other],
                         "ipUsage": {}, "eips": []}]}
    assert "gw1 (maintenance: kernel upgrade), gw2 (down)" in "\n".join(gateway_lines(doc))
    assert "no (maintenance)" in "\n".join(member_lines(doc, now=0.0))


def test_plugin_patch_bodies_and_target() -> None:
    assert kubectl_plugin.drain_patch("kernel upgrade") == {"metadata": {"annotations": {DRAIN_ANNOTATION:
                                                                                         "kernel upgrade"}}}
    # a JSON merge patch removes a key set to null
    assert kubectl_plugin.drain_patch(None) == {"metadata": {"annotations": {DRAIN_ANNOTATION: None}}}
    node, lease = {"metadata": {"name": "gw1"}}, {"metadata": {"name": "egressgw-member-gw1"}}
    assert kubectl_plugin.drain_target(node, lease, "gw1", "egw-sys") == ("node/gw1", "/api/v1/nodes/gw1")
    assert kubectl_plugin.drain_target(None, lease, "box1", "egw-sys") == (
        "lease egw-sys/egressgw-member-box1",
        "/apis/coordination.k8s.io/v1/namespaces/egw-sys/leases/egressgw-member-box1")
    assert kubectl_plugin.drain_target(None, None, "nobody", "egw-sys") is None


def test_plugin_drain_without_a_cluster_fails_loudly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no-kubeconfig")
    assert kubectl_plugin.main(["drain", "gw1", "--reason", "x", "--kubeconfig", missing]) == 1
    assert "cannot change member 'gw1'" in capsys.readouterr().err
    assert kubectl_plugin.main(["undrain", "gw1", "--kubeconfig", missing]) == 1
    assert "kubectl egressgw undrain: cannot change member" in capsys.readouterr().err
