"""The nftables ruleset variants (appliance.datapath.plan.nft_variant): the feature table, the choice by kernel
release, and the COMPAT rendering (no late feature in its text, the same decisions as MODERN, element round trip)."""

from __future__ import annotations

import json
import re
from ipaddress import ip_address
from pathlib import Path

import pytest

from appliance.agent.stand_down import gateway_owns_table
from appliance.core.errors import ConfigError
from appliance.datapath.apply.nft import as_observed, expected_rule_counts, render_replace
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway
from appliance.datapath.plan.gateway_nft import gateway_table
from appliance.datapath.plan.kernel_parsing import parse_nft_table
from appliance.datapath.plan.nat_order import foreign_nat_chains
from appliance.datapath.plan.nft_rendering import NftTable, render_delta, render_full
from appliance.datapath.plan.nft_variant import (
    FEATURES,
    RulesetVariant,
    choose_variant,
    features_used,
    floor,
    kernel_version,
    nft_floor,
)
from appliance.datapath.plan.worker import WorkerSettings, plan_worker
from appliance.datapath.plan.worker_nft import render_bridge_full, worker_bridge_table, worker_table
from appliance.runtime.config import parse_agent_config, parse_gateway_config
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent, worker_addresses

MODERN, COMPAT = RulesetVariant.MODERN, RulesetVariant.COMPAT
LATE = {f.name for f in FEATURES if f.modern and not f.compat}


def rich_intent():  # type: ignore[no-untyped-def]
    """Dual stack, two policies with destination subnets for one pod, a useNodeIP policy, a dead gateway (fail
    closed: per-policy drop maps), pods on two workers."""
    dead = Gw(name="gw-b", members=("gw3",), alive=(), eips=("203.0.113.140", "203.0.113.141"))
    return build_intent(
        [Gw(eips=("203.0.113.130", "203.0.113.131", "2001:db8:e1::2"), members=("gw1", "gw2")), dead],
        [Sel(pod_ip="100.64.1.10", policy="a", destinations=("203.0.113.0/28",)),
         Sel(pod_ip="100.64.1.10", policy="b", eip="203.0.113.131", destinations=("203.0.113.16/28",)),
         Sel(pod_ip="100.64.1.11", policy="b", eip="203.0.113.131"),
         Sel(pod_ip="2001:db8:64:1::10", eip="2001:db8:e1::2", partner="203.0.113.130"),
         Sel(pod_ip="100.64.2.10", node="worker2", policy="b", eip="203.0.113.131"),
         Sel(pod_ip="100.64.2.11", node="worker2", policy="nodeip", eip=None, destinations=("203.0.113.0/28",)),
         Sel(pod_ip="100.64.1.12", gateway="gw-b", policy="p2", eip="203.0.113.140", destinations=("203.0.113.0/28",)),
         Sel(pod_ip="100.64.1.12", gateway="gw-b", policy="p3", eip="203.0.113.141",
             destinations=("203.0.113.32/28",))],
    )


def tables(variant: RulesetVariant) -> dict[str, NftTable]:
    intent = rich_intent()
    worker = plan_worker(intent, node="worker1", underlay=ip_address("100.127.0.11"), settings=WorkerSettings())
    gateway = plan_gateway(intent, member="gw1", workers=worker_addresses(), settings=GatewaySettings())
    return {"worker": worker_table(worker, variant), "gateway": gateway_table(gateway, variant)}


def full_text(table: NftTable) -> str:
    return render_full(table) + "".join(render_full(c) for c in table.companions)


# ----- the feature table and the choice -----


def test_feature_table_floors() -> None:
    assert floor(MODERN) == (5, 10)  # table comments; NAT in inet needs 5.2, concatenated intervals 5.6
    assert floor(COMPAT) <= (4, 18)  # RHEL 8
    assert {f.name for f in FEATURES if f.kernel > floor(COMPAT)} <= LATE
    late = {"NAT chains in inet tables", "interval sets with concatenated keys (pipapo)",
            "typeof set declarations (ip saddr . @th,96,24)", "table comments (structure fingerprint)"}
    assert late == LATE
    # the compat text also reads with Ubuntu 20.04's and RHEL 8's nft 0.9.3; modern needs 0.9.7
    assert nft_floor(COMPAT) <= (0, 9, 3) and nft_floor(MODERN) == (0, 9, 7)


