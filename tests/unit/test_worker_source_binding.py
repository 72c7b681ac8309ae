"""Worker source binding, tunnel guards and NAT order: the pure parts (planner, renderer, parsers, config)."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path

import pytest

from appliance.core.errors import ConfigError
from appliance.core.intent import Intent
from appliance.datapath.apply.pod_interfaces import parse_host_links, parse_nsids, peer_addresses
from appliance.datapath.plan.nat_order import WORKER_SNAT_PRIORITY, NatChain, foreign_nat_chains
from appliance.datapath.plan.nft_rendering import mark
from appliance.datapath.plan.worker import (
    SkipReason,
    SourceBinding,
    SourceValidation,
    WorkerPlan,
    WorkerSettings,
    check_sources,
    plan_worker,
)
from appliance.datapath.plan.worker_nft import (
    render_bridge_elements,
    render_bridge_full,
    worker_bridge_table,
    worker_table,
)
from appliance.runtime.config import parse_agent_config
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent

U4 = ip_address("100.127.0.11")
MARKS = WorkerSettings().marks
P1, P2, P3 = "100.64.1.10", "100.64.1.11", "2001:db8:64:1::10"


def intent() -> Intent:
    return build_intent(
        [Gw(eips=("203.0.113.130", "2001:db8:e1::2"))],
        [Sel(pod_ip=P1, partner="2001:db8:e1::2"), Sel(pod_ip=P2, partner="2001:db8:e1::2"),
         Sel(pod_ip=P3, eip="2001:db8:e1::2", partner="203.0.113.130"),
         Sel(pod_ip="100.64.2.10", node="worker2")],
    )


def b(ip: str, iface: str, bridge: str | None = "cni0") -> SourceBinding:
    return SourceBinding(pod_ip=ip_address(ip), interface=iface, bridge=bridge)


def plan(mode: SourceValidation = SourceValidation.STRICT, bindings: list[SourceBinding] | None = None) -> WorkerPlan:
    return plan_worker(intent(), node="worker1", underlay=U4,
                       settings=WorkerSettings(source_validation=mode), source_bindings=bindings)


def test_bridged_routed_unknown_conflict_and_unenforceable_bindings() -> None:
    found = [b(P1, "v-pod1"), b(P3, "v-pod1"), b(P2, "cali2", ""), b("100.64.2.10", "v-other"),
             b(P2, "cali9", "")]
    got = check_sources(intent(), node="worker1", mode=SourceValidation.STRICT, bindings=found)
    assert got.bridged == (b(P1, "v-pod1"), b(P3, "v-pod1"))  # the other node's pod is not ours to bind
    assert got.unbound == (ip_address(P2),)  # on two interfaces: a pod claims another pod's address
    assert [(str(s.pod_ip), s.reason) for s in got.skipped] == [(P2, SkipReason.SOURCE_BINDING_CONFLICT)]

    routed = check_sources(intent(), node="worker1", mode=SourceValidation.STRICT,
                           bindings=[b(P1, "cali1", ""), b(P2, "ovs1", None)])
    assert routed.bridged == ()  # a routed interface is bound by the reverse-path check alone
    reasons = {str(s.pod_ip): s.reason for s in routed.skipped}
    assert reasons == {P2: SkipReason.SOURCE_BINDING_UNENFORCEABLE, P3: SkipReason.SOURCE_BINDING_UNKNOWN}
    assert routed.unbound == (ip_address(P2), ip_address(P3))


def test_modes_decide_what_an_unknown_binding_means() -> None:
    strict = plan(SourceValidation.STRICT, [b(P1, "v-pod1")])
    rpf = plan(SourceValidation.RPF, [b(P1, "v-pod1")])
    off = plan(SourceValidation.OFF, [b(P1, "v-pod1")])
    assert strict.unbound == (ip_address(P2), ip_address(P3))
    assert rpf.unbound == () and {str(s.pod_ip) for s in rpf.skipped} == {P2, P3}  # steered, but reported
    assert off.unbound == () and off.bridged == () and off.skipped == ()
    # not discovered at all (benchmarks, other tests): no binding decision, only the reverse-path check
    assert plan(SourceValidation.STRICT, None).unbound == ()
    s, r, o = (worker_table(p).chains for p in (strict, rpf, off))
    assert "drop_source_unbound" in s and "drop_source_unbound" not in r
    assert "fib saddr . iif oif missing" in s and "fib saddr . iif oif missing" in r
    assert "fib saddr" not in o and "drop_source_unbound" not in o
    assert worker_table(strict).set("unbound4").elements == {(P2, None)}
    assert worker_table(strict).set("unbound6").elements == {(P3, None)}


def test_checks_only_touch_steered_packets_after_the_steering_decision() -> None:
    chains = worker_table(plan()).chains
    pre = chains.split("chain prerouting")[1].split("}")[0].splitlines()
    steer = next(i for i, line in enumerate(pre) if "map @steer4" in line)
    for name in ("jump source_unbound", "drop_source_rpf"):  # source_unbound: counted per policy, then dropped
        i = next(i for i, line in enumerate(pre) if name in line)
        assert i > steer and f"meta mark & {mark(MARKS.mark_mask)} == {mark(MARKS.mark_base)}" in pre[i]


def test_tunnel_guard_accepts_only_replies_of_steered_flows() -> None:
    p = plan_worker(intent(), node="worker1", underlay=U4, settings=WorkerSettings(),
                    wireguard_devices={})
    t = worker_table(p)
    assert t.set("tunnel_devices").elements == {("egw-vx4789", None)}
    assert "iifname @tunnel_devices jump from_tunnel" in t.chains
    guard = t.chains.split("chain from_tunnel {")[1].split("}")[0]
    assert f"ct direction reply ct mark & {mark(MARKS.mark_mask)} == {mark(MARKS.mark_base)} return" in guard
    assert "counter name drop_tunnel_unsolicited drop" in guard
    wg = build_intent([Gw(name="wg", eips=("203.0.113.130",), wireguard=True)], [Sel(pod_ip=P1, gateway="wg")])
    pw = plan_worker(wg, node="worker1", underlay=U4, settings=WorkerSettings(), wireguard_devices={"wg": "wg-egw-1"})
    assert worker_table(pw).set("tunnel_devices").elements == {("wg-egw-1", None)}


def test_identity_snat_runs_before_realistic_nat_priorities() -> None:
    chains = worker_table(plan()).chains
    assert f"type nat hook postrouting priority {WORKER_SNAT_PRIORITY};" in chains
    assert -200 < WORKER_SNAT_PRIORITY < 90  # after conntrack (kernel rule), before srcnat - 10 (our former place)


def test_bridge_table_rendering_and_delta() -> None:
    t = worker_bridge_table([b(P3, "v-pod1"), b(P1, "v-pod1")])
    full = render_bridge_full(t)
    assert full.startswith("table bridge egressgw\ndelete table bridge egressgw\n")
    assert f'elements = {{ {P1} . "v-pod1" }}' in full and f'elements = {{ {P3} . "v-pod1" }}' in full
    assert "ip saddr @bound4 ip saddr . iifname != @bindings4 counter name drop_source_spoofed drop" in full
    observed = {s.name: s.elements for s in t.sets}
    assert render_bridge_elements(t, observed) == ("", 0)
    observed["bindings4"] = frozenset({(f"{P1} . v-pod9", None)})
    text, n = render_bridge_elements(t, observed)
    assert n == 1 and text == (f"flush set bridge egressgw bindings4\n"
                               f'add element bridge egressgw bindings4 {{ {P1} . "v-pod1" }}\n')
    # the structure does not depend on the elements: pod churn never replaces the table (the counter survives)
    assert worker_bridge_table([]).comment == t.comment


def test_foreign_nat_chains_at_or_before_ours() -> None:
    def chain(family: str, table: str, name: str, prio: int, typ: str = "nat",
              hook: str = "postrouting") -> dict[str, object]:
        return {"chain": {"family": family, "table": table, "name": name, "type": typ, "hook": hook, "prio": prio}}

    listing = json.dumps({"nftables": [
        {"metainfo": {}}, chain("inet", "egressgw", "postrouting", WORKER_SNAT_PRIORITY),
        chain("ip", "nat", "POSTROUTING", 100), chain("ip", "cni", "pr", WORKER_SNAT_PRIORITY),
        chain("ip6", "fw", "early", -199), chain("inet", "x", "filt", -199, typ="filter"),
        chain("ip", "y", "pre", -199, hook="prerouting"), chain("inet", "old", "snat", 90),
    ]})  # fmt: skip
    assert foreign_nat_chains(listing) == (
        NatChain(priority=-199, family="ip6", table="fw", chain="early"),
        NatChain(priority=WORKER_SNAT_PRIORITY, family="ip", table="cni", chain="pr"),
    )
    assert foreign_nat_chains("") == ()


LINKS = [
    {"ifindex": 1, "ifname": "lo", "linkinfo": None},
    {"ifindex": 5, "ifname": "v-pod1", "link_index": 2, "link_netnsid": 0, "master": "cni0",
     "linkinfo": {"info_kind": "veth", "info_slave_kind": "bridge"}},
    {"ifindex": 6, "ifname": "cali1", "link_index": 2, "link_netnsid": 1, "linkinfo": {"info_kind": "veth"}},
    {"ifindex": 7, "ifname": "ovsp", "link_index": 2, "link_netnsid": 2, "master": "ovs-system",
     "linkinfo": {"info_kind": "veth", "info_slave_kind": "openvswitch"}},
    {"ifindex": 8, "ifname": "v-local", "link_index": 9, "linkinfo": {"info_kind": "veth"}},  # peer in this netns
    {"ifindex": 3, "ifname": "cni0", "linkinfo": {"info_kind": "bridge"}},
]  # fmt: skip


def test_discovery_parsers() -> None:
    links = parse_host_links(LINKS)
    assert [(x.ifname, x.nsid, x.peer_index, x.bridge) for x in links] == [
        ("v-pod1", 0, 2, "cni0"), ("cali1", 1, 2, ""), ("ovsp", 2, 2, None)]
    assert parse_nsids([{"nsid": 0, "name": "cni-1"}, {"nsid": 4}]) == {0: "cni-1"}
    addrs = [
        {"ifindex": 1, "addr_info": [{"local": "127.0.0.1", "scope": "host"}]},
        {"ifindex": 2, "link_index": 5, "addr_info": [
            {"local": P1, "scope": "global"}, {"local": P3, "scope": "global"}, {"local": "fe80::1", "scope": "link"}]},
    ]  # fmt: skip
    assert peer_addresses(links[0], addrs) == (ip_address(P1), ip_address(P3))
    assert peer_addresses(links[1], addrs) == ()  # ifindex 2 there is the peer of host ifindex 5, not of 6


@pytest.mark.parametrize("value", ["loose", 3, ""])
def test_config_rejects_unknown_modes_naming_the_field(value: object) -> None:
    with pytest.raises(ConfigError) as e:
        parse_agent_config({"source_validation": value}, source=Path("/x.yaml"), env={"NODE_NAME": "w"})
    assert "source_validation" in str(e.value)


def test_config_default_is_strict() -> None:
    cfg = parse_agent_config({}, source=Path("/etc/egressgw/agent.yaml"), env={"NODE_NAME": "w"})
    assert cfg.source_validation is SourceValidation.STRICT
    rpf = parse_agent_config({"source_validation": "rpf"}, source=Path("/x.yaml"), env={"NODE_NAME": "w"})
    assert rpf.source_validation is SourceValidation.RPF
