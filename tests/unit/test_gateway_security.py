"""The gateway's integrity pieces, pure: tunnel source check and probe rules, per-worker spoofed counters, pod
bindings (which pod IPs need their conntrack flushed), the flow flusher's bookkeeping, the spoof watch and the
member condition, the config field and the metric."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from appliance.core.errors import ConfigError
from appliance.core.model import IPAddress
from appliance.datapath.apply.conntrack import ConntrackFailure, ConntrackFlushResult
from appliance.datapath.apply.metrics import register
from appliance.datapath.plan.gateway import (
    GatewaySettings,
    TunnelSourceCheck,
    changed_bindings,
    plan_gateway,
    pod_bindings,
)
from appliance.datapath.plan.gateway_nft import gateway_table, spoofed_counter
from appliance.datapath.plan.nft_rendering import Contents, render_delta
from appliance.gateway.datapath import FlowFlusher
from appliance.gateway.member_state import render_status
from appliance.gateway.spoofing import SpoofWatch, spoof_condition
from appliance.gateway.status import status_document
from appliance.gateway.view import MemberView, Phase
from appliance.runtime.config import parse_gateway_config
from bgp.health import initial_health
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent, worker_addresses

GW = Gw(eips=("203.0.113.130", "203.0.113.131", "2001:db8:e1::2"))
P1, P1_6, P2 = "100.64.1.10", "2001:db8:64:1::10", "100.64.2.10"


def table(check: TunnelSourceCheck = TunnelSourceCheck.STRICT, sels: list[Sel] | None = None) -> str:
    intent = build_intent([GW], sels or [Sel(pod_ip=P1), Sel(pod_ip=P2, node="worker2")])
    plan = plan_gateway(intent, member="gw1", workers=worker_addresses(), settings=GatewaySettings(source_check=check))
    return gateway_table(plan).chains


@pytest.mark.parametrize(("check", "rule"), [
    (TunnelSourceCheck.STRICT, "udp dport @tunnel_ports fib saddr . iif oif missing counter name drop_tunnel_source"),
    (TunnelSourceCheck.LOOSE, "udp dport @tunnel_ports fib saddr oif missing counter name drop_tunnel_source"),
])
def test_source_check_comes_before_the_tunnel_is_accepted(check: TunnelSourceCheck, rule: str) -> None:
    chains = table(check)
    assert rule in chains
    assert chains.index(rule) < chains.index("meta mark set ip saddr . @th,96,24 map @vtepvni4 accept")


def test_source_check_off_has_no_fib_rule() -> None:
    assert "fib saddr" not in table(TunnelSourceCheck.OFF)


def test_echo_probe_accepted_from_known_vteps_only_rate_limited_before_the_unsolicited_drop() -> None:
    chains = table()
    for v, icmp in ((4, "icmp"), (6, "icmpv6")):
        ip = "ip" if v == 4 else "ip6"
        probe = (f"{ip} daddr @eips{v} {icmp} type echo-request {ip} saddr @vteps{v} update @probe{v} "
                 f"{{ {ip} saddr limit rate")
        assert probe in chains
        assert chains.index(probe) < chains.index(f"{ip} daddr @eips{v} ct state new,invalid")


def test_probe_meters_are_dynamic_and_never_touched_by_deltas() -> None:
    intent = build_intent([GW], [Sel(pod_ip=P1)])
    t = gateway_table(plan_gateway(intent, member="gw1", workers=worker_addresses(), settings=GatewaySettings()))
    meter = t.set("probe4")
    assert "flags dynamic,timeout" in meter.declaration()
    observed = Contents(elements={s.name: s.elements for s in t.sets} | {"probe4": frozenset({("100.127.0.11",
                                                                                                 None)})},
                        counters=t.counters)
    text, n = render_delta(observed, t)
    assert (text, n) == ("", 0)


def test_spoofed_drops_are_counted_per_worker_then_in_total() -> None:
    intent = build_intent([GW], [Sel(pod_ip=P1), Sel(pod_ip=P2, node="worker2")])
    plan = plan_gateway(intent, member="gw1", workers=worker_addresses(), settings=GatewaySettings())
    t = gateway_table(plan)
    marks = {v.node: v.mark for v in plan.vteps}
    assert t.set("spoofcount").elements == {(f"{marks['worker1']:#010x}", "spoofed_worker1"),
                                            (f"{marks['worker2']:#010x}", "spoofed_worker2")}
    assert {"spoofed_worker1", "spoofed_worker2", "drop_spoofed"} <= t.counters
    assert "counter name meta mark map @spoofcount\n\t\tcounter name drop_spoofed drop" in t.chains
    assert spoofed_counter("n" * 300).startswith("spoofed_n") and len(spoofed_counter("n" * 300)) <= 250


def test_replies_only_to_pods_still_steered_from_that_worker() -> None:
    chains = table()
    assert "ct direction reply ct mark & 0xffff0000 == 0x0e6e0000 ct mark != 0x0e6e0000 jump to_tunnel_reply" in chains
    assert "meta nfproto ipv4 meta mark . ip daddr != @pods4 counter name drop_unsteered_reply drop" in chains
    assert "meta nfproto ipv6 meta mark . ip6 daddr != @pods6 counter name drop_unsteered_reply drop" in chains


# ----- which pod IPs are flushed -----


BASE = [Sel(pod_ip=P1), Sel(pod_ip=P1_6, eip="2001:db8:e1::2"), Sel(pod_ip=P2, node="worker2")]


@pytest.mark.parametrize(("change", "after", "expected"), [
    ("nothing", BASE, set()),
    ("policy deleted / label change", BASE[1:], {P1}),
    ("moved to another EIP", [Sel(pod_ip=P1, eip="203.0.113.131"), *BASE[1:]], {P1}),
    ("moved to another policy, same EIP", [Sel(pod_ip=P1, policy="p2"), *BASE[1:]], set()),
    ("destinations narrowed", [Sel(pod_ip=P1, destinations=("203.0.113.0/28",)), *BASE[1:]], {P1}),
    ("pod IP reused on another worker", [Sel(pod_ip=P1, node="worker2"), *BASE[1:]], {P1}),
    ("new pod", [*BASE, Sel(pod_ip="100.64.1.11")], {"100.64.1.11"}),
])
def test_changed_bindings(change: str, after: list[Sel], expected: set[str]) -> None:
    got = changed_bindings(pod_bindings(build_intent([GW], BASE), member="gw1"),
                           pod_bindings(build_intent([GW], after), member="gw1"))
    assert got == {ip_address(a) for a in expected}, change


def test_gateway_change_flushes_on_both_members() -> None:
    a, b = Gw(name="gw-a", members=("gw1",)), Gw(name="gw-b", members=("gw2",), eips=("203.0.113.140",))
    before = build_intent([a, b], [Sel(pod_ip=P1, gateway="gw-a")])
    after = build_intent([a, b], [Sel(pod_ip=P1, gateway="gw-b", eip="203.0.113.140")])
    for member in ("gw1", "gw2"):
        assert changed_bindings(pod_bindings(before, member=member), pod_bindings(after, member=member)) == {
            ip_address(P1)}


def test_flow_flusher_adopts_first_then_flushes_changes_and_retries_failures() -> None:
    calls: list[frozenset[IPAddress]] = []
    fail = {"on": True}

    def flush(ips: frozenset[IPAddress]) -> ConntrackFlushResult:
        calls.append(ips)
        req = tuple(sorted(ips, key=int))
        if fail["on"]:
            failure = ConntrackFailure(pod_ip=req[0], entry=None, reason="netlink error 1: EPERM")
            return ConntrackFlushResult(requested=req, failures=(failure,), incomplete=req)
        return ConntrackFlushResult(requested=req, flushed=req, deleted=2)

    f = FlowFlusher(flush)
    first = pod_bindings(build_intent([GW], BASE), member="gw1")
    assert f.after_pass(first) == ((), ())  # adoption: nothing flushed
    assert calls == []
    second = pod_bindings(build_intent([GW], BASE[1:]), member="gw1")
    changes, failures = f.after_pass(second)
    assert calls == [{ip_address(P1)}] and failures and "EPERM" in failures[0] and changes == (
        "conntrack deleted 0 entries",)
    fail["on"] = False
    changes, failures = f.after_pass(second)  # nothing changed, but the failed pod IP is retried
    assert calls[-1] == {ip_address(P1)} and failures == ()
    assert changes == (f"conntrack flush {P1}", "conntrack deleted 2 entries")
    assert f.after_pass(second) == ((), ())


# ----- spoofed traffic surfaced -----


def test_spoof_watch_baseline_rise_throttle_restart_and_forget() -> None:
    w = SpoofWatch(recent_s=300, log_every_s=60)
    assert w.observe({"spoofed_worker1": (7, 700), "drop_spoofed": (7, 700)}, 0.0) == ()  # baseline: old drops
    assert w.recent(0.0) == ()
    (alert,) = w.observe({"spoofed_worker1": (10, 1000)}, 5.0)
    assert (alert.node, alert.new_packets, alert.total) == ("worker1", 3, 3)
    assert w.observe({"spoofed_worker1": (12, 1200)}, 10.0) == ()  # still rising, logged 5 s ago: throttled
    assert [s.node for s in w.recent(10.0)] == ["worker1"]
    (again,) = w.observe({"spoofed_worker1": (4, 400)}, 70.0)  # counter restarted (table replaced): 4 new
    assert again.total == 9
    assert w.recent(70.0 + 301) == ()  # quiet for longer than recent_s
    w.observe({}, 400.0)  # the worker is gone: forgotten, so the state stays bounded
    assert w.observe({"spoofed_worker1": (50, 0)}, 401.0) == ()  # a new baseline


def test_member_condition_in_status_document_and_rendered() -> None:
    w = SpoofWatch()
    w.observe({"spoofed_worker1": (0, 0)}, 0.0)
    w.observe({"spoofed_worker1": (5, 500)}, 1.0)
    cond = spoof_condition(w.recent(2.0))
    assert cond.status and cond.subjects == ("worker1",) and "worker1 (5 packets)" in cond.message
    assert not spoof_condition(()).status
    v = MemberView(node="gw1", pid=1, phase=Phase.RUNNING, taken_at=2.0, health=initial_health(0.0),
                   conditions=(cond,))
    doc = status_document(v)
    assert doc["conditions"][0]["type"] == "WorkerTrafficSpoofed" and doc["conditions"][0]["status"] == "True"
    assert "WorkerTrafficSpoofed (SpoofedTunnelTrafficDropped): " in render_status(doc, running_pid=1, now=3.0)


def test_spoofed_metric_has_a_bounded_worker_label() -> None:
    readings = {"spoofed_worker1": (3, 300), "drop_spoofed": (3, 300)}
    reg = CollectorRegistry()
    register(reg, lambda: readings, role="gateway")
    assert reg.get_sample_value("egressgw_datapath_spoofed_packets_total", {"worker": "worker1"}) == 3
    readings = {"drop_spoofed": (3, 300)}  # worker1 no longer known: its series goes away
    assert reg.get_sample_value("egressgw_datapath_spoofed_packets_total", {"worker": "worker1"}) is None


def test_config_tunnel_source_check() -> None:
    src = Path("/etc/egressgw/gateway.yaml")
    env = {"NODE_NAME": "gw1"}
    assert parse_gateway_config({}, source=src, env=env).tunnel_source_check is TunnelSourceCheck.STRICT
    cfg = parse_gateway_config({"security": {"tunnel_source_check": "loose"}}, source=src, env=env)
    assert cfg.tunnel_source_check is TunnelSourceCheck.LOOSE
    with pytest.raises(ConfigError) as e:
        parse_gateway_config({"security": {"tunnel_source_check": "yes"}}, source=src, env=env)
    assert e.value.field == "security.tunnel_source_check"
