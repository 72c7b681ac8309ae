"""Building blocks shared by the demo, the end-to-end tests and the lab benchmarks: manifests and measured steps.

Every step returns data (what the external server saw, a probe report, the primary member); callers render it
(the demo as tables) or assert on it (tests) or aggregate it (benchmarks). The gateway, its pools and default EIPs
come from the lab's scenario (`system.scenario`, lab/scenario_spec.py), the server's addresses from the topology.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.core.waiting import wait_until
from lab.probe import BackgroundProbe, ProbeReport
from lab.scenario_spec import ScenarioSpec
from lab.system import System


def scenario_gateway(spec: ScenarioSpec, *, failback_hold_s: float | None = None, tunnel: str | None = None,
                     **kwargs: Any) -> dict[str, Any]:
    """The scenario's EgressGateway (name, pools, default EIPs, tunnel, hold-down), with `gateway_manifest`'s other
    arguments (`cluster_default`, `node_selector`, `no_gateway_action`) passed on."""
    return gateway_manifest(spec.gateway, pools_v4=spec.pools_v4, pools_v6=spec.pools_v6,
                            default_v4=spec.default_eip_v4 or None, default_v6=spec.default_eip_v6 or None,
                            failback_hold_s=spec.failback_hold_s if failback_hold_s is None else failback_hold_s,
                            tunnel=tunnel or spec.tunnel_type, tunnel_family=spec.tunnel_family, **kwargs)


def gateway_manifest(name: str, *, pools_v4: tuple[str, ...], pools_v6: tuple[str, ...] = (),
                     default_v4: str | None = None, default_v6: str | None = None,
                     cluster_default: bool = True, failback_hold_s: float = 3.0,
                     node_selector: dict[str, str] | None = None, tunnel: str = "vxlan", tunnel_family: str = "",
                     no_gateway_action: str = "FailClosed") -> dict[str, Any]:
    ippools: dict[str, Any] = {}
    if pools_v4:
        ippools["ipv4"] = list(pools_v4)
        if default_v4:
            ippools["ipv4DefaultEIP"] = default_v4
    if pools_v6:
        ippools["ipv6"] = list(pools_v6)
        if default_v6:
            ippools["ipv6DefaultEIP"] = default_v6
    return {
        "apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": name},
        "spec": {
            "ippools": ippools,
            "nodeSelector": {"selector": {"matchLabels": node_selector or {"egressgw.io/gateway": "true"}}},
            "clusterDefault": cluster_default,
            "tunnel": {"type": tunnel, **({"family": tunnel_family} if tunnel_family else {})},
            "failover": {"noGatewayAction": no_gateway_action, "failbackHoldSeconds": failback_hold_s},
        },
    }


def policy_manifest(namespace: str, name: str, *, match_labels: dict[str, str] | None = None,
                    gateway: str = "", dest: tuple[str, ...] = (), egress_ip: dict[str, Any] | None = None,
                    priority: int | None = None, pod_subnet: tuple[str, ...] = ()) -> dict[str, Any]:
    applied: dict[str, Any] = {}
    if pod_subnet:
        applied["podSubnet"] = list(pod_subnet)
    else:
        applied["podSelector"] = {"matchLabels": match_labels or {}}
    spec: dict[str, Any] = {"appliedTo": applied}
    if gateway:
        spec["egressGatewayName"] = gateway
    if dest:
        spec["destSubnet"] = list(dest)
    if egress_ip:
        spec["egressIP"] = egress_ip
    if priority is not None:
        spec["priority"] = priority
    return {"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@dataclass(frozen=True, slots=True, kw_only=True)
class PodPlacement:
    namespace: str
    name: str
    lab_pod: str
    labels: tuple[tuple[str, str], ...]
    selected: bool


def demo_pods(system: System) -> list[PodPlacement]:
    """Two namespaces: `shop` (app=web pods selected by the policy) and `blog` (not selected)."""
    out = []
    for i, lab_pod in enumerate(system.pods):
        selected = i % 2 == 0
        ns, app = ("shop", "web") if selected else ("blog", "api")
        out.append(PodPlacement(namespace=ns, name=f"{app}-{i // 2}", lab_pod=lab_pod,
                                labels=(("app", app),), selected=selected))
    return out


def policy_eips(system: System, namespace: str, name: str) -> tuple[str, str]:
    status = system.get("EgressPolicy", name, namespace).get("status") or {}
    eip = status.get("eip") or {}
    return (eip.get("ipv4") or "", eip.get("ipv6") or "")


def primary_member(system: System, eip: str) -> str:
    """The member the gateway status names primary for `eip` ("" when unknown)."""
    status = system.get("EgressGateway", system.scenario.gateway).get("status") or {}
    for entry in status.get("eips") or []:
        if entry.get("ip") == eip:
            return str(entry.get("primary") or "")
    return ""


def router_next_hop(system: System, eip: str) -> str:
    """The gateway member the router forwards `eip` to right now, from the router's kernel table."""
    version = 6 if ":" in eip else 4
    res = system.lab.exec(system.router, ["ip", f"-{version}", "route", "get", eip], check=False)
    text = str(res.stdout)
    for gw in system.gateways:
        addrs = {str(ifc.ip) for _, ifc in system.nodes[gw].addresses}
        if any(f"via {a} " in text for a in addrs):
            return gw
    return ""


def stable_primary(system: System, eip: str, *, timeout: float = 60.0) -> str:
    """The member carrying `eip` once the router and the gateway status agree on it. Right after an EIP appears
    the first member to announce it carries it for a moment, until the ranked primary announces too."""
    def agreed() -> str:
        carrier = router_next_hop(system, eip)
        return carrier if carrier and carrier == primary_member(system, eip) else ""

    found: str = wait_until(agreed, timeout=timeout, interval=0.2,
                            what=f"the router and the status to agree on {eip}'s primary")
    return found


def measure_failure(system: System, lab_pod: str, act: Callable[[], None], *, after: float = 3.0,
                    version: int = 4, tcp: bool = False) -> ProbeReport:
    """Run the 10 ms probe from `lab_pod`, perform `act` (a failure or a drain), keep probing `after` seconds."""
    probe = BackgroundProbe(system.lab, lab_pod, server=system.external_address(version), port=system.ext_port,
                            tcp=tcp)
    probe.start()
    time.sleep(1.0)  # a second of normal traffic before the event
    try:
        act()
        time.sleep(after)
    finally:
        report = probe.stop()
    return report
