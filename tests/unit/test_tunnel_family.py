"""The tunnel family (`spec.tunnel.family`, pure): one validated choice per gateway instance that both ends follow.

The bug it fixes: dual-stack Nodes (an IPv4 and an IPv6 InternalIP) with workers tunnelling over IPv6 - the member
address was the Node's IPv4 and the gateway encapsulated replies in its own address family, toward the worker's
IPv4 address, while the worker tunnelled from IPv6: selected pods got no replies. Here the whole chain runs from the
API object through resolution to both planners, and the worker and gateway plans must agree on addresses and family.
"""

from __future__ import annotations

import re
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.api.manifests import parse_gateway
from appliance.api.validation import validate_all
from appliance.core.intent import Intent
from appliance.core.model import API_VERSION, Appliance, EgressGateway, TunnelFamily, underlay_address
from appliance.core.snapshot import Snapshot
from appliance.datapath.plan.endpoint_liveness import probe_targets
from appliance.datapath.plan.gateway import GatewaySettings, GatewaySkipReason, plan_gateway, workers_of
from appliance.datapath.plan.tunnel import worker_vni
from appliance.datapath.plan.worker import SkipReason, WorkerSettings, plan_worker, tunnel_guard
from appliance.policy.placement import build_instance, members_of
from appliance.policy.resolution import resolve
from appliance.runtime.config import parse_agent_config, parse_gateway_config
from tests.unit.resolution_builders import node, pod, policy

ROOT = Path(__file__).resolve().parents[2]
UID = "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"
GW4, GW6 = "198.51.100.11", "2001:db8:51::11"
W4, W6 = "100.64.250.21", "2001:db8:64:250::21"


def gateway_object(family: str | None = None, **pools: Any) -> dict[str, Any]:
    tunnel = {"family": family} if family else {}
    return {
        "apiVersion": API_VERSION, "kind": "EgressGateway",
        "metadata": {"name": "egw", "uid": UID, "generation": 1},
        "spec": {"ippools": pools or {"ipv4": ["203.0.113.130"], "ipv6": ["2001:db8:e1::130"]},
                 "nodeSelector": {"selector": {"matchLabels": {"role": "gateway"}}}, "tunnel": tunnel},
    }


def parsed(family: str | None = None) -> EgressGateway:
    issues: list[tuple[str, str]] = []
    gw = parse_gateway(gateway_object(family), issues)
    assert issues == [] and gw is not None
    return gw


def dual_stack_snapshot(family: str | None, *, worker_addresses: tuple[str, ...] = (W4, W6)) -> Snapshot:
    """One dual-stack gateway Node, one worker, one dual-stack pod selected by an EIP policy and a useNodeIP one."""
    return Snapshot(
        gateways=(parsed(family),),
        policies=(policy("eip", gateway="egw", app="a"),
                  policy("nodeip", gateway="egw", app="b", node_ip=True)),
        nodes=(node("gw1", GW4, GW6, lbl={"role": "gateway"}), node("worker1", *worker_addresses)),
        pods=(pod("default", "a", "100.64.1.10", "2001:db8:64:1::10", lbl={"app": "a"}, node_name="worker1"),
              pod("default", "b", "100.64.1.11", lbl={"app": "b"}, node_name="worker1")),
    )


def plans(snapshot: Snapshot) -> tuple[Intent, Any, Any]:
    intent = resolve(snapshot)
    # the agent's default tunnel source on a dual-stack node is its IPv4 address (`agent.datapath.tunnel_source`)
    w = plan_worker(intent, node="worker1", underlay=ip_address(W4), settings=WorkerSettings())
    g = plan_gateway(intent, member="gw1", workers=workers_of(snapshot), settings=GatewaySettings())
    return intent, w, g


def test_the_field_parses_validates_with_its_path_and_defaults_to_unset() -> None:
    assert parsed().tunnel.family is None
    assert parsed("ipv6").tunnel.family is TunnelFamily.IPV6
    result = validate_all([gateway_object("ipv5")])
    assert [p.field for p in result.problems] == ["spec.tunnel.family"]
    # an IPv6 underlay ends at IPv6 EIPs: an IPv4-only pool cannot be reached over it
    result = validate_all([gateway_object("ipv6", ipv4=["203.0.113.130"])])
    assert [p.field for p in result.problems] == ["spec.tunnel.family"]
    assert "spec.ippools.ipv6" in result.problems[0].message


def test_the_rule_for_node_addresses() -> None:
    v4, v6 = ip_address("198.51.100.1"), ip_address("2001:db8::1")
    # unset: today's behaviour - IPv4 when there is one (dual-stack tunnels over IPv4), else the only family
    assert underlay_address((v6, v4), None) == v4
    assert underlay_address((v6,), None) == v6
    assert underlay_address((v4, v6), TunnelFamily.IPV6) == v6
    assert underlay_address((v4,), TunnelFamily.IPV6) is None


def test_members_and_appliances_take_the_address_of_the_family() -> None:
    role = {"role": "gateway"}
    nodes = (node("gw1", GW4, GW6, lbl=role), node("gw-v4only", "198.51.100.12", lbl=role))
    app = Appliance(name="app1", gateway="egw", address=ip_address("198.51.100.31"),
                    addresses=(ip_address("198.51.100.31"), ip_address("2001:db8:51::31")))
    unset = {m.name: str(m.address) for m in members_of(parsed(), nodes, (app,))}
    assert unset == {"app1": "198.51.100.31", "gw1": GW4, "gw-v4only": "198.51.100.12"}
    six = {m.name: str(m.address) for m in members_of(parsed("ipv6"), nodes, (app,))}
    # a node without an address of the family cannot be a tunnel end of the instance: no member
    assert six == {"app1": "2001:db8:51::31", "gw1": GW6}


