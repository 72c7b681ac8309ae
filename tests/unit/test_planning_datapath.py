"""Worker and gateway planners (pure): table tests, determinism, slots, kernel diff, golden nftables rulesets.

Golden files live in tests/unit/golden/datapath_*.nft; regenerate with `UPDATE_GOLDEN=1 pytest this-file` and review
the diff.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from appliance.core.model import NoGatewayAction
from appliance.datapath.plan.gateway import GatewaySettings, GatewaySkipReason, plan_gateway
from appliance.datapath.plan.gateway_nft import gateway_table
from appliance.datapath.plan.kernel_model import KernelState, Op, diff
from appliance.datapath.plan.nft_rendering import Contents, mark, render_delta, render_full
from appliance.datapath.plan.tunnel import GATEWAY_MARK_BASE, GATEWAY_MARK_MASK, assign_slots
from appliance.datapath.plan.worker import SkipReason, WorkerSettings, plan_worker
from appliance.datapath.plan.worker_nft import worker_table
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent, worker_addresses

GOLDEN = Path(__file__).parent / "golden"
U4 = ip_address("100.127.0.11")
U6 = ip_address("2001:db8:127::11")
DUAL = Gw(eips=("203.0.113.130", "2001:db8:e1::2"))


def dual_sels(node: str = "worker1") -> list[Sel]:
    return [
        Sel(pod_ip="100.64.1.10", node=node, partner="2001:db8:e1::2"),
        Sel(pod_ip="2001:db8:64:1::10", node=node, eip="2001:db8:e1::2", partner="203.0.113.130"),
    ]


def worker(intent, underlay=U4):  # type: ignore[no-untyped-def]
    return plan_worker(intent, node="worker1", underlay=underlay, settings=WorkerSettings())


def gateway(intent, member="gw1"):  # type: ignore[no-untyped-def]
    return plan_gateway(intent, member=member, workers=worker_addresses(), settings=GatewaySettings())


SCENARIOS = {
    "worker_dual_stack_v4_underlay": lambda: render_full(worker_table(worker(build_intent([DUAL], dual_sels())))),
    "worker_dual_stack_v6_underlay": lambda: render_full(
        worker_table(worker(build_intent([DUAL], dual_sels()), underlay=U6))
    ),
    "worker_two_policies_two_eips": lambda: render_full(worker_table(worker(build_intent(
        [Gw(eips=("203.0.113.130", "203.0.113.131"))],
        [Sel(pod_ip="100.64.1.10", policy="a", destinations=("203.0.113.0/28",)),
         Sel(pod_ip="100.64.1.10", policy="b", eip="203.0.113.131", destinations=("203.0.113.16/28",)),
         Sel(pod_ip="100.64.1.11", policy="b", eip="203.0.113.131"),
         Sel(pod_ip="100.64.2.10", node="worker2", policy="b", eip="203.0.113.131")],
    )))),
    "worker_fail_closed": lambda: render_full(worker_table(worker(build_intent(
        [Gw(alive=())], [Sel(pod_ip="100.64.1.10")]
    )))),
    "gateway_dual_stack_two_workers_use_node_ip": lambda: render_full(gateway_table(gateway(build_intent(
        [Gw(eips=("203.0.113.130", "2001:db8:e1::2"), members=("gw1", "gw2"))],
        [*dual_sels(), Sel(pod_ip="100.64.2.10", node="worker2"),
         Sel(pod_ip="100.64.2.11", node="worker2", policy="nodeip", eip=None, destinations=("203.0.113.0/28",))],
    )))),
    "gateway_vxlan_and_wireguard_instances": lambda: render_full(gateway_table(plan_gateway(
        build_intent([Gw(eips=("203.0.113.130",)), Gw(name="gw-wg", wireguard=True, eips=("203.0.113.140",))],
                     [Sel(pod_ip="100.64.1.10"), Sel(pod_ip="100.64.2.10", node="worker2", gateway="gw-wg",
                                                     eip="203.0.113.140")]),
        member="gw1", workers=worker_addresses(), settings=GatewaySettings(), wireguard_devices=("wg-egw-i0",),
    ))),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden_rulesets(name: str) -> None:
    text = SCENARIOS[name]()
    path = GOLDEN / f"datapath_{name}.nft"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"rendered ruleset differs from {path} (UPDATE_GOLDEN=1 to regenerate)"


def test_worker_steers_only_local_pods_and_checks_cluster_first() -> None:
    intent = build_intent([DUAL], [*dual_sels(), Sel(pod_ip="100.64.2.10", node="worker2")])
    plan = worker(intent)
    assert {str(e.pod_ip) for e in plan.steer} == {"100.64.1.10", "2001:db8:64:1::10"}
    table = worker_table(plan)
    assert table.set("cluster4").elements == {("100.64.0.0/16", None), ("100.100.0.0/16", None),
                                              ("100.127.0.0/24", None)}
    chain = table.chains
    # cluster-internal destinations return before the steering map is consulted
    assert chain.index("ip daddr @cluster4 return") < chain.index("map @steer4")
    assert chain.index("ip6 daddr @cluster6 return") < chain.index("map @steer6")


def test_worker_one_endpoint_per_eip_with_rules_tables_and_loop_guard() -> None:
    plan = worker(build_intent([DUAL], dual_sels()))
    (ep,) = plan.endpoints
    assert ep.address == ip_address("203.0.113.130")  # v4 underlay: the v4 partner carries the v6 pod too
    assert {e.mark for e in plan.steer} == {ep.mark}
    rules = sorted(plan.kernel.rules)
    expected = []
    for f in (4, 6):
        expected += [(f, 3000, "", 0, 3999, True), (f, 3001, "lo", 254, 0, False),
                     (f, ep.priority, "", ep.table, 0, False), (f, 3999, "", 0, 0, False)]
    assert [(r.family, r.priority, r.iif, r.table, r.goto, r.invert) for r in rules] == expected
    assert 3001 < ep.priority < 3999
    assert {r.dst for r in plan.kernel.routes} == {ip_network("0.0.0.0/0"), ip_network("::/0")}
    assert {link.mtu for link in plan.kernel.links} == {1450}
    v6 = worker(build_intent([DUAL], dual_sels()), underlay=U6)
    assert [e.address for e in v6.endpoints] == [ip_address("2001:db8:e1::2")]
    assert {link.mtu for link in v6.kernel.links} == {1430}


def test_fail_closed_drops_and_fail_open_does_not_steer() -> None:
    closed = worker(build_intent([Gw(alive=())], [Sel(pod_ip="100.64.1.10")]))
    assert [e.mark for e in closed.steer] == [closed.marks.drop_mark]
    assert closed.endpoints == ()
    opened = worker(build_intent([Gw(alive=(), no_gateway_action=NoGatewayAction.FAIL_OPEN)],
                                 [Sel(pod_ip="100.64.1.10")]))
    assert opened.steer == ()
    assert [s.reason for s in opened.skipped] == [SkipReason.NO_GATEWAY_FAIL_OPEN]


def test_use_node_ip_tunnels_to_the_first_alive_member_and_masquerades() -> None:
    intent = build_intent([Gw(members=("gw1", "gw2"), alive=("gw2",))], [Sel(pod_ip="100.64.1.10", eip=None)])
    plan = worker(intent)
    assert [str(e.address) for e in plan.endpoints] == ["198.51.100.12"]
    g = gateway(intent, member="gw2")
    assert [(str(e.pod_ip), e.eip) for e in g.snat] == [("100.64.1.10", None)]
    table = gateway_table(g)
    assert table.set("masq4").elements == {("100.64.1.10 . 0.0.0.0/0", None)}
    assert table.set("snat4").elements == frozenset()


def test_overlapping_destinations_keep_the_higher_precedence_one() -> None:
    intent = build_intent([Gw(eips=("203.0.113.130", "203.0.113.131"))], [
        Sel(pod_ip="100.64.1.10", policy="a", destinations=("203.0.113.0/24",)),
        Sel(pod_ip="100.64.1.10", policy="b", eip="203.0.113.131", destinations=("203.0.113.0/28",)),
    ])
    plan = worker(intent)
    assert [(str(e.destination)) for e in plan.steer] == ["203.0.113.0/24"]
    assert [s.reason for s in plan.skipped] == [SkipReason.OVERLAPPING_DESTINATION]
    assert [s.reason for s in gateway(intent).skipped] == [GatewaySkipReason.OVERLAPPING_DESTINATION]


def test_gateway_binds_pods_to_their_worker_and_routes_replies_back() -> None:
    intent = build_intent([DUAL], [*dual_sels(), Sel(pod_ip="100.64.2.10", node="worker2")])
    g = gateway(intent)
    marks = {v.node: v.mark for v in g.vteps}
    assert set(marks) == {"worker1", "worker2"} and marks["worker1"] != marks["worker2"]
    assert {(m, str(p)) for m, p in g.pods} == {
        (marks["worker1"], "100.64.1.10"), (marks["worker1"], "2001:db8:64:1::10"), (marks["worker2"], "100.64.2.10")
    }
    routes = {str(r.dst): str(r.encap.dst) for r in g.kernel.routes}
    assert routes == {"100.64.1.10/32": "100.127.0.11", "2001:db8:64:1::10/128": "100.127.0.11",
                      "100.64.2.10/32": "100.127.0.12"}
    assert {str(a.ip) for a in g.kernel.addresses} == {"203.0.113.130", "2001:db8:e1::2"}
    assert all(v.mark & GATEWAY_MARK_MASK == GATEWAY_MARK_BASE for v in g.vteps)
    # a member of no instance plans nothing
    empty = gateway(intent, member="gw9")
    assert empty.kernel == KernelState() and empty.snat == ()


def test_plans_are_deterministic_and_independent_of_input_order() -> None:
    sels = [*dual_sels(), Sel(pod_ip="100.64.1.11", eip="203.0.113.131"), Sel(pod_ip="100.64.2.10", node="worker2")]
    gw = Gw(eips=("203.0.113.130", "203.0.113.131", "2001:db8:e1::2"))
    base = build_intent([gw], sels)
    shuffled = list(base.steerings)
    random.Random(7).shuffle(shuffled)
    other = replace(base, steerings=tuple(shuffled))
    assert worker(base) == worker(other)
    assert gateway(base) == gateway(other)
    assert render_full(worker_table(worker(base))) == render_full(worker_table(worker(other)))


def test_slots_are_stable_when_one_key_is_added() -> None:
    keys = [f"203.0.113.{i}|7700|4789" for i in range(130, 160)]
    before = assign_slots(keys, capacity=999)
    after = assign_slots([*keys, "203.0.113.200|7700|4789"], capacity=999)
    assert all(after[k] == v for k, v in before.items())
    assert len(set(after.values())) == len(after)


def test_kernel_diff_is_empty_for_equal_states_and_ordered_otherwise() -> None:
    desired = gateway(build_intent([DUAL], dual_sels())).kernel
    assert diff(desired, desired) == ()
    adds = diff(KernelState(), desired)
    assert all(c.op is not Op.DELETE for c in adds)
    kinds = [type(c.item).__name__ for c in adds]
    assert kinds.index("TunnelLink") < kinds.index("Route") < kinds.index("Rule")
    removes = diff(desired, KernelState())
    kinds = [type(c.item).__name__ for c in removes if type(c.item).__name__ != "Sysctl"]
    assert kinds.index("Rule") < kinds.index("Route") < kinds.index("TunnelLink")
    assert all(c.op is Op.DELETE for c in removes)


def test_nft_delta_is_empty_when_contents_match_and_minimal_otherwise() -> None:
    table = worker_table(worker(build_intent([DUAL], dual_sels())))
    same = Contents(elements={s.name: s.elements for s in table.sets}, counters=table.counters)
    assert render_delta(same, table) == ("", 0)
    plan = worker(build_intent([DUAL], [*dual_sels(), Sel(pod_ip="100.64.1.11")]))
    text, n = render_delta(same, worker_table(plan))
    (endpoint,) = plan.endpoints
    want = f"add element inet egressgw steer4 {{ 100.64.1.11 . 0.0.0.0/0 : {mark(endpoint.mark)} }}"
    assert n == 1 and text.strip() == want


def test_wireguard_steerings_route_into_the_wireguard_device() -> None:
    intent = build_intent([Gw(name="gw-wg", wireguard=True)], [Sel(pod_ip="100.64.1.10", gateway="gw-wg")])
    skipped = worker(intent)
    assert skipped.steer == () and [s.reason for s in skipped.skipped] == [SkipReason.NO_TUNNEL_DEVICE]
    plan = plan_worker(intent, node="worker1", underlay=U4, settings=WorkerSettings(),
                       wireguard_devices={"gw-wg": "wg-egw-abc0"})
    (ep,) = plan.endpoints
    assert ep.device == "wg-egw-abc0"
    assert {(str(r.dst), r.dev, r.encap) for r in plan.kernel.routes} == {
        ("0.0.0.0/0", "wg-egw-abc0", None), ("::/0", "wg-egw-abc0", None)
    }
    assert plan.kernel.links == frozenset()  # no VXLAN device for a WireGuard-only worker
    assert [e.mark for e in plan.steer] == [ep.mark]


def test_wireguard_gateway_snats_without_vtep_binding() -> None:
    intent = build_intent([Gw(name="gw-wg", wireguard=True, port=51820)],
                          [Sel(pod_ip="100.64.1.10", gateway="gw-wg")])
    g = plan_gateway(intent, member="gw1", workers=worker_addresses(), settings=GatewaySettings(),
                     wireguard_devices=("wg-egw-i0", "wg-egw-i1"))
    assert [(str(e.pod_ip), str(e.eip)) for e in g.snat] == [("100.64.1.10", "203.0.113.130")]
    assert g.pods == () and g.vteps == () and g.kernel.routes == frozenset() and g.kernel.links == frozenset()
    assert g.wireguard_ports == (51820, 51821)
    table = gateway_table(g)
    assert table.set("wg_links").elements == {("wg-egw-i0", None), ("wg-egw-i1", None)}
    assert "udp dport @wg_ports accept" in table.chains
    assert table.chains.index("udp dport @wg_ports accept") < table.chains.index("ip daddr @eips4 ct state new")
    assert any(s.key == "net.netfilter.nf_conntrack_tcp_be_liberal" for s in g.kernel.sysctls)


def test_pod_cidr_routes_replace_per_pod_routes_on_the_gateway() -> None:
    intent = build_intent([DUAL], [*dual_sels(), Sel(pod_ip="100.64.1.11"), Sel(pod_ip="100.99.0.5")])
    cidrs = {"worker1": (ip_network("100.64.1.0/24"), ip_network("2001:db8:64:1::/64"))}
    g = plan_gateway(intent, member="gw1", workers=worker_addresses(), settings=GatewaySettings(),
                     worker_pod_cidrs=cidrs)
    assert sorted(str(r.dst) for r in g.kernel.routes) == ["100.64.1.0/24", "100.99.0.5/32", "2001:db8:64:1::/64"]
    assert len(g.pods) == 4  # the anti-spoofing binding stays per pod
