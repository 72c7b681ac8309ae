"""WireGuard stays out of VXLAN-only nodes: nothing is created until an intent has a WireGuard instance."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

from appliance.agent.wireguard import WorkerWireguardHook
from appliance.core.intent import Intent
from appliance.core.model import TunnelSpec, TunnelType
from appliance.core.snapshot import Snapshot
from appliance.gateway.wireguard import GatewayWireguardHook
from appliance.policy.resolution import resolve
from appliance.runtime.underlay import Underlay
from appliance.runtime.wireguard_common import uses_wireguard
from tests.unit.resolution_builders import gateway, gw_node, node, ns, pod, policy

UNDERLAY = Underlay(interface="eth1", index=2, addresses=(ipaddress.ip_address("100.127.0.11"),), mtu=1500)


def world(tunnel: TunnelType) -> tuple[Snapshot, Intent]:
    gw = replace(gateway("egw"), tunnel=TunnelSpec(type=tunnel))
    snap = Snapshot(
        gateways=(gw,),
        policies=(policy("p1", gateway="egw", app="web", eip4="203.0.113.130"),),
        namespaces=(ns("default"),),
        nodes=(gw_node("gw1", "198.51.100.11"), node("w1", "100.127.0.11")),
        pods=(pod("default", "web-1", "100.64.1.10", lbl={"app": "web"}),),
    )
    return snap, resolve(snap)


def test_uses_wireguard_by_instance_and_member() -> None:
    _, vx = world(TunnelType.VXLAN)
    _, wg = world(TunnelType.WIREGUARD)
    assert not uses_wireguard(vx)
    assert uses_wireguard(wg) and uses_wireguard(wg, "gw1") and not uses_wireguard(wg, "gw9")


def test_vxlan_only_intent_starts_nothing(tmp_path: Path) -> None:
    snap, intent = world(TunnelType.VXLAN)
    worker = WorkerWireguardHook(node="w1", state_dir=tmp_path / "wg", underlay=UNDERLAY, prefix=None, annotator=None)
    assert worker.devices(snap, intent) == {}
    assert worker.worker is None and not (tmp_path / "wg").exists()  # no key generated, no applier built
    worker.stop()
    published: list[str] = []
    gw = GatewayWireguardHook(
        member="gw1", uplink=UNDERLAY, prefix=None, instance_key_dir=None, publish=published.append
    )
    assert gw.devices(snap, intent) == () and gw.gateway is None and published == []