def test_dual_stack_nodes_over_an_ipv6_underlay_both_ends_agree() -> None:
    intent, w, g = plans(dual_stack_snapshot("ipv6"))
    inst = intent.instances[0]
    assert [(m.name, str(m.address)) for m in inst.members] == [("gw1", GW6)]
    vni = worker_vni(inst, "worker1")
    # the worker tunnels every steered pod (IPv4 and IPv6 pod IPs) to IPv6 endpoints only, with the keyed VNI
    assert w.skipped == ()
    assert {(str(e.address), e.vni) for e in w.endpoints} == {("2001:db8:e1::130", vni), (GW6, vni)}
    assert {r.encap.dst.version for r in w.kernel.routes if r.encap is not None} == {6}
    # the gateway admits exactly that worker address with that VNI, and replies toward it (not its IPv4 address)
    assert {(str(v.address), v.vni) for v in g.vtep_vnis} == {(W6, vni)}
    assert {str(v.address) for v in g.vteps} == {W6}
    assert {(str(r.encap.dst), r.encap.vni) for r in g.kernel.routes if r.encap is not None} == {(W6, vni)}
    assert g.skipped == ()
    # useNodeIP: the worker tunnels to the member's IPv6 address, which is the address the gateway takes tunnel
    # packets on (its own address) and the one the workers' guard lists
    assert g.uplink == ip_address(GW6)
    assert ip_address(GW6) in tunnel_guard(intent)
    # the endpoint prober targets what the worker sends to
    assert probe_targets(intent, node="worker1", underlay_version=4) == {e.address for e in w.endpoints}


def test_unset_keeps_todays_behaviour_on_dual_stack_nodes_ipv4_everywhere() -> None:
    intent, w, g = plans(dual_stack_snapshot(None))
    assert [str(m.address) for m in intent.instances[0].members] == [GW4]
    assert {str(e.address) for e in w.endpoints} == {"203.0.113.130", GW4}
    assert {str(r.encap.dst) for r in g.kernel.routes if r.encap is not None} == {W4}
    # unset: every InternalIP of the worker is admitted, as before
    assert {str(v.address) for v in g.vtep_vnis} == {W4, W6}


def test_unset_on_ipv6_single_stack_nodes_tunnels_over_ipv6() -> None:
    snapshot = dual_stack_snapshot(None, worker_addresses=(W6,))
    snapshot = Snapshot(**{**{f: getattr(snapshot, f) for f in ("gateways", "policies", "pods")},
                           "nodes": (node("gw1", GW6, lbl={"role": "gateway"}), node("worker1", W6))})
    intent = resolve(snapshot)
    w = plan_worker(intent, node="worker1", underlay=ip_address(W6), settings=WorkerSettings())
    g = plan_gateway(intent, member="gw1", workers=workers_of(snapshot), settings=GatewaySettings())
    assert {e.address.version for e in w.endpoints} == {6}
    assert {str(r.encap.dst) for r in g.kernel.routes if r.encap is not None} == {W6}


def test_a_worker_without_an_address_of_the_family_is_not_tunnelled_to() -> None:
    _, w, g = plans(dual_stack_snapshot("ipv6", worker_addresses=(W4,)))
    assert g.vtep_vnis == () and not any(r.encap for r in g.kernel.routes)
    assert {s.reason for s in g.skipped} == {GatewaySkipReason.UNKNOWN_WORKER}
    # (the worker side cannot know; it still sends over IPv6 when it has a route, the gateway refuses it)
    assert SkipReason.NO_ENDPOINT_FOR_UNDERLAY not in {s.reason for s in w.skipped}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_the_mtu_follows_the_family_of_the_tunnel(family: str) -> None:
    _, w, g = plans(dual_stack_snapshot(family))
    overhead = 50 if family == "ipv4" else 70
    assert {link.mtu for link in w.kernel.links} == {1500 - overhead}
    assert {link.mtu for link in g.kernel.links} == {1500 - overhead}


def test_build_instance_carries_the_family() -> None:
    inst = build_instance(parsed("ipv6"), nodes=(node("gw1", GW4, GW6, lbl={"role": "gateway"}),), appliances=(),
                          alive_members=None, used_eips=())
    assert inst.tunnel.family is TunnelFamily.IPV6 and str(inst.members[0].address) == GW6


def test_the_operations_guide_example_is_valid() -> None:
    """docs/operations.md "IPv6-only underlay": the EgressGateway, agent and gateway configs as printed."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## IPv6-only underlay"):text.index("## Running the worker agent")]
    gateway_doc, agent_doc, gateway_cfg = (yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S))
    result = validate_all([gateway_doc])
    assert result.problems == () and result.gateways[0].tunnel.family is TunnelFamily.IPV6
    agent = parse_agent_config(agent_doc, source=ROOT / "agent.yaml", env={})
    assert {a.version for a in agent.underlay.addresses} == {6}
    gateway_config = parse_gateway_config(gateway_cfg, source=ROOT / "gateway.yaml", env={})
    assert 6 in {a.version for a in gateway_config.uplink.addresses}
