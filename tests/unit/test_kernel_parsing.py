"""Parsing `ip -j` / `nft -j` output (appliance.datapath.plan.kernel_parsing) against outputs of a real kernel.

The fixtures in tests/unit/fixtures/kernel were captured by `capture.py` next to them: it applied `fixture_plans()`
with the real appliers in throwaway namespaces (plus a foreign VXLAN link and a foreign rule) and stored what the
tools printed. So the parsed model must be exactly what the plans asked for - the same round trip the appliers rely
on to find nothing to change on a second pass - and the foreign objects must be left out.
"""

from __future__ import annotations

from ipaddress import IPv4Interface, ip_address, ip_network
from pathlib import Path

import pytest

from appliance.datapath.apply.nft import expected_rule_counts
from appliance.datapath.plan.gateway import GatewayPlan, GatewaySettings, plan_gateway
from appliance.datapath.plan.gateway_nft import gateway_table
from appliance.datapath.plan.kernel_model import MAIN_TABLE, Encap, KernelState, LocalAddress, Route, Sysctl
from appliance.datapath.plan.kernel_parsing import (
    addr_infos,
    load_ip_json,
    owned_link_names,
    parse_device_routes,
    parse_interface_addresses,
    parse_local_addresses,
    parse_neighbours,
    parse_nft_counters,
    parse_nft_table,
    parse_routes,
    parse_rules,
    parse_sysctls,
    parse_tunnel_link,
    table_comment,
)
from appliance.datapath.plan.nft_rendering import NftTable
from appliance.datapath.plan.worker import WorkerPlan, WorkerSettings, plan_worker
from appliance.datapath.plan.worker_nft import worker_table
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent, worker_addresses

FIXTURES = Path(__file__).parent / "fixtures" / "kernel"


def fixture_plans() -> dict[str, WorkerPlan | GatewayPlan]:
    """The plans the fixtures were captured from, by namespace (`capture.py` applies exactly these)."""
    # gw-b has no alive member (fail closed): worker1's pods of it fill the per-policy drop maps (by pod IP, and by
    # pod IP . destination for the pod in two of its policies)
    dead = Gw(name="gw-b", members=("gw3",), alive=(), eips=("203.0.113.140", "203.0.113.141"))
    intent = build_intent(
        [Gw(eips=("203.0.113.130", "2001:db8:e1::2")), dead],
        [Sel(pod_ip="100.64.1.10", node="worker1", partner="2001:db8:e1::2"),
         Sel(pod_ip="2001:db8:64:1::10", node="worker1", eip="2001:db8:e1::2", partner="203.0.113.130"),
         Sel(pod_ip="100.64.2.10", node="worker2"),
         Sel(pod_ip="100.64.1.11", gateway="gw-b", policy="p2", eip="203.0.113.140"),
         Sel(pod_ip="100.64.1.12", gateway="gw-b", policy="p2", eip="203.0.113.140", destinations=("203.0.113.0/28",)),
         Sel(pod_ip="100.64.1.12", gateway="gw-b", policy="p3", eip="203.0.113.141",
             destinations=("203.0.113.32/28",))],
    )
    return {
        "egt-kp-w": plan_worker(intent, node="worker1", underlay=ip_address("100.127.0.11"), settings=WorkerSettings()),
        "egt-kp-g": plan_gateway(intent, member="gw1", workers=worker_addresses(), settings=GatewaySettings()),
    }


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


def observed(short: str) -> KernelState:
    """The kernel state parsed from one namespace's fixtures, the way `NetlinkApplier.observe` assembles it."""
    links = load_ip_json(text(f"{short}_link.json"))
    vx = addr_infos(load_ip_json(text(f"{short}_addr_vx.json")))
    return KernelState(
        links=frozenset(parse_tunnel_link(d, vx) for d in links if str(d["ifname"]) in owned_link_names(links)),
        addresses=parse_local_addresses(addr_infos(load_ip_json(text(f"{short}_addr_lo.json")))),
        neighbours=parse_neighbours(load_ip_json(text(f"{short}_neigh.json"))),
        routes=parse_routes(load_ip_json(text(f"{short}_route4.json")), 4)
        | parse_routes(load_ip_json(text(f"{short}_route6.json")), 6),
        rules=parse_rules(load_ip_json(text(f"{short}_rule4.json")), 4)
        | parse_rules(load_ip_json(text(f"{short}_rule6.json")), 6),
    )


def table_of(plan: WorkerPlan | GatewayPlan) -> NftTable:
    return worker_table(plan) if isinstance(plan, WorkerPlan) else gateway_table(plan)


