"""Per-policy counters (plan.policy_counters, gateway_nft) and SNAT port figures (plan.snat_ports, apply.snat_ports,
apply.metrics): rendering, the pure aggregation, the bounded sampler's caching, and the exported metrics."""

from __future__ import annotations

import socket
from dataclasses import replace
from ipaddress import ip_address
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.core.model import IPAddress
from appliance.datapath.apply import incremental
from appliance.datapath.apply.incremental import IncrementalGateway
from appliance.datapath.apply.metrics import register
from appliance.datapath.apply.netlink import ApplyResult
from appliance.datapath.apply.snat_ports import SnatPortSampler, as_flow
from appliance.datapath.plan.gateway import GatewayPlan, GatewaySettings, plan_gateway
from appliance.datapath.plan.gateway_nft import gateway_table
from appliance.datapath.plan.policy_counters import (
    NODE_IP,
    PolicyLabels,
    connections_counter,
    counter_labels,
    packets_counter,
    split_readings,
)
from appliance.datapath.plan.snat_ports import SNAT_PORT_RANGE, NatFlow, SnatSample, port_use
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent, scale_intent, worker_addresses

EIP_A, EIP_B, EIP6 = "203.0.113.130", "203.0.113.131", "2001:db8:e1::2"
GW = Gw(eips=(EIP_A, EIP_B, EIP6))


def _plan(sels: list[Sel]) -> GatewayPlan:
    return plan_gateway(build_intent([GW], sels), member="gw1", workers=worker_addresses(),
                        settings=GatewaySettings())


def _labels(policy: str, eip: str, family: str = "4") -> PolicyLabels:
    return PolicyLabels(namespace="default", policy=policy, eip=eip, family=family, kind="EgressPolicy")


def test_one_counter_pair_per_policy_eip_and_family_whatever_the_pods() -> None:
    plan = _plan([
        Sel(pod_ip="100.64.1.10", policy="a"), Sel(pod_ip="100.64.1.11", policy="a"),
        Sel(pod_ip="100.64.2.10", node="worker2", policy="a"),
        Sel(pod_ip="100.64.1.12", policy="b", eip=EIP_B, destinations=("203.0.113.0/28",)),
        Sel(pod_ip="2001:db8:64:1::10", policy="a", eip=EIP6),
        Sel(pod_ip="100.64.1.13", policy="c", eip=None),
    ])
    labels = counter_labels(plan.snat)
    assert set(labels.values()) == {_labels("a", EIP_A), _labels("b", EIP_B), _labels("a", EIP6, "6"),
                                    _labels("c", NODE_IP)}
    assert len(labels) == 8  # packets + connections per label set; the three pods of `a` share theirs
    table = gateway_table(plan)
    assert set(labels) <= table.counters
    a = packets_counter(_labels("a", EIP_A))
    # each pod IP's steerings count toward one label set here: keyed by the pod IP alone (hash maps)
    assert table.set("polpod4").elements == {
        ("100.64.1.10", a), ("100.64.1.11", a), ("100.64.2.10", a),
        ("100.64.1.12", packets_counter(_labels("b", EIP_B))), ("100.64.1.13", packets_counter(_labels("c", NODE_IP))),
    }
    assert {k for k, _ in table.set("polpodc4").elements} == {k for k, _ in table.set("polpod4").elements}
    assert table.set("polpodc6").elements == {("2001:db8:64:1::10", connections_counter(_labels("a", EIP6, "6")))}
    assert table.set("polpkt4").elements == frozenset() == table.set("polconn4").elements
    # counted by the flow's original tuple, both directions, only for our marked flows; connections on new only
    assert "ct mark & 0xffff0000 == 0x0e6e0000 jump policy_accounting" in table.chains
    assert "ct state new ct direction original meta nfproto ipv4 counter name ct original ip saddr map @polpodc4" \
        in table.chains
    assert "meta nfproto ipv4 counter name ct original ip saddr map @polpod4 return" in table.chains


def test_a_pod_ip_in_two_policies_is_keyed_by_destination() -> None:
    plan = _plan([
        Sel(pod_ip="100.64.1.10", policy="a", destinations=("203.0.113.0/28",)),
        Sel(pod_ip="100.64.1.10", policy="b", eip=EIP_B, destinations=("203.0.113.32/28",)),
        Sel(pod_ip="100.64.1.11", policy="a", destinations=("203.0.113.0/28", "203.0.113.64/28")),
    ])
    table = gateway_table(plan)
    a, b = _labels("a", EIP_A), _labels("b", EIP_B)
    assert table.set("polpod4").elements == {("100.64.1.11", packets_counter(a))}
    assert table.set("polpkt4").elements == {("100.64.1.10 . 203.0.113.0/28", packets_counter(a)),
                                             ("100.64.1.10 . 203.0.113.32/28", packets_counter(b))}
    assert table.set("polconn4").elements == {("100.64.1.10 . 203.0.113.0/28", connections_counter(a)),
                                              ("100.64.1.10 . 203.0.113.32/28", connections_counter(b))}


