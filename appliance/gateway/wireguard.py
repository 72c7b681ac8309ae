"""WireGuard on a gateway member: run the WireGuard part of a pass, publish the instance key, hand the devices over.

Nothing is created until an intent has a WireGuard instance this member belongs to
(`appliance.runtime.wireguard_common.uses_wireguard`). The instance key pair comes from
`wireguard.instance_key_dir/<instance>.key` (shared by the members, installed by the operator); plan + apply is
`appliance.datapath.apply.wireguard_node.GatewayWireguard`; the instance public key is published through the
injected `publish` (the own Node annotation on cluster-node members, the member Lease on appliances).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.core.intent import Intent
from appliance.core.model import TunnelType
from appliance.core.snapshot import Snapshot
from appliance.datapath.apply.wireguard import WireguardApplier
from appliance.datapath.apply.wireguard_node import GatewayWireguard
from appliance.runtime.skips import SkipNote, wireguard_skips
from appliance.runtime.underlay import Underlay
from appliance.runtime.wireguard_common import uses_wireguard, wireguard_settings


class GatewayWireguardHook:
    """The member's WireGuard, started lazily; `devices` runs once per pass and returns this member's devices."""

    def __init__(
        self,
        *,
        member: str,
        uplink: Underlay,
        prefix: str | None,
        instance_key_dir: Path | None,
        publish: Callable[[str], None] | None,
    ) -> None:
        self.member, self.uplink, self.prefix = member, uplink, prefix
        self.instance_key_dir = instance_key_dir
        self.publish = publish
        self.gateway: GatewayWireguard | None = None
        self.published: str | None = None
        self.links: tuple[str, ...] = ()
        #: the last WireGuard plan's skips (empty while WireGuard is not used)
        self.skipped: frozenset[SkipNote] = frozenset()

    def _start(self) -> GatewayWireguard:
        settings = wireguard_settings(
            mtu=self.uplink.mtu, prefix=self.prefix, instance_key_dir=self.instance_key_dir
        )
        self.gateway = GatewayWireguard(
            member=self.member, settings=settings, applier=WireguardApplier(prefix=settings.interface_prefix)
        )
        return self.gateway

    def devices(self, snapshot: Snapshot, intent: Intent) -> tuple[str, ...]:
        gateway = self.gateway
        if gateway is None:
            if not uses_wireguard(intent, self.member):
                return ()
            gateway = self._start()
        mine = sorted(
            i.name
            for i in intent.instances
            if i.tunnel.type is TunnelType.WIREGUARD and any(m.name == self.member for m in i.members)
        )
        if mine and self.publish is not None:
            key = gateway.instance_public_key(mine[0])  # one key per member: its first WireGuard instance's
            if key != self.published:
                self.publish(key)
                self.published = key
        plan = gateway.reconcile(intent, snapshot.nodes)
        self.links = tuple(i.name for i in plan.interfaces)
        self.skipped = wireguard_skips(plan.skipped)
        return self.links
