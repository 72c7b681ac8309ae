"""What the agent's and the gateway's WireGuard wiring share: whether an intent uses WireGuard at all, the settings
built from the service config, and publishing keys on the own Node.

Why lazy WireGuard: most clusters use VXLAN only, and a node without the `wg` tool (or the kernel module /
wireguard-go) must run those unchanged. So nothing WireGuard is created until an intent contains a WireGuard instance
this node takes part in (`uses_wireguard`); the worker side is `appliance.agent.wireguard`, the gateway side
`appliance.gateway.wireguard`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance.core.intent import Intent
from appliance.core.model import TunnelType
from appliance.datapath.plan.wireguard import WgSettings


def uses_wireguard(intent: Intent, member: str | None = None) -> bool:
    """Any WireGuard instance (that `member` belongs to, when given)."""
    return any(
        i.tunnel.type is TunnelType.WIREGUARD and (member is None or any(m.name == member for m in i.members))
        for i in intent.instances
    )


def wireguard_settings(*, mtu: int, prefix: str | None, instance_key_dir: Path | None = None) -> WgSettings:
    """The planner's settings from the underlay MTU and the config's optional prefix and instance key directory."""
    settings = WgSettings(underlay_mtu=mtu)
    if prefix:
        settings = replace(settings, interface_prefix=prefix)
    if instance_key_dir is not None:
        settings = replace(settings, instance_key_dir=instance_key_dir)
    return settings


class KubeNodeAnnotator:
    """`NodeAnnotator` over the raw API: a JSON merge patch of the Node's annotations."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def patch_node_annotations(self, node: str, annotations: dict[str, str | None]) -> None:
        self.api.merge_patch(f"/api/v1/nodes/{node}", {"metadata": {"annotations": annotations}})
