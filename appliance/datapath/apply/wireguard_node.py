"""WireGuard on one node, for the services: the worker side (keys, publication, plan + apply, prober, key rotation)
and the gateway side (plan + apply). The agent and gateway services call these once per reconcile pass.

Why a small shell of its own: the pure planner, the applier, the key files and the liveness prober each do one
thing; the order in which a worker uses them (load keys -> publish if changed -> plan -> apply -> retarget the prober
-> advance a rotation) is the same in the agent, the lab and the tests, so it lives here once.

Rotation (docs/wireguard.md): `begin_rotation` (an operator command, or a period) creates the next key; each pass
`advance_rotation` switches to it as soon as the prober gets answers through the new key's tunnel (the gateway the
routers chose has the new peer), and drops the old key `grace` seconds later (every member has moved its return
routes by then). Restarting in the middle resumes from the key files.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from appliance.core.events import EventLogger
from appliance.core.intent import Intent
from appliance.core.model import Node
from appliance.datapath.apply.wireguard_keyfiles import (
    NEXT_KEY_FILE,
    PREVIOUS_KEY_FILE,
    NodeAnnotator,
    local_keys,
    publish_public_key,
    read_key_file,
    switch_rotation,
)
from appliance.datapath.apply.wireguard_keyfiles import end_rotation as _end_rotation
from appliance.datapath.plan.wireguard import (
    WgSettings,
    WireguardPlan,
    plan_gateway_wireguard,
    plan_worker_wireguard,
    summary,
)
from appliance.datapath.plan.wireguard_keys import LocalKey, PublicKey, key_slot

log = EventLogger("egressgw.wireguard")


class Applier(Protocol):
    def apply(self, plan: WireguardPlan) -> list[str]: ...


class Prober(Protocol):
    def set_targets(self, probes: Sequence[tuple[str, str]]) -> None: ...

    def answering(self, device: str) -> bool: ...


class RotationStep(enum.StrEnum):
    IDLE = "idle"
    WAITING_FOR_NEW_TUNNEL = "waiting-for-new-tunnel"
    SWITCHED = "switched"
    DRAINING_OLD_KEY = "draining-old-key"
    ENDED = "ended"


@dataclass(slots=True, kw_only=True)
class WorkerWireguard:
    node: str
    state_dir: Path
    settings: WgSettings
    applier: Applier
    prober: Prober | None = None
    annotator: NodeAnnotator | None = None
    #: seconds the old key stays live after the switch (gateways move their return routes meanwhile)
    grace: float = 30.0
    clock: Callable[[], float] = time.monotonic
    published: tuple[PublicKey, ...] | None = None
    switched_at: float | None = None
    last_plan: WireguardPlan = field(default_factory=WireguardPlan)

    def current_keys(self) -> tuple[LocalKey, ...]:
        return local_keys(self.state_dir)

    def publish(self) -> None:
        """Publish the local public keys (active first) when they differ from what we last published."""
        keys = tuple(k.public_key for k in self.current_keys())
        if keys != self.published and self.annotator is not None:
            publish_public_key(self.annotator, self.node, keys)
            log.info("wireguard.key_published", node=self.node, keys=",".join(keys))
        self.published = keys

    def reconcile(self, intent: Intent, node: Node) -> WireguardPlan:
        """One pass: publish, plan, apply, retarget the prober. Returns the plan (its `route_devices` feed the
        worker's per-endpoint routes)."""
        self.publish()
        plan = plan_worker_wireguard(intent, node=node, local_keys=self.current_keys(), settings=self.settings)
        changes = self.applier.apply(plan)
        if self.prober is not None:
            self.prober.set_targets(plan.probes)
        if changes or plan.skipped:
            log.info("wireguard.pass", node=self.node, changes=len(changes), **summary(plan))
        self.last_plan = plan
        return plan

    def advance_rotation(self) -> RotationStep:
        """Move a running rotation forward if its condition holds; call after `reconcile`."""
        nxt, prev = self.state_dir / NEXT_KEY_FILE, self.state_dir / PREVIOUS_KEY_FILE
        if nxt.exists():
            slot = key_slot(read_key_file(nxt).public_key())
            devices = [i.name for i in self.last_plan.interfaces if i.slot == slot]
            if devices and self.prober is not None and all(self.prober.answering(d) for d in devices):
                switch_rotation(self.state_dir)
                self.switched_at = self.clock()
                log.info("wireguard.rotation_switched", node=self.node)
                self.publish()
                return RotationStep.SWITCHED
            return RotationStep.WAITING_FOR_NEW_TUNNEL
        if prev.exists():
            if self.switched_at is None:
                self.switched_at = self.clock()  # restarted mid-rotation: the grace starts again
            if self.clock() - self.switched_at >= self.grace:
                _end_rotation(self.state_dir)
                self.switched_at = None
                log.info("wireguard.rotation_ended", node=self.node)
                self.publish()
                return RotationStep.ENDED
            return RotationStep.DRAINING_OLD_KEY
        return RotationStep.IDLE


@dataclass(slots=True, kw_only=True)
class GatewayWireguard:
    member: str
    settings: WgSettings
    applier: Applier

    def instance_public_key(self, instance: str) -> PublicKey:
        """What this member publishes (Node annotation or Lease): the instance key's public half."""
        return read_key_file(self.settings.instance_key_dir / f"{instance}.key").public_key()

    def plan(self, intent: Intent, nodes: Sequence[Node]) -> WireguardPlan:
        """Plan only: the interface names are known before anything is applied, so a pass can apply the data path
        (EIPs on lo, nftables naming these devices) first and the WireGuard devices after (`apply`)."""
        return plan_gateway_wireguard(intent, member=self.member, nodes=nodes, settings=self.settings)

    def reconcile(self, intent: Intent, nodes: Sequence[Node]) -> WireguardPlan:
        return self.apply(self.plan(intent, nodes))

    def apply(self, plan: WireguardPlan) -> WireguardPlan:
        changes = self.applier.apply(plan)
        if changes or plan.skipped:
            log.info("wireguard.pass", member=self.member, changes=len(changes), **summary(plan))
        for skip in plan.skipped:
            log.warning("wireguard.skipped", member=self.member, subject=skip.subject, reason=str(skip.reason),
                        message=skip.message)
        return plan
