"""The planners' skips: conversion to notes, change detection, the metric by reason, the gateway status document
and its rendering (`egressgw gateway status`)."""

from __future__ import annotations

import ipaddress
import time

from prometheus_client import CollectorRegistry

from appliance.datapath.plan.gateway import GatewaySkip, GatewaySkipReason
from appliance.datapath.plan.wireguard import WgSkip, WgSkipReason
from appliance.datapath.plan.worker import Skip, SkipReason
from appliance.gateway.member_state import render_status
from appliance.gateway.status import status_document
from appliance.gateway.view import DrainView, MemberView, Phase, ReconcileView
from appliance.runtime.metrics import SkipMetrics
from appliance.runtime.skips import (
    SkipNote,
    announcement_skips,
    count_by_reason,
    gateway_skips,
    skip_changes,
    wireguard_skips,
    worker_skips,
)
from bgp.announcing import Announcement, AnnouncementPlan, MemberMode
from bgp.announcing import SkipReason as AnnounceSkip
from bgp.health import Check, initial_health

POD = ipaddress.ip_address("100.64.1.10")
EIP = ipaddress.ip_address("203.0.113.130")


def test_every_planner_skip_becomes_a_note() -> None:
    (w,) = worker_skips([Skip(pod_ip=POD, policy="default/p1", reason=SkipReason.NO_TUNNEL_DEVICE)])
    assert w.fields() == {"planner": "worker", "pod_ip": "100.64.1.10", "reason": "NoTunnelDevice",
                          "policy": "default/p1"}  # fmt: skip
    (g,) = gateway_skips([GatewaySkip(pod_ip=POD, node="w9", reason=GatewaySkipReason.UNKNOWN_WORKER)])
    assert g.fields() == {"planner": "gateway", "pod_ip": "100.64.1.10", "reason": "UnknownWorker",
                          "detail": "node w9"}  # fmt: skip
    (wg,) = wireguard_skips([WgSkip(subject="w1", reason=WgSkipReason.NO_PUBLIC_KEY, message="no annotation")])
    assert wg.fields()["subject"] == "w1" and wg.reason == "NoWireGuardKey" and wg.detail == "no annotation"
    plan = AnnouncementPlan(mode=MemberMode.RANKED, announcements=frozenset(),
                            skipped=(("egw", EIP, AnnounceSkip.NOT_IN_POOL),))  # fmt: skip
    (a,) = announcement_skips(plan)
    assert a.fields() == {"planner": "announcements", "eip": str(EIP), "reason": "NotInPool", "detail": "instance egw"}


def note(subject: str, reason: str = "NoTunnelDevice") -> SkipNote:
    return SkipNote(planner="worker", reason=reason, subject=subject, subject_kind="pod_ip")


def test_change_detection_reports_only_what_appeared_and_went_away() -> None:
    a, b, c = note("100.64.1.1"), note("100.64.1.2"), note("100.64.1.3", "OverlappingDestination")
    same = skip_changes(frozenset({a, b}), frozenset({b, a}))
    assert not same.changed and same.added == () and same.cleared == ()
    change = skip_changes(frozenset({a, b}), frozenset({b, c}))
    assert change.changed and change.added == (c,) and change.cleared == (a,)
    assert count_by_reason({a, b, c}) == {"NoTunnelDevice": 2, "OverlappingDestination": 1}


def test_skip_metric_counts_by_reason_and_goes_back_to_zero() -> None:
    reg = CollectorRegistry()
    m = SkipMetrics("agent", reg)
    m.observe({"NoTunnelDevice": 2})
    assert reg.get_sample_value("egressgw_plan_skipped", {"role": "agent", "reason": "NoTunnelDevice"}) == 2
    m.observe({})
    assert reg.get_sample_value("egressgw_plan_skipped", {"role": "agent", "reason": "NoTunnelDevice"}) == 0


def view(**kw: object) -> MemberView:
    base: dict[str, object] = {
        "node": "gw1",
        "pid": 42,
        "phase": Phase.RUNNING,
        "taken_at": 10.0,
        "health": initial_health(0.0),
        "checks": ((Check.UPLINK, True),),
    }
    return MemberView(**{**base, **kw})  # type: ignore[arg-type]


def test_status_document_is_a_pure_function_of_the_view() -> None:
    a = Announcement(prefix=ipaddress.ip_network(f"{EIP}/32"), med=100)
    v = view(
        desired=frozenset({a}),
        acknowledged=frozenset(),
        eips_in_place=frozenset({EIP}),
        peers=(("198.51.100.1", "up"),),
        reconcile=ReconcileView(ok=True, duration_s=0.0123, passes=3, failed_passes=1),
        drain=DrainView(state="settling", reason="drain command", acknowledged=True),
        skipped=frozenset({note("100.64.1.10")}),
    )
    doc = status_document(v)
    assert doc == status_document(v)
    assert doc["pid"] == 42 and doc["phase"] == "running" and doc["health"]["checks"] == {"uplink": True}
    assert doc["announcements"]["desired"] == [f"{EIP}/32 med=100"] and doc["announcements"]["acknowledged"] == []
    assert doc["peers"] == {"198.51.100.1": "up"} and doc["bfd"] == {}
    assert doc["reconcile"] == {"result": "ok", "duration_ms": 12.3, "passes": 3, "failed_passes": 1, "failures": []}
    assert doc["drain"] == {"state": "settling", "reason": "drain command", "acknowledged": True}
    assert doc["skipped"] == [{"planner": "worker", "pod_ip": "100.64.1.10", "reason": "NoTunnelDevice"}]
    assert status_document(view())["drain"] == {} and "reconcile" not in status_document(view())


def test_status_rendering_lists_the_skips() -> None:
    doc = status_document(view(skipped=frozenset({note("100.64.1.10"), note("100.64.1.11", "OverlappingDestination")})))
    text = render_status(doc, running_pid=42, now=time.time())
    assert "skipped:       2" in text
    assert "NoTunnelDevice" in text and "pod_ip=100.64.1.10" in text and "(worker)" in text
    assert "skipped" not in render_status(status_document(view()), running_pid=42, now=time.time())
