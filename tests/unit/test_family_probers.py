"""The agent probes each tunnel endpoint from its own underlay address of the endpoint's family (`FamilyProbers`): a
gateway with `spec.tunnel.family: ipv6` on dual-stack workers gets its IPv6 endpoints probed from the worker's IPv6
address (the one its tunnel packets come from, the one the members answer echo requests from), although the agent's
default tunnel source is its IPv4 address (scripted sockets, no network)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from typing import Any

from appliance.agent.endpoint_liveness import EndpointLiveness, FamilyProbers
from appliance.core.model import TunnelFamily
from appliance.datapath.plan.endpoint_liveness import EndpointState
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent
from tests.unit.test_endpoint_liveness import FAST, ScriptedSocket

U4, U6 = ip_address("100.127.0.11"), ip_address("2001:db8:127::11")
EIP4, EIP6 = ip_address("203.0.113.130"), ip_address("2001:db8:e1::2")


def probers() -> tuple[FamilyProbers, dict[int, ScriptedSocket]]:
    socks = {4: ScriptedSocket({EIP4}), 6: ScriptedSocket({EIP6})}
    return FamilyProbers([U4, U6], FAST, sockets=socks), socks  # type: ignore[arg-type]


def test_each_endpoint_is_probed_from_the_address_of_its_family() -> None:
    fp, socks = probers()
    fp.set_targets([EIP4, EIP6])
    for _ in range(3):
        for p in fp.probers:
            p.tick()
    assert {t for t, _ in socks[4].sent} == {EIP4} and {t for t, _ in socks[6].sent} == {EIP6}
    assert fp.states() == {EIP4: EndpointState.UP, EIP6: EndpointState.UP}
    assert {r.endpoint for r in fp.reports()} == {EIP4, EIP6}
    fp.close()


def test_the_agent_probes_an_ipv6_family_gateway_over_ipv6() -> None:
    intent = build_intent([Gw(eips=(str(EIP4), str(EIP6)))], [Sel(pod_ip="100.64.1.10", partner=str(EIP6))])
    inst = intent.instances[0]
    intent = replace(intent, instances=(replace(inst, tunnel=replace(inst.tunnel, family=TunnelFamily.IPV6)),))
    live = EndpointLiveness(node="worker1", source=U4, settings=FAST, sources=(U4, U6))
    assert isinstance(live.prober, FamilyProbers)
    socks: dict[int, Any] = {p.source.version: ScriptedSocket({EIP6}) for p in live.prober.probers}
    for p in live.prober.probers:
        p._sock = socks[p.source.version]
    live.effective(intent)  # sets the targets: the IPv6 partner, as plan_worker picks it
    for _ in range(3):
        for p in live.prober.probers:
            p.tick()
    assert {t for t, _ in socks[6].sent} == {EIP6} and socks[4].sent == []
    assert live.prober.states() == {EIP6: EndpointState.UP}
    live.prober.close()


def test_a_single_stack_node_keeps_one_prober() -> None:
    live = EndpointLiveness(node="worker1", source=U4, settings=FAST, sources=(U4,))
    assert not isinstance(live.prober, FamilyProbers)
