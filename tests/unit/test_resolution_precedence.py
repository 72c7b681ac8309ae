"""Overlapping policies on one pod IP follow the documented order: priority, specificity, kind, name, namespace."""

from __future__ import annotations

import pytest

from appliance.core.model import EgressPolicy
from appliance.core.snapshot import Snapshot
from appliance.policy.precedence import disjoint
from appliance.policy.resolution import resolve
from tests.unit.resolution_builders import gateway, gw_node, ip, net, ns, pod, policy


def winners(*policies: EgressPolicy, dest: str) -> list[str]:
    s = Snapshot(
        gateways=(gateway("gw", cluster_default=True),),
        nodes=(gw_node("gw1", "198.51.100.11"),),
        namespaces=(ns("a"), ns("b")),
        pods=(pod("a", "web-1", "100.64.1.10", lbl={"app": "web"}),),
        policies=policies,
    )
    return [str(st.policy) for st in resolve(s).steerings if any(ip(dest) in n for n in st.destinations)]


@pytest.mark.parametrize(
    ("policies", "dest", "winner"),
    [
        # 1. priority beats specificity
        ((policy("x", "a", app="web", priority=1), policy("y", "a", app="web", dest=("198.51.100.0/24",))),
         "198.51.100.7", "EgressPolicy/a/x"),
        # 2. equal priority: the longer prefix wins, where it applies
        ((policy("x", "a", app="web"), policy("y", "a", app="web", dest=("198.51.100.0/24",))),
         "198.51.100.7", "EgressPolicy/a/y"),
        ((policy("x", "a", app="web"), policy("y", "a", app="web", dest=("198.51.100.0/24",))),
         "8.8.8.8", "EgressPolicy/a/x"),
        # specificity is per entry: y's /16 loses to x's /24 inside the /24 only
        ((policy("x", "a", app="web", dest=("198.51.100.0/24", "10.0.0.0/8")),
          policy("y", "a", app="web", dest=("198.51.0.0/16",))), "198.51.7.1", "EgressPolicy/a/y"),
        ((policy("x", "a", app="web", dest=("198.51.100.0/24", "10.0.0.0/8")),
          policy("y", "a", app="web", dest=("198.51.0.0/16",))), "198.51.100.1", "EgressPolicy/a/x"),
        # 3. same priority and prefix: namespaced before cluster, whatever the names
        ((policy("zzz", "a", app="web"), policy("aaa", cluster=True, app="web")), "8.8.8.8", "EgressPolicy/a/zzz"),
        # 4. then name
        ((policy("b", "a", app="web"), policy("a", "a", app="web")), "8.8.8.8", "EgressPolicy/a/a"),
        ((policy("b", cluster=True, app="web"), policy("a", cluster=True, app="web")), "8.8.8.8",
         "EgressClusterPolicy/a"),
    ],
)
def test_documented_precedence(policies: tuple[EgressPolicy, ...], dest: str, winner: str) -> None:
    assert winners(*policies, dest=dest) == [winner]
    assert winners(*reversed(policies), dest=dest) == [winner]


def test_disjoint_carves_lower_precedence_destinations() -> None:
    everything = policy("x", "a", app="web")
    partner = policy("y", "a", app="web", dest=("198.51.100.0/24",))
    [(first, nets_first), (second, nets_second)] = disjoint([everything, partner], 4)
    assert (first, nets_first) == (1, (net("198.51.100.0/24"),))
    assert second == 0 and len(nets_second) == 24  # 0.0.0.0/0 minus a /24 = 24 CIDRs
    assert not any(n.overlaps(net("198.51.100.0/24")) for n in nets_second)
    assert sum(n.num_addresses for n in nets_second) == 2**32 - 256
