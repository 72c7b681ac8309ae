"""Adapters between the service shell and the data path (planners + kernel appliers) of each role.

Why a separate module: the commands and the reconcile loop speak small Protocols (`WorkerDataPath`,
`appliance.gateway.service.GatewayDataPath`); the data path speaks plans and kernel steps
(`appliance.datapath.plan.worker`, `appliance.datapath.plan.gateway`, `appliance.datapath.apply.applier`). This is the
one place that knows both, so either side can change its internals without touching the other.

Which EIPs are "in place" on a gateway (the only ones it may announce): after a pass without failures, every EIP of
the plan; after a pass with failures, only EIPs that were in place before and are still held on the host (a new
EIP is announced only after a pass that installed everything, its SNAT entries included).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from appliance.core.intent import Intent
from appliance.core.model import IPAddress
from appliance.core.snapshot import Snapshot
from appliance.datapath.apply import health_checks
from appliance.gateway.service import DataPathResult, GatewayDataPath
from appliance.runtime.config import AgentConfig, GatewayConfig
from appliance.runtime.reconciling import PassOutcome
from appliance.runtime.underlay import Underlay
from bgp.health import Check


class DataPathUnavailable(Exception):
    """The data path cannot run here (no `ip` or `nft` binary)."""


class WorkerDataPath(Protocol):
    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> PassOutcome: ...

    def drifted(self) -> bool:
        """Cheap check that our applied state is gone (nft table, tunnel devices): the loop then repairs at once."""
        ...

    def remove_all(self) -> tuple[str, ...]: ...


def _require_binaries() -> None:
    missing = [b for b in ("ip", "nft") if shutil.which(b) is None]
    if missing:
        raise DataPathUnavailable(f"missing {' and '.join(missing)} (install iproute2 and nftables)")


def tunnel_source(underlay: Underlay) -> IPAddress:
    """The worker's tunnel source: its IPv4 underlay address when it has one, else IPv6 (set underlay.addresses to
    a single IPv6 address for an IPv6 underlay)."""
    return underlay.address(4) or underlay.addresses[0]


class RealWorkerDataPath:
    """plan_worker + apply, with the pod-churn fast path (`IncrementalWorker`) for event-driven passes."""

    def __init__(self, cfg: AgentConfig, underlay: Underlay, *, annotator: object | None = None) -> None:
        from appliance.datapath.apply.applier import DataPathApplier
        from appliance.datapath.apply.incremental import IncrementalWorker
        from appliance.datapath.plan.worker import WorkerSettings
        from appliance.runtime.wireguard_wiring import WorkerWireguardHook

        self.node = cfg.node_name
        self.source = tunnel_source(underlay)
        self.settings = WorkerSettings(underlay_mtu=underlay.mtu, tunnel_mtu=cfg.tunnel.mtu)
        self.applier = DataPathApplier()
        self.incremental = IncrementalWorker(self.applier, node=self.node, underlay=self.source, settings=self.settings)
        self.tunnel_links: tuple[str, ...] = ()
        #: pod IP -> what its traffic is steered to, as of the last successful pass (None before the first one)
        self.steered: dict[IPAddress, frozenset[tuple[str, ...]]] | None = None
        self.wireguard = WorkerWireguardHook(
            node=self.node,
            state_dir=cfg.state_dir / "wireguard",
            underlay=underlay,
            prefix=cfg.wireguard.interface_prefix,
            annotator=annotator,
        )

    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> PassOutcome:
        devices = self.wireguard.devices(snapshot, intent)
        result = self.incremental.converge(intent, full=full, wireguard_devices=devices)
        if self.incremental.plan is not None:
            self.tunnel_links = self.incremental.plan.tunnel_links
        changes = result.changes
        if not result.failures:
            steered = steering_by_pod_ip(intent, self.node)
            if self.steered is not None:
                changed = {ip for ip in self.steered.keys() | steered.keys()
                           if self.steered.get(ip) != steered.get(ip)}
                changes += flush_conntrack(changed)
            self.steered = steered
        return PassOutcome(changes=changes, failures=result.failures)

    def drifted(self) -> bool:
        return not _table_present() or not health_checks.links_present(self.tunnel_links)

    def remove_all(self) -> tuple[str, ...]:
        result = self.applier.remove_all()
        return result.changes + tuple(f"FAILED {f}" for f in result.failures)

    def counters(self) -> Mapping[str, tuple[int, int]]:
        return self.applier.counters()


def steering_by_pod_ip(intent: Intent, node: str) -> dict[IPAddress, frozenset[tuple[str, ...]]]:
    """For each pod IP of this node: the (policy, EIP, destinations) its traffic is steered to."""
    out: dict[IPAddress, set[tuple[str, ...]]] = {}
    for s in intent.steerings:
        if s.node == node:
            out.setdefault(s.pod_ip, set()).add((str(s.policy), str(s.eip), *map(str, s.destinations)))
    return {ip: frozenset(v) for ip, v in out.items()}


def flush_conntrack(pod_ips: Iterable[IPAddress]) -> tuple[str, ...]:
    """Delete the conntrack entries of pod IPs whose steering changed. An entry made before the change keeps its
    NAT binding: a flow that stops being steered would leave with the raw pod IP (its binding was our identity
    SNAT, which bypasses the CNI's masquerade), and one that starts being steered would enter the tunnel already
    masqueraded to the node IP, which the gateway refuses. Such flows restart instead (the source they leave with
    changes, so they could not survive anyway)."""
    done = []
    for ip in sorted(pod_ips, key=lambda a: (a.version, int(a))):
        family = "ipv4" if ip.version == 4 else "ipv6"
        # flows the pod started (original source = the pod); exit status 1 just means there were none
        subprocess.run(["conntrack", "-D", "-f", family, "-s", str(ip)], capture_output=True, check=False)
        done.append(f"conntrack flush {ip}")
    return tuple(done)


def _table_present() -> bool:
    """Our nft table exists (`nft -t`: terse, so a table with 40k set elements is not printed every tick)."""
    from appliance.datapath.plan.nft_rendering import FAMILY, TABLE

    return health_checks.nft_table_present(FAMILY, TABLE)


def workers_of(snapshot: Snapshot) -> Mapping[str, Sequence[IPAddress]]:
    """Node name -> underlay (InternalIP) addresses: the known VTEPs the gateway accepts tunnels from."""
    return {n.name: n.addresses for n in snapshot.nodes if n.addresses}


class RealGatewayDataPath:
    """plan_gateway + apply, with the pod-churn fast path (`IncrementalGateway`) for event-driven passes."""

    def __init__(
        self, cfg: GatewayConfig, uplink: Underlay, *, publish_key: Callable[[str], None] | None = None
    ) -> None:
        from appliance.datapath.apply.applier import DataPathApplier
        from appliance.datapath.apply.incremental import IncrementalGateway
        from appliance.datapath.plan.gateway import GatewaySettings
        from appliance.runtime.wireguard_wiring import GatewayWireguardHook

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
        from appliance.datapath.plan.gateway import plan_gateway

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
        return DataPathResult(
            outcome=PassOutcome(changes=result.changes, failures=result.failures), eips_in_place=self.in_place
        )

    def checks(self) -> Mapping[Check, bool]:
        if not self.planned:
            return {}  # nothing planned yet: the reconcile-loop check already keeps the member unhealthy
        return {
            Check.TUNNEL_DEVICE: health_checks.links_present(self.tunnel_links),
            Check.NFT_TABLE: _table_present(),
        }

    def remove_all(self) -> tuple[str, ...]:
        result = self.applier.remove_all()
        self.in_place = frozenset()
        return result.changes + tuple(f"FAILED {f}" for f in result.failures)

    def counters(self) -> Mapping[str, tuple[int, int]]:
        return self.applier.counters()


def register_datapath_metrics(datapath: object, registry: object, *, role: str) -> bool:
    """Export the data path's nft counters (read at scrape time) when the data path has them."""
    counters = getattr(datapath, "counters", None)
    if counters is None:
        return False
    from appliance.datapath.apply.metrics import register

    register(registry, counters, role=role)
    return True


def make_worker_datapath(cfg: AgentConfig, underlay: Underlay, *, annotator: object | None = None) -> WorkerDataPath:
    """`annotator` publishes the WireGuard public keys on the Node
    (`appliance.runtime.wireguard_wiring.KubeNodeAnnotator`)."""
    _require_binaries()
    return RealWorkerDataPath(cfg, underlay, annotator=annotator)


def make_gateway_datapath(
    cfg: GatewayConfig, uplink: Underlay, *, publish_key: Callable[[str], None] | None = None
) -> GatewayDataPath:
    """`publish_key(public_key)` publishes the WireGuard instance public key (Node annotation or member Lease)."""
    _require_binaries()
    return RealGatewayDataPath(cfg, uplink, publish_key=publish_key)


def remove_worker_state(cfg: AgentConfig | GatewayConfig | None) -> tuple[str, ...]:
    """Everything ours in the current namespace: our nft table, rules, routes, neighbours, EIPs, VXLAN links, and
    our WireGuard interfaces when WireGuard exists here (the configured `wireguard.interface_prefix`: a node whose
    services name them differently must get them removed too; the default prefix without a config)."""
    _require_binaries()
    from appliance.datapath.apply.applier import DataPathApplier

    result = DataPathApplier().remove_all()
    out = result.changes + tuple(f"FAILED {f}" for f in result.failures)
    return out + _remove_wireguard(cfg.wireguard.interface_prefix if cfg is not None else None)


def _remove_wireguard(prefix: str | None) -> tuple[str, ...]:
    from appliance.datapath.apply.wireguard import WireguardApplier
    from appliance.datapath.plan.wireguard import WgSettings

    try:
        applier = WireguardApplier(prefix=prefix or WgSettings().interface_prefix)
    except RuntimeError:  # neither the kernel module nor wireguard-go: nothing of ours can exist
        return ()
    names = sorted(applier.our_links())
    applier.remove_all()
    return tuple(f"wireguard interface {n} deleted" for n in names)


def remove_gateway_state(cfg: GatewayConfig | None) -> tuple[str, ...]:
    return remove_worker_state(cfg)
