"""WireGuard in the services: run the WireGuard part of a pass, publish keys, and hand the devices to the data path.

Why lazy: most clusters use VXLAN only, and a node without the `wg` tool (or the kernel module / wireguard-go) must
run those unchanged. So nothing WireGuard is created until an intent contains a WireGuard instance this node takes
part in; from then on every pass runs it (a pass without WireGuard instances removes the interfaces again).

- Worker (`WorkerWireguardHook`): keys in `<state_dir>/wireguard` (created on first use, 0600), public keys published
  on the own Node annotation (`egressgw.io/wireguard-public-key`; needs RBAC `patch` on nodes), plan + apply
  (`appliance.datapath.apply.wireguard_node.WorkerWireguard`), the liveness prober in a thread (fast re-handshake after
  a failover), key rotation advanced after each pass. Returns instance -> device for `plan_worker`.
- Gateway (`GatewayWireguardHook`): the instance key pair from `wireguard.instance_key_dir/<instance>.key` (shared by
  the members, installed by the operator), plan + apply (`GatewayWireguard`), the instance public key published on
  the own Node annotation (cluster-node members) or the member Lease (appliances). Returns this member's WireGuard
  devices for `plan_gateway`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance.core.intent import Intent
from appliance.core.model import Node, TunnelType
from appliance.core.snapshot import Snapshot
from appliance.runtime.underlay import Underlay


def uses_wireguard(intent: Intent, member: str | None = None) -> bool:
    """Any WireGuard instance (that `member` belongs to, when given)."""
    return any(
        i.tunnel.type is TunnelType.WIREGUARD and (member is None or any(m.name == member for m in i.members))
        for i in intent.instances
    )


class KubeNodeAnnotator:
    """`NodeAnnotator` over the raw API: a JSON merge patch of the Node's annotations."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def patch_node_annotations(self, node: str, annotations: dict[str, str | None]) -> None:
        self.api.merge_patch(f"/api/v1/nodes/{node}", {"metadata": {"annotations": annotations}})


class WorkerWireguardHook:
    def __init__(
        self, *, node: str, state_dir: Path, underlay: Underlay, prefix: str | None, annotator: Any | None
    ) -> None:
        self.node, self.state_dir, self.underlay = node, state_dir, underlay
        self.prefix, self.annotator = prefix, annotator
        self.worker: Any = None
        self._prober: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        from appliance.datapath.apply.wireguard import WireguardApplier
        from appliance.datapath.apply.wireguard_liveness import LivenessProber
        from appliance.datapath.apply.wireguard_node import WorkerWireguard
        from appliance.datapath.plan.wireguard import WgSettings

        settings = WgSettings(underlay_mtu=self.underlay.mtu)
        if self.prefix:
            settings = replace(settings, interface_prefix=self.prefix)
        applier = WireguardApplier(prefix=settings.interface_prefix)  # raises when WireGuard is unavailable here
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._prober = LivenessProber(applier.reset_peer)
        self.worker = WorkerWireguard(
            node=self.node,
            state_dir=self.state_dir,
            settings=settings,
            applier=applier,
            prober=self._prober,
            annotator=self.annotator,
        )
        self._thread = threading.Thread(target=self._prober.run, args=(self._stop,), name="wg-prober", daemon=True)
        self._thread.start()

    def devices(self, snapshot: Snapshot, intent: Intent) -> Mapping[str, str]:
        if self.worker is None:
            if not uses_wireguard(intent):
                return {}
            self._start()
        node = next((n for n in snapshot.nodes if n.name == self.node), None)
        if node is None:
            node = Node(name=self.node, addresses=self.underlay.addresses)
        plan = self.worker.reconcile(intent, node)
        self.worker.advance_rotation()
        return dict(plan.route_devices)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._prober is not None:
            self._prober.close()


class GatewayWireguardHook:
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
        self.gateway: Any = None
        self.published: str | None = None
        self.links: tuple[str, ...] = ()

    def _start(self) -> None:
        from appliance.datapath.apply.wireguard import WireguardApplier
        from appliance.datapath.apply.wireguard_node import GatewayWireguard
        from appliance.datapath.plan.wireguard import WgSettings

        settings = WgSettings(underlay_mtu=self.uplink.mtu)
        if self.prefix:
            settings = replace(settings, interface_prefix=self.prefix)
        if self.instance_key_dir is not None:
            settings = replace(settings, instance_key_dir=self.instance_key_dir)
        self.gateway = GatewayWireguard(
            member=self.member, settings=settings, applier=WireguardApplier(prefix=settings.interface_prefix)
        )

    def devices(self, snapshot: Snapshot, intent: Intent) -> tuple[str, ...]:
        if self.gateway is None:
            if not uses_wireguard(intent, self.member):
                return ()
            self._start()
        mine = sorted(
            i.name
            for i in intent.instances
            if i.tunnel.type is TunnelType.WIREGUARD and any(m.name == self.member for m in i.members)
        )
        if mine and self.publish is not None:
            key = self.gateway.instance_public_key(mine[0])  # one key per member: its first WireGuard instance's
            if key != self.published:
                self.publish(key)
                self.published = key
        plan = self.gateway.reconcile(intent, snapshot.nodes)
        self.links = tuple(i.name for i in plan.interfaces)
        return self.links
