"""What the service lab tests share (`test_service_lab`, `test_service_wireguard_lab`): one gateway `egw` on the
lab's gateway nodes, a policy `web` giving pods labelled app=web the EIP, two pods on worker1 (`w1p1` selected,
`w1p2` not), and `carrier`: the member the router sends the EIP to."""

from __future__ import annotations

from typing import Any

from lab.system import System

EIP = "203.0.113.130"


def deploy_web_policy(system: System, namespace: str, gateway_spec: dict[str, Any]) -> None:
    """Gateway `egw` (IPv4 pool 203.0.113.128/25 on the nodes labelled egressgw.io/gateway=true, plus
    `gateway_spec`), namespace `namespace` with policy `web` (EIP, app=web), and the pods web1 (lab pod w1p1,
    app=web) and other (w1p2, app=other) in it."""
    system.apply(
        [
            {
                "apiVersion": "egressgw.io/v1alpha1",
                "kind": "EgressGateway",
                "metadata": {"name": "egw"},
                "spec": {
                    "ippools": {"ipv4": ["203.0.113.128/25"]},
                    "nodeSelector": {"selector": {"matchLabels": {"egressgw.io/gateway": "true"}}},
                    **gateway_spec,
                },
            },
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "egressgw.io/v1alpha1",
                "kind": "EgressPolicy",
                "metadata": {"name": "web", "namespace": namespace},
                "spec": {
                    "egressGatewayName": "egw",
                    "egressIP": {"ipv4": EIP},
                    "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}},
                },
            },
        ]
    )
    system.create_pod(namespace, "web1", "w1p1", {"app": "web"})
    system.create_pod(namespace, "other", "w1p2", {"app": "other"})


def carrier(system: System) -> str:
    """The gateway the router sends the EIP to (from its routing table)."""
    for line in system.router_routes(4).splitlines():
        if line.startswith(EIP + " ") and " via " in line:
            via = line.split(" via ")[1].split()[0]
            return next(g for g in system.gateways if str(system.nodes[g].address(4)) == via)
    return ""