def test_cardinality_is_bounded_by_policies_and_eips_not_pods() -> None:
    plan = plan_gateway(scale_intent(pods=2000, policies=10, eips=4), member="gw1", workers={},
                        settings=GatewaySettings())
    labels = counter_labels(plan.snat)
    assert len(set(labels.values())) <= 10 * 4
    assert all(not v.policy.startswith("100.") for v in labels.values())


def test_policy_names_of_any_length_give_valid_counter_names() -> None:
    long = PolicyLabels(namespace="n" * 63, policy="p" * 253, eip=EIP6, family="6")
    name = packets_counter(long)
    assert len(name) < 64 and name.startswith("pol_") and name != packets_counter(_labels("p", EIP6, "6"))
    cluster = PolicyLabels(namespace="", policy="p", eip=EIP_A, family="4", kind="EgressClusterPolicy")
    assert packets_counter(cluster) != packets_counter(_labels("p", EIP_A))


def test_readings_split_into_traffic_and_connections_of_known_counters_only() -> None:
    a = _labels("a", EIP_A)
    known = {packets_counter(a): a, connections_counter(a): a}
    readings = {packets_counter(a): (10, 900), connections_counter(a): (2, 120), "pol_gone": (5, 5),
                "eip_203_0_113_130": (10, 900)}
    assert split_readings(readings, known) == ({a: (10, 900)}, {a: 2})


def test_incremental_delta_feeds_existing_policy_counters_and_refuses_new_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Shell:
        netns = None

        def __init__(self) -> None:
            self.inputs: list[str] = []

        def run(self, argv: list[str], input: str | None = None, check: bool = True) -> tuple[int, str, str]:
            self.inputs.append(input or "")
            return 0, "", ""

    applied: list[object] = []
    shell = Shell()
    # the nft transactions go through apply.nft_exec: record their text instead
    monkeypatch.setattr(incremental, "run_nft", lambda text, netns: shell.run(["nft", "-f", "-"], input=text))

    def apply(plan: object, observe: bool = True) -> ApplyResult:
        applied.append(plan)
        return ApplyResult()

    applier = SimpleNamespace(
        apply=apply,
        netlink=SimpleNamespace(execute=lambda changes: ApplyResult()),
        shell=shell, forget=lambda: None,
    )
    inc = IncrementalGateway(applier, member="gw1", settings=GatewaySettings())  # type: ignore[arg-type]
    base = [Sel(pod_ip="100.64.1.10", policy="a")]
    workers = worker_addresses()
    first = build_intent([GW], base)
    inc.converge(first, workers=workers)
    second = build_intent([GW], [*base, Sel(pod_ip="100.64.1.11", policy="a")])
    # keep the unchanged steering object (what the incremental resolution does)
    second = replace(second, steerings=(first.steerings[0], second.steerings[1]))
    inc.converge(second, workers=workers, full=False)
    assert len(applied) == 1  # the delta path, no full plan
    a = packets_counter(_labels("a", EIP_A))
    assert f'add element inet egressgw polpod4 {{ 100.64.1.11 : "{a}" }}' in shell.inputs[-1]
    newcomer = build_intent([GW], [Sel(pod_ip="100.64.1.12", policy="new")]).steerings[0]
    third = replace(second, steerings=(*second.steerings, newcomer))
    inc.converge(third, workers=workers, full=False)
    assert len(applied) == 2  # a new (policy, EIP, family): its counters need the full plan


def flow(eip: str, server: str, port: int, proto: int = socket.IPPROTO_UDP) -> NatFlow:
    return NatFlow(proto=proto, eip=ip_address(eip), server=ip_address(server), server_port=port)


def test_port_use_counts_per_eip_and_the_fullest_destination() -> None:
    flows = [flow(EIP_A, "203.0.113.2", 53) for _ in range(5)]
    flows += [flow(EIP_A, "203.0.113.2", 53, socket.IPPROTO_TCP)] * 2  # another protocol: another destination
    flows += [flow(EIP_A, "203.0.113.3", 443)] * 3
    flows += [flow(EIP_B, "203.0.113.2", 53)]
    flows += [flow("198.51.100.11", "203.0.113.2", 53)] * 9  # not an EIP of ours: ignored
    got = {e.eip: e for e in port_use(flows, [ip_address(EIP_B), ip_address(EIP_A), ip_address(EIP6)])}
    assert [e for e in got] == [EIP_A, EIP_B, EIP6]
    assert (got[EIP_A].in_use, got[EIP_A].in_use_max) == (10, 5)
    assert (got[EIP_B].in_use, got[EIP_B].in_use_max) == (1, 1)
    assert (got[EIP6].in_use, got[EIP6].in_use_max, got[EIP6].ratio_max) == (0, 0, 0.0)
    assert got[EIP_A].port_range == SNAT_PORT_RANGE == 64512
    assert got[EIP_A].ratio_max == 5 / 64512


