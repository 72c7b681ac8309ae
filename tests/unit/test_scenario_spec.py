"""The lab's scenario files (lab/scenario_spec.py), the topology-driven harness helpers and `@kube-apiserver`'s
addresses: pure parts, no lab."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.bench.failover import router_kind_of
from lab.plugins import api_addresses, bind_address
from lab.scenario_spec import ScenarioError, default_scenario_path, load_scenario, parse_scenario
from lab.scenarios import scenario_gateway
from lab.system import DEFAULT_TOPOLOGY, TOPOLOGIES, topology_nodes
from lab.topology import load

GOOD = {
    "gateway": "egw-x",
    "tunnel": {"type": "vxlan", "family": "IPv6"},
    "pools": {"ipv4": ["203.0.113.70-203.0.113.79"], "ipv6": ["2001:db8:e5::/64"]},
    "default_eip": {"ipv4": "203.0.113.70", "ipv6": "2001:db8:e5::70"},
    "failback_hold_s": 2,
}


def test_every_shipped_topology_has_a_valid_scenario_beside_it() -> None:
    topologies = sorted(TOPOLOGIES.glob("*.clab.yml"))
    assert topologies
    for topo in topologies:
        spec = load_scenario(default_scenario_path(topo))
        assert spec.gateway and (spec.pools_v4 or spec.pools_v6), topo
    assert default_scenario_path(DEFAULT_TOPOLOGY) == TOPOLOGIES / "default.scenario.yml"
    assert load_scenario(TOPOLOGIES / "dual-stack.scenario.yml").tunnel_family == "ipv6"
    assert load_scenario(TOPOLOGIES / "default.scenario.yml").tunnel_family == ""


def test_a_scenario_becomes_the_gateway_manifest() -> None:
    spec = parse_scenario(GOOD)
    assert (spec.default_eip(4), spec.default_eip(6), spec.failback_hold_s) == ("203.0.113.70", "2001:db8:e5::70", 2.0)
    m = scenario_gateway(spec)
    assert m["metadata"]["name"] == "egw-x"
    assert m["spec"]["tunnel"] == {"type": "vxlan", "family": "ipv6"}
    assert m["spec"]["ippools"] == {"ipv4": ["203.0.113.70-203.0.113.79"], "ipv4DefaultEIP": "203.0.113.70",
                                    "ipv6": ["2001:db8:e5::/64"], "ipv6DefaultEIP": "2001:db8:e5::70"}
    assert m["spec"]["failover"]["failbackHoldSeconds"] == 2.0
    assert scenario_gateway(spec, failback_hold_s=1.0)["spec"]["failover"]["failbackHoldSeconds"] == 1.0
    unset = scenario_gateway(parse_scenario({**GOOD, "tunnel": {"type": "vxlan"}}))
    assert unset["spec"]["tunnel"] == {"type": "vxlan"}


@pytest.mark.parametrize(("change", "key"), [
    ({"gateway": "Not_A_Name"}, "gateway:"),
    ({"tunnel": {"type": "gre"}}, "tunnel.type:"),
    ({"tunnel": {"family": "ipv5"}}, "tunnel.family:"),
    ({"pools": {"ipv4": ["2001:db8::/64"]}}, "pools.ipv4[0]:"),
    ({"pools": {"ipv4": ["203.0.113.9-203.0.113.1"]}}, "pools.ipv4[0]:"),
    ({"pools": {"ipv6": "2001:db8::/64"}}, "pools.ipv6:"),
    ({"pools": {"ipv4": ["203.0.113.0/24"]}, "default_eip": {"ipv6": "2001:db8::1"}}, "default_eip.ipv6:"),
    ({"default_eip": {"ipv4": "2001:db8:e5::70"}}, "default_eip.ipv4:"),
    ({"failback_hold_s": -1}, "failback_hold_s:"),
    ({"extra": 1}, "unknown key(s) extra"),
])
def test_bad_scenarios_name_the_key(change: dict[str, object], key: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario({**GOOD, **change}, source="x.scenario.yml")
    assert any(p.startswith(key) for p in err.value.problems), err.value.problems
    assert "x.scenario.yml" in str(err.value)


def test_a_missing_pool_section_is_reported() -> None:
    with pytest.raises(ScenarioError, match="pools: required"):
        parse_scenario({"gateway": "egw"})


def test_scenario_files_next_to_any_topology_name(tmp_path: Path) -> None:
    assert default_scenario_path(tmp_path / "site.clab.yml") == tmp_path / "site.scenario.yml"
    assert default_scenario_path(tmp_path / "site.yaml") == tmp_path / "site.scenario.yml"
    (tmp_path / "s.scenario.yml").write_text("gateway: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(tmp_path / "s.scenario.yml")


def test_the_api_server_takes_several_addresses_of_both_families() -> None:
    assert bind_address(api_addresses(["100.127.0.10"])) == "100.127.0.10"
    assert bind_address(api_addresses(["2001:db8:127::10", "100.127.0.10"])) == "::"
    assert bind_address(api_addresses(["100.127.0.10", "100.127.1.10"])) == "0.0.0.0"
    with pytest.raises(ValueError, match="--address 'api'"):
        api_addresses(["api"])
    with pytest.raises(ValueError, match="required"):
        api_addresses([])


def test_the_shipped_topologies_carry_the_harness_labels() -> None:
    for topo in sorted(TOPOLOGIES.glob("*.clab.yml")):
        nodes = topology_nodes(load(topo))
        by_role: dict[str, list[str]] = {}
        for n in nodes.values():
            by_role.setdefault(n.role, []).append(n.name)
        for name in by_role["gateway"]:
            assert nodes[name].asn() and nodes[name].interface("egressgw.uplink"), (topo, name)
        router = nodes[by_role["router"][0]]
        assert router.asn() and router.label("egressgw.router-kind") in ("bird", "frr"), topo
        assert router_kind_of(topo) == router.label("egressgw.router-kind")
    assert router_kind_of(TOPOLOGIES / "default-frr.clab.yml") == "frr"
