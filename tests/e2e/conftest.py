"""End-to-end fixtures: one whole-system lab shared by the module's scenarios, and per-test cluster objects.

The lab (real kube-apiserver + etcd, BIRD 2 or FRR router, gateways running `egressgw gateway` with ExaBGP and BFD,
workers running `egressgw agent`, pods, the external server) is expensive to bring up (~30-60 s), so scenarios share
it; each test creates its own namespace, pods and policies through the API and removes them afterwards, so tests
do not depend on each other's leftovers.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.scenario_spec import default_scenario_path, load_scenario
from lab.scenarios import scenario_gateway
from lab.system import DEFAULT_TOPOLOGY, System, topology_nodes
from lab.topology import load as load_topology

_counter = itertools.count()

#: what the scenarios of the shared lab (the default topology and its scenario file) expect: the default EIPs and the
#: external server's addresses, read from those files (a lab fixture's `system.scenario` / `system.external_address`
#: say the same)
DEFAULT_SCENARIO = load_scenario(default_scenario_path(DEFAULT_TOPOLOGY))
DEFAULT_EIP_V4, DEFAULT_EIP_V6 = DEFAULT_SCENARIO.default_eip_v4, DEFAULT_SCENARIO.default_eip_v6
GATEWAY = DEFAULT_SCENARIO.gateway
_EXTERNAL = next(n for n in topology_nodes(load_topology(DEFAULT_TOPOLOGY)).values() if n.role == "external")
EXTERNAL_V4, EXTERNAL_V6 = str(_EXTERNAL.address(4)), str(_EXTERNAL.address(6))


class Scenario:
    """Objects one test created; removed at teardown (pods first, so their IPs are free for the next test)."""

    def __init__(self, system: System, name: str) -> None:
        self.system = system
        self.namespace = f"{name[:40].replace('_', '-').lower()}-{next(_counter)}"
        self.pods: list[tuple[str, str]] = []
        self.objects: list[tuple[str, str, str | None]] = []
        self.namespaces = [self.namespace]
        system.ensure_namespace(self.namespace)

    def pod(self, name: str, lab_pod: str, labels: dict[str, str] | None = None, namespace: str | None = None) -> None:
        ns = namespace or self.namespace
        self.system.create_pod(ns, name, lab_pod, labels)
        self.pods.append((ns, name))

    def apply(self, *objects: dict[str, Any]) -> None:
        self.system.apply(objects)
        for o in objects:
            key = (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
            if o["kind"] != "Namespace" and key not in self.objects:
                self.objects.append(key)

    def cleanup(self) -> None:
        for ns, name in self.pods:
            with contextlib.suppress(Exception):
                self.system.delete_pod(ns, name)
        for kind, name, obj_ns in reversed(self.objects):
            with contextlib.suppress(Exception):
                self.system.delete(kind, name, obj_ns)


def lab_with_gateway(topology: Path, prefix: str) -> Iterator[System]:
    """A whole-system lab of `topology` with its scenario's EgressGateway applied; torn down after (fixture body)."""
    s = System.up(topology, prefix=prefix)
    try:
        s.apply([scenario_gateway(s.scenario)])
        yield s
    finally:
        s.down()


def per_test_objects(system: System, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """One test's own namespace, pods and policies in `system`, removed afterwards (fixture body)."""
    sc = Scenario(system, request.node.name)
    try:
        yield sc
    finally:
        sc.cleanup()


@pytest.fixture(scope="package")
def system() -> Iterator[System]:
    yield from lab_with_gateway(DEFAULT_TOPOLOGY, "egt-e2-")


@pytest.fixture
def scenario(system: System, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    yield from per_test_objects(system, request)
