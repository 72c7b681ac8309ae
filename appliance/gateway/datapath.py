"""The gateway member's data path: `plan_gateway` + apply behind `appliance.gateway.seams.GatewayDataPath`.

Why a separate module: the service speaks passes, health checks and the EIPs in place; the data path speaks plans
and kernel steps (`appliance.datapath.plan.gateway`, `appliance.datapath.apply`). This is the one place on the
gateway side that knows both.

Which EIPs are "in place" (the only ones the member may announce): after a pass without failures, every EIP of the
plan; after a pass with failures, only EIPs that were in place before and are still held on the host (a new EIP is
announced only after a pass that installed everything, its SNAT entries included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from appliance.core.intent import Intent
from appliance.core.model import IPAddress
from appliance.core.snapshot import Snapshot
from appliance.datapath.apply import health_checks
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.incremental import IncrementalGateway
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway, workers_of
from appliance.gateway.seams import DataPathResult, GatewayDataPath
from appliance.gateway.wireguard import GatewayWireguardHook
from appliance.runtime.config import GatewayConfig
from appliance.runtime.datapath_common import require_binaries, table_present
from appliance.runtime.reconciling import PassOutcome
from appliance.runtime.skips import gateway_skips
from appliance.runtime.underlay import Underlay
from bgp.health import Check


class RealGatewayDataPath:
    """plan_gateway + apply, with the pod-churn fast path (`IncrementalGateway`) for event-driven passes."""

    def __init__(
        self, cfg: GatewayConfig, uplink: Underlay, *, publish_key: Callable[[str], None] | None = None
    ) -> None:
        self.member = cfg.node_name
        self.settings = GatewaySettings(uplink_mtu=uplink.mtu, tunnel_mtu=cfg.tunnel.mtu)
        self.applier = DataPathApplier()
        self.incremental = IncrementalGateway(self.applier, member=self.member, settings=self.settings)
        self.in_place: frozenset[IPAddress] = frozenset()
        self.tunnel_links: tuple[str, ...] = ()
        self.planned = False
        self.wireguard = GatewayWireguardHook(
            member=self.member,
            uplink=uplink,
            prefix=cfg.wireguard.interface_prefix,
            instance_key_dir=cfg.wireguard.instance_key_dir,
            publish=publish_key,
        )

    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> DataPathResult:
        devices = self.wireguard.devices(snapshot, intent)
        workers = workers_of(snapshot)
        result = self.incremental.converge(intent, workers=workers, full=full, wireguard_devices=devices)
        plan = self.incremental.plan  # None after a failed apply
        if plan is None:
            plan = plan_gateway(
                intent, member=self.member, workers=workers, settings=self.settings, wireguard_devices=devices
            )
        planned = frozenset(plan.eips)
        if result.failures:
            held = {a.ip for a in self.applier.netlink.observe().addresses}
            self.in_place = frozenset(e for e in self.in_place & planned if e in held)
        else:
            self.in_place = planned
        self.tunnel_links = plan.tunnel_links + plan.wireguard_links
        self.planned = True
        skipped = gateway_skips(plan.skipped) | self.wireguard.skipped
        return DataPathResult(
            outcome=PassOutcome(changes=result.changes, failures=result.failures, skipped=skipped),
            eips_in_place=self.in_place,
        )

    def checks(self) -> Mapping[Check, bool]:
        if not self.planned:
            return {}  # nothing planned yet: the reconcile-loop check already keeps the member unhealthy
        return {
            Check.TUNNEL_DEVICE: health_checks.links_present(self.tunnel_links),
            Check.NFT_TABLE: table_present(),
        }

    def remove_all(self) -> tuple[str, ...]:
        result = self.applier.remove_all()
        self.in_place = frozenset()
        return result.changes + tuple(f"FAILED {f}" for f in result.failures)

    def counters(self) -> Mapping[str, tuple[int, int]]:
        return self.applier.counters()


def make_gateway_datapath(
    cfg: GatewayConfig, uplink: Underlay, *, publish_key: Callable[[str], None] | None = None
) -> GatewayDataPath:
    """`publish_key(public_key)` publishes the WireGuard instance public key (Node annotation or member Lease)."""
    require_binaries()
    return RealGatewayDataPath(cfg, uplink, publish_key=publish_key)