@pytest.mark.parametrize("ns", ["egt-kp-w", "egt-kp-g"])
def test_ip_outputs_parse_to_the_applied_plan(ns: str) -> None:
    plan = fixture_plans()[ns]
    got = observed(ns.removeprefix("egt-kp-"))
    assert got.links == plan.kernel.links
    assert got.addresses == plan.kernel.addresses
    assert got.neighbours == plan.kernel.neighbours
    assert got.routes == plan.kernel.routes
    assert got.rules == plan.kernel.rules


@pytest.mark.parametrize("ns", ["egt-kp-w", "egt-kp-g"])
def test_nft_output_parses_to_the_applied_table(ns: str) -> None:
    short = ns.removeprefix("egt-kp-")
    table = table_of(fixture_plans()[ns])
    got = parse_nft_table(text(f"{short}_nft.json"), comment=table_comment(text(f"{short}_nft_text.txt")))
    assert got.comment == table.comment != ""
    assert got.contents.elements == {s.name: s.elements for s in table.sets}
    assert got.contents.counters == table.counters
    assert got.rule_counts == expected_rule_counts(table)
    assert set(got.counter_values) == set(table.counters)
    assert parse_nft_counters(text(f"{short}_nft_counters.json")) == got.counter_values


def test_worker_details_and_foreign_objects() -> None:
    links = load_ip_json(text("w_link.json"))
    assert owned_link_names(links) == ["egw-vx4789"]  # lo and the foreign vx-other are not ours
    (vx,) = [d for d in links if d["ifname"] == "egw-vx4789"]
    link = parse_tunnel_link(vx, addr_infos(load_ip_json(text("w_addr_vx.json"))))
    assert (link.port, link.mac, link.address) == (4789, "02:e6:6e:00:00:02", IPv4Interface("169.254.77.2/32"))
    (other,) = [d for d in links if d["ifname"] == "vx-other"]
    assert parse_tunnel_link(other, []).port == -1  # not external: would be replaced
    assert parse_tunnel_link(other, []).address == IPv4Interface("0.0.0.0/32")
    (route4,) = parse_routes(load_ip_json(text("w_route4.json")), 4)
    assert route4.dst == ip_network("0.0.0.0/0") and route4.encap is not None
    assert route4.encap.dst == ip_address("203.0.113.130") and route4.encap.vni > 0
    assert route4.via == ip_address("169.254.77.1") and route4.dev == "egw-vx4789"
    rules = parse_rules(load_ip_json(text("w_rule4.json")), 4)
    assert 100 not in {r.priority for r in rules}  # the foreign rule (no proto 230)
    gate = next(r for r in rules if r.priority == 3000)
    marks = WorkerSettings().marks
    assert gate.invert and gate.goto == 3999 and (gate.fwmark, gate.mask) == (marks.mark_base, marks.mark_mask)
    assert next(r for r in rules if r.priority == 3999).nop
    assert next(r for r in rules if r.priority == 3001).table == MAIN_TABLE


def test_gateway_eips_on_lo_by_metric() -> None:
    assert parse_local_addresses(addr_infos(load_ip_json(text("g_addr_lo.json")))) == {
        LocalAddress(ip=ip_address("203.0.113.130")), LocalAddress(ip=ip_address("2001:db8:e1::2"))}
    assert parse_local_addresses(addr_infos(load_ip_json(text("w_addr_lo.json")))) == frozenset()


def test_repeated_dst_key_is_kept_and_empty_output_is_empty() -> None:
    (r,) = load_ip_json('[{"dst":"default","encap":"ip","id":5,"dst":"203.0.113.1","dev":"egw-vx4789"}]')
    assert (r["dst"], r["dst_2"]) == ("default", "203.0.113.1")
    assert load_ip_json("") == [] and load_ip_json("{}") == []
    assert parse_routes([r], 6) == {Route(table=MAIN_TABLE, dst=ip_network("::/0"), dev="egw-vx4789", via=None,
                                          encap=Encap(vni=5, dst=ip_address("203.0.113.1")))}


def test_sysctl_interface_address_and_device_route_parsing() -> None:
    out = "net.ipv4.ip_forward = 1\nsysctl: cannot stat /proc/sys/x/y: No such file or directory\n"
    assert parse_sysctls(out) == {Sysctl(key="net.ipv4.ip_forward", value="1")}
    addrs = parse_interface_addresses(load_ip_json(text("w_addr_vx.json")))
    assert addrs == {"egw-vx4789": (IPv4Interface("169.254.77.2/32"),)}
    routes = [{"dst": "100.64.1.10", "dev": "wg0"}, {"dst": "100.64.2.0/24", "dev": "wg1"}]
    assert parse_device_routes(routes, 4) == {("100.64.1.10/32", "wg0"), ("100.64.2.0/24", "wg1")}
    assert parse_device_routes([{"dst": "2001:db8::1", "dev": "wg0"}], 6) == {("2001:db8::1/128", "wg0")}


def test_table_comment_absent() -> None:
    assert table_comment("table inet egressgw {\n}\n") == ""
