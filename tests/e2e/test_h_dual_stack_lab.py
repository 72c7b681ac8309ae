"""The whole system on lab/topologies/dual-stack.clab.yml: the router drops IPv4 between the cluster LAN (API node,
workers) and the gateway uplink LAN, so the gateways reach the API server and the workers reach the gateways over
IPv6 only, while pods still send IPv4 and IPv6.

The API node serves on both families (`@kube-apiserver --address <IPv6> --address <IPv4>`, the IPv6 one first, so
the services' kubeconfigs name it); the topology's scenario file (dual-stack.scenario.yml) sets
`spec.tunnel.family: ipv6`. Checks: the gateways cannot reach the API over IPv4 but can over IPv6; a selected pod
leaves with the scenario's default EIPs over IPv4 and IPv6; an unselected pod leaves with its node's addresses.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import yaml

from lab.scenarios import policy_manifest
from lab.system import TOPOLOGIES, System, api_addresses
from tests.e2e.conftest import Scenario, lab_with_gateway, per_test_objects

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

TOPOLOGY = TOPOLOGIES / "dual-stack.clab.yml"
CONVERGE_S = 60.0
SELECTED, UNSELECTED = "w1p1", "w1p2"


@pytest.fixture(scope="module")
def dual() -> Iterator[System]:
    yield from lab_with_gateway(TOPOLOGY, "egt-e2v-")


@pytest.fixture
def sc(dual: System, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    yield from per_test_objects(dual, request)


def _connects(system: System, node: str, address: str, port: int) -> bool:
    code = (f"import socket; socket.create_connection(({address!r}, {port}), timeout=3).close()")
    return system.lab.exec(node, [sys.executable, "-c", code], check=False, timeout=20).returncode == 0


def test_the_gateways_reach_the_api_server_over_ipv6_only(dual: System) -> None:
    api = next(n for n, v in dual.nodes.items() if v.role == "kube-api")
    addresses = api_addresses(dual.lab, api)
    assert [":" in a for a in addresses] == [True, False], addresses  # both families, IPv6 first
    server = yaml.safe_load(dual.role_kubeconfig("gateway").read_text())["clusters"][0]["cluster"]["server"]
    assert server.startswith(f"https://[{addresses[0]}]:"), server
    port = int(server.rsplit(":", 1)[1])
    gw = dual.gateways[0]
    assert not _connects(dual, gw, addresses[1], port), "the router should drop IPv4 from the gateways to the API"
    assert _connects(dual, gw, addresses[0], port)
    assert _connects(dual, dual.workers[0], addresses[1], port)  # the API LAN itself serves IPv4 too


def test_selected_pod_leaves_with_the_eip_over_both_families(dual: System, sc: Scenario) -> None:
    spec = dual.scenario
    assert spec.tunnel_family == "ipv6"
    sc.pod("web", SELECTED, {"app": "web"})
    sc.pod("other", UNSELECTED, {"app": "other"})
    sc.apply(policy_manifest(sc.namespace, "p", match_labels={"app": "web"}))
    worker = dual.nodes[dual.nodes[UNSELECTED].worker]
    underlay = dual.underlay(worker.name)
    for version in (4, 6):
        want = spec.default_eip(version)
        seen = dual.wait_source(SELECTED, want, version=version, timeout=CONVERGE_S)
        assert seen == want, f"IPv{version}: the server saw {seen or 'nothing'} from {SELECTED}, expected {want}"
        node_ip = str(worker.address(version, underlay))
        seen = dual.wait_source(UNSELECTED, node_ip, version=version, timeout=CONVERGE_S)
        assert seen == node_ip, f"IPv{version}: the server saw {seen or 'nothing'} from {UNSELECTED}, want {node_ip}"
    assert dual.seen_source(SELECTED, proto="tcp") == spec.default_eip(4)