@pytest.mark.parametrize(("release", "override", "expected"), [
    ("4.18.0-553.el8_10.x86_64", None, COMPAT),
    ("5.4.0-150-generic", None, COMPAT),
    ("5.4.0-150-generic", "auto", COMPAT),
    ("5.9.16", None, COMPAT),  # NAT in inet and pipapo exist, but a table comment would be dropped silently
    ("5.10.0-28-amd64", None, MODERN),
    ("6.1", None, MODERN),
    ("6.18.44-fc-v1098", None, MODERN),
    ("not-a-release", None, COMPAT),
    ("6.1.0-18-amd64", "compat", COMPAT),
    ("4.18.0-553.el8", "modern", MODERN),
])
def test_choose_variant(release: str, override: str | None, expected: RulesetVariant) -> None:
    assert choose_variant(release, override) is expected


def test_bad_override_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"datapath\.ruleset: must be one of auto, modern, compat, got 'legacy'"):
        choose_variant("6.1", "legacy")
    assert kernel_version("4.18.0-553.el8") == (4, 18)


def test_config_key_is_validated_and_names_the_field() -> None:
    src = Path("/etc/egressgw/x.yaml")
    assert parse_agent_config({"node_name": "w1"}, source=src).datapath.ruleset == "auto"
    assert parse_gateway_config({"node_name": "g1", "datapath": {"ruleset": "compat"}},
                                source=src).datapath.ruleset == "compat"
    with pytest.raises(ConfigError, match=r"datapath\.ruleset"):
        parse_agent_config({"node_name": "w1", "datapath": {"ruleset": "old"}}, source=src)
    with pytest.raises(ConfigError, match=r"datapath\.rules"):
        parse_gateway_config({"node_name": "g1", "datapath": {"rules": "compat"}}, source=src)


# ----- the rendered text -----


@pytest.mark.parametrize("role", ["worker", "gateway"])
def test_compat_text_uses_no_late_feature_and_modern_does(role: str) -> None:
    modern, compat = tables(MODERN)[role], tables(COMPAT)[role]
    assert features_used(full_text(modern)) >= LATE - ({"typeof set declarations (ip saddr . @th,96,24)"}
                                                       if role == "worker" else set())
    text = full_text(compat)
    assert features_used(text) == frozenset()
    # independent of the detector: no nat chain in the inet table, no concatenated interval set, no typeof
    inet = render_full(compat)
    assert "type nat" not in inet and "typeof" not in inet and "\tcomment" not in inet
    for line in text.splitlines():
        if "flags interval" in line:
            assert " . " not in line.split(";")[0], line
    assert [c.family for c in compat.companions] == ["ip", "ip6"]
    assert all("type nat hook postrouting" in c.chains for c in compat.companions)
    assert modern.companions == ()
    bridge = render_bridge_full(worker_bridge_table((), COMPAT))
    assert features_used(bridge) == frozenset() and "chain structure_" in bridge


def test_compat_keeps_every_counter_and_every_pod() -> None:
    modern, compat = tables(MODERN), tables(COMPAT)
    for role in ("worker", "gateway"):
        assert compat[role].counters == modern[role].counters
    g = compat["gateway"]
    # every (pod, destination) of the modern SNAT/masquerade maps is reachable through the pod's group
    for v in (4, 6):
        modern_pairs = {k for k, _ in modern["gateway"].set(f"snat{v}").elements | modern["gateway"].set(
            f"masq{v}").elements}
        found = set()
        for pod, verdict in g.set(f"sel{v}").elements:
            assert verdict is not None
            group = verdict.removeprefix("jump ")
            found |= {f"{pod} . {d}" for d, _ in g.set(group).elements}
        assert found == modern_pairs
        nat = next(c for c in g.companions if c.family == ("ip" if v == 4 else "ip6"))
        snat = {(k, e) for k, e in modern["gateway"].set(f"snat{v}").elements}
        found_snat = set()
        for pod, verdict in nat.set(f"snat{v}").elements:
            group = (verdict or "").removeprefix("jump ")
            if any(s.name == group for s in nat.sets):
                found_snat |= {(f"{pod} . {d}", e) for d, e in nat.set(group).elements}
        assert found_snat == snat