def test_a_pyroute2_entry_is_read_from_its_reply_tuple() -> None:
    reply = SimpleNamespace(saddr="203.0.113.2", daddr=EIP_A, sport=7000, dport=40001, proto=socket.IPPROTO_UDP)
    assert as_flow(SimpleNamespace(tuple_reply=reply)) == flow(EIP_A, "203.0.113.2", 7000)
    icmp = SimpleNamespace(saddr=EIP6, daddr=EIP6, sport=None, dport=None, proto=socket.IPPROTO_ICMPV6)
    assert as_flow(SimpleNamespace(tuple_reply=icmp)) == flow(EIP6, EIP6, 0, socket.IPPROTO_ICMPV6)
    assert as_flow(SimpleNamespace(tuple_reply=SimpleNamespace(saddr=None, daddr=None))) is None


def test_sampler_samples_at_most_every_interval_and_again_when_the_eips_change() -> None:
    now = [0.0]
    eips: list[IPAddress] = [ip_address(EIP_A)]
    calls: list[tuple[IPAddress, ...]] = []

    def sample(e: tuple[IPAddress, ...]) -> SnatSample:
        calls.append(e)
        return SnatSample(eips=port_use([], e), entries_read=0, truncated=False, seconds=0.01)

    s = SnatPortSampler(lambda: eips, sample, interval_s=15, clock=lambda: now[0])
    s.figures()
    now[0] = 10
    s.figures()
    assert len(calls) == 1
    now[0] = 16
    s.figures()
    assert len(calls) == 2
    eips.append(ip_address(EIP_B))
    got = s.figures()
    assert len(calls) == 3 and got is not None and [e.eip for e in got.eips] == [EIP_A, EIP_B]


def test_collector_exports_policy_and_snat_metrics() -> None:
    a, c = _labels("a", EIP_A), PolicyLabels(namespace="", policy="c", eip=EIP6, family="6")
    known = {packets_counter(a): a, connections_counter(a): a, packets_counter(c): c}
    readings = {packets_counter(a): (10, 1000), connections_counter(a): (3, 180), packets_counter(c): (4, 400),
                "eip_203_0_113_130": (10, 1000)}
    sample = SnatSample(eips=port_use([flow(EIP_A, "203.0.113.2", 53)] * 2, [ip_address(EIP_A)]),
                        entries_read=2, truncated=True, seconds=0.25)
    sampler = SnatPortSampler(lambda: [ip_address(EIP_A)], lambda e: sample)
    reg = CollectorRegistry()
    register(reg, lambda: readings, role="gateway", policies=lambda: known, snat=sampler)
    text = generate_latest(reg).decode()
    lab = 'eip="203.0.113.130",family="4",namespace="default",policy="a"'
    assert f"egressgw_policy_packets_total{{{lab}}} 10.0" in text
    assert f"egressgw_policy_bytes_total{{{lab}}} 1000.0" in text
    assert f"egressgw_policy_connections_total{{{lab}}} 3.0" in text
    assert 'egressgw_policy_packets_total{eip="2001:db8:e1::2",family="6",namespace="",policy="c"} 4.0' in text
    assert "# TYPE egressgw_policy_dropped_packets_total counter" in text
    assert 'egressgw_snat_port_range{eip="203.0.113.130"} 64512.0' in text
    assert 'egressgw_snat_ports_in_use{eip="203.0.113.130"} 2.0' in text
    assert 'egressgw_snat_ports_in_use_max{eip="203.0.113.130"} 2.0' in text
    assert f'egressgw_snat_port_use_ratio_max{{eip="203.0.113.130"}} {2 / 64512!r}' in text
    assert "egressgw_snat_sample_seconds 0.25" in text
    assert "egressgw_snat_sample_truncated 1.0" in text
    # a policy removed from the plan is no longer exported, even while the kernel still has its counter
    known.clear()
    assert "egressgw_policy_packets_total{" not in generate_latest(reg).decode()


def test_a_failed_sample_keeps_the_last_figures_and_is_retried_after_the_interval() -> None:
    now = [0.0]
    results: list[SnatSample | OSError] = [
        SnatSample(eips=port_use([flow(EIP_A, "203.0.113.2", 53)], [ip_address(EIP_A)]), entries_read=1,
                   truncated=False, seconds=0.01),
        OSError("netlink socket refused"),
    ]

    def sample(e: tuple[IPAddress, ...]) -> SnatSample:
        got = results.pop(0)
        if isinstance(got, OSError):
            raise got
        return got

    s = SnatPortSampler(lambda: [ip_address(EIP_A)], sample, interval_s=15, clock=lambda: now[0])
    first = s.figures()
    now[0] = 20
    assert s.figures() is first and results == []  # tried, failed, kept