def test_compat_structure_follows_groups_not_pods() -> None:
    """A pod joining an existing group changes only elements (same fingerprint: an element delta); a pod with new
    destinations adds a group (new structure: a full replace)."""
    gw = Gw(eips=("203.0.113.130", "203.0.113.131"), members=("gw1",))

    def table(sels: list[Sel]) -> NftTable:
        plan = plan_worker(build_intent([gw], sels), node="worker1", underlay=ip_address("100.127.0.11"),
                           settings=WorkerSettings())
        return worker_table(plan, COMPAT)

    one = table([Sel(pod_ip="100.64.1.11", policy="b")])
    two = table([Sel(pod_ip="100.64.1.11", policy="b"), Sel(pod_ip="100.64.1.13", policy="b")])
    three = table([Sel(pod_ip="100.64.1.11", policy="b"), Sel(pod_ip="100.64.1.13", policy="b"),
                   Sel(pod_ip="100.64.1.14", policy="c", destinations=("203.0.113.0/28",))])
    assert one.fingerprint == two.fingerprint and one.set("steer4").elements != two.set("steer4").elements
    assert len(re.findall(r"chain steer4_", two.chains)) == 1  # two pods, one group
    assert three.fingerprint != two.fingerprint and len(re.findall(r"chain steer4_", three.chains)) == 2


def test_compat_delta_against_itself_is_empty_and_markers_are_counted() -> None:
    for table in tables(COMPAT).values():
        observed = as_observed(table)
        assert render_delta(observed.contents, table) == ("", 0)
        for c in table.companions:
            assert render_delta(observed.companions[c.family].contents, c) == ("", 0)
        assert expected_rule_counts(table)[table.marker_name] == 0
        text = render_replace(table)
        assert text.count("delete table") == 3  # inet + ip + ip6, one transaction


def test_modern_replace_removes_stale_compat_tables() -> None:
    text = render_replace(tables(MODERN)["gateway"])
    assert "table ip egressgw\ndelete table ip egressgw\n" in text
    assert "table ip6 egressgw\ndelete table ip6 egressgw\n" in text


def test_verdict_map_elements_parse_to_the_rendered_text() -> None:
    listing = {"nftables": [
        {"map": {"family": "inet", "name": "sel4", "table": "egressgw", "type": "ipv4_addr", "handle": 81,
                 "map": "verdict", "elem": [["100.64.1.10", {"jump": {"target": "sel4_4c90afe576"}}]]}},
        {"chain": {"family": "inet", "table": "egressgw", "name": "structure_0123456789abcdef_gateway",
                   "handle": 2}},
    ]}
    got = parse_nft_table(json.dumps(listing), comment="")
    assert got.contents.elements["sel4"] == {("100.64.1.10", "jump sel4_4c90afe576")}
    assert got.rule_counts == {"structure_0123456789abcdef_gateway": 0}
    # the agent's stand-down tells a gateway's table by its comment: a compat table gives it back from the marker
    assert got.comment == "egressgw gateway structure=0123456789abcdef"
    assert gateway_owns_table(got.comment)
    table = tables(COMPAT)["gateway"]
    assert table.marker_name == f"structure_{table.fingerprint}_gateway"


def test_our_compat_nat_tables_are_not_foreign() -> None:
    chains = {"nftables": [
        {"chain": {"family": f, "table": "egressgw", "name": "postrouting", "type": "nat", "hook": "postrouting",
                   "prio": -190}} for f in ("ip", "ip6", "inet")
    ] + [{"chain": {"family": "ip", "table": "other", "name": "p", "type": "nat", "hook": "postrouting",
                    "prio": -195}}]}
    assert [c.name for c in foreign_nat_chains(json.dumps(chains))] == ["ip other p"]
