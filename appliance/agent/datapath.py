"""The worker agent's data path: `plan_worker` + apply behind the small `WorkerDataPath` Protocol the service speaks.

Why a separate module: `appliance.agent.service` speaks passes and outcomes; the data path speaks plans and kernel
steps (`appliance.datapath.plan.worker`, `appliance.datapath.apply`). This is the one place on the worker side that
knows both, so either side can change its internals without touching the other.

After a successful pass, pods whose steering changed get their conntrack entries deleted
(`appliance.datapath.apply.conntrack.flush_pod_conntrack`, over netlink, time-bounded): an entry made before the
change keeps its NAT binding, so such flows must restart. The pass reports what really happened: one change line per
flushed pod IP plus the number of entries deleted, and each failure (or a timeout) as a failure of the pass; a pod IP
whose flush did not finish is flushed again on the next pass.

Source binding (docs/datapath.md "Source binding"): each pass discovers which pod address lives behind which
host-side interface (`appliance.datapath.apply.pod_interfaces`; pod-churn passes read only new interfaces), turns
it into bindings with the planner's `check_sources`, converges the bridge binding table (`worker_guards`) and hands
the bindings to the full plan, which is forced whenever the set of unbound pod IPs (strict mode) changes. Each pass
also lists the nat chains that would run before our identity SNAT and reports each as a note
(`NatChainBeforeIdentitySnat`), so a CNI or firewall that could masquerade steered packets is never silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from appliance.agent.stand_down import gateway_owns_table
from appliance.agent.wireguard import WorkerWireguardHook
from appliance.core.intent import Intent
from appliance.core.model import IPAddress
from appliance.core.snapshot import Snapshot
from appliance.datapath.apply import health_checks
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.conntrack import conntrack_changes, flush_pod_conntrack
from appliance.datapath.apply.incremental import IncrementalWorker
from appliance.datapath.apply.netlink import ApplyResult, CommandError
from appliance.datapath.apply.pod_interfaces import PodInterfaceDiscovery
from appliance.datapath.apply.worker_guards import BridgeBindingApplier, foreign_nat_chains
from appliance.datapath.plan.nat_order import NatChain
from appliance.datapath.plan.policy_drops import DropLabels
from appliance.datapath.plan.worker import (
    SOURCE_SKIPS,
    SourceBinding,
    SourceCheck,
    SourceValidation,
    WorkerSettings,
    check_sources,
)
from appliance.datapath.plan.worker_nft import worker_bridge_table
from appliance.runtime.config import AgentConfig
from appliance.runtime.datapath_common import require_binaries, ruleset_variant, table_present
from appliance.runtime.reconciling import PassOutcome
from appliance.runtime.skips import SkipNote, worker_skips
from appliance.runtime.underlay import Underlay


class WorkerDataPath(Protocol):
    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> PassOutcome:
        """Plan and apply; the outcome's `skipped` is what the planners (data path and WireGuard) left out."""
        ...

    def drifted(self) -> bool:
        """Cheap check that our applied state is gone (nft table, tunnel devices): the loop then repairs at once."""
        ...

    def remove_all(self) -> tuple[str, ...]: ...

    def stand_down(self) -> PassOutcome:
        """The node became a gateway member: remove the worker's kernel state (not a gateway's) and forget the
        cache, so the pass after the stand-down plans in full."""
        ...


def tunnel_source(underlay: Underlay) -> IPAddress:
    """The worker's default tunnel source: its IPv4 underlay address when it has one, else IPv6. It decides the
    family only for gateways without `spec.tunnel.family`; a gateway that names one gets its endpoints of that
    family (the planners' `TunnelSpec.version`), sent from this node's address of that family."""
    return underlay.address(4) or underlay.addresses[0]


class RealWorkerDataPath:
    """plan_worker + apply, with the pod-churn fast path (`IncrementalWorker`) for event-driven passes."""

    def __init__(self, cfg: AgentConfig, underlay: Underlay, *, annotator: Any | None = None) -> None:
        self.node = cfg.node_name
        self.source = tunnel_source(underlay)
        self.settings = WorkerSettings(underlay_mtu=underlay.mtu, tunnel_mtu=cfg.tunnel.mtu,
                                       source_validation=cfg.source_validation, marks=cfg.marks)
        self.applier = DataPathApplier(variant=ruleset_variant(cfg))
        self.discovery = PodInterfaceDiscovery()
        self.bridge = BridgeBindingApplier()
        #: strict mode: the unbound pod IPs the inet table holds (a change forces a full plan)
        self.unbound: tuple[IPAddress, ...] | None = None
        #: the nat chains that ran at or before our identity SNAT at the last pass
        self.nat_chains: tuple[NatChain, ...] = ()
        self.incremental = IncrementalWorker(self.applier, node=self.node, underlay=self.source, settings=self.settings)
        self.tunnel_links: tuple[str, ...] = ()
        #: pod IP -> what its traffic is steered to, as of the last successful pass (None before the first one)
        self.steered: dict[IPAddress, frozenset[tuple[str, ...]]] | None = None
        #: pod IPs whose conntrack flush failed or was cut off by its deadline: retried on the next pass
        self.unflushed: frozenset[IPAddress] = frozenset()
        #: the worker plan's skips as of the last pass that planned (a failed apply keeps the previous ones)
        self.plan_skips: frozenset[SkipNote] = frozenset()
        self.wireguard = WorkerWireguardHook(
            node=self.node,
            state_dir=cfg.state_dir / "wireguard",
            underlay=underlay,
            prefix=cfg.wireguard.interface_prefix,
            annotator=annotator,
        )

    def converge(self, snapshot: Snapshot, intent: Intent, *, full: bool = True) -> PassOutcome:
        devices = self.wireguard.devices(snapshot, intent)
        bindings, guard = self._discover(refresh=full)
        sources = check_sources(intent, node=self.node, mode=self.settings.source_validation, bindings=bindings)
        if sources.unbound != self.unbound:
            full = True
        # the bridge bindings first: a pod is bound to its port before its traffic is steered
        guard += self._converge_bridge(sources)
        result = self.incremental.converge(intent, full=full, wireguard_devices=devices, source_bindings=bindings)
        self.unbound = None if result.failures else sources.unbound
        if self.incremental.plan is not None:
            self.tunnel_links = self.incremental.plan.tunnel_links
            self.plan_skips = worker_skips(
                [s for s in self.incremental.plan.skipped if s.reason not in SOURCE_SKIPS] + list(sources.skipped)
            )
        self.nat_chains = foreign_nat_chains()
        changes, failures = result.changes + guard.changes, result.failures + guard.failures
        if not result.failures:
            steered = steering_by_pod_ip(intent, self.node)
            if self.steered is not None:
                to_flush = changed_pod_ips(self.steered, steered) | self.unflushed
                if to_flush:
                    flushed = flush_pod_conntrack(to_flush)
                    self.unflushed = frozenset(to_flush) - frozenset(flushed.flushed)
                    changes += conntrack_changes(flushed)
                    failures += flushed.problems()
            self.steered = steered
        skipped = self.plan_skips | self.wireguard.skipped | nat_chain_notes(self.nat_chains)
        return PassOutcome(changes=changes, failures=failures, skipped=skipped)

    def _discover(self, *, refresh: bool) -> tuple[tuple[SourceBinding, ...] | None, ApplyResult]:
        """This node's pod interfaces (None when source validation is off). A discovery failure is a failure of
        the pass and leaves every steered pod IP unbound (strict mode: their steered traffic is dropped)."""
        if self.settings.source_validation is SourceValidation.OFF:
            return None, ApplyResult()
        try:
            return self.discovery.discover(refresh=refresh), ApplyResult()
        except (CommandError, ValueError, OSError) as e:
            return (), ApplyResult(failures=(f"pod interface discovery: {e}",))

    def _converge_bridge(self, sources: SourceCheck) -> ApplyResult:
        if self.settings.source_validation is SourceValidation.OFF:
            return self.bridge.remove()
        return self.bridge.apply(worker_bridge_table(sources.bridged, self.applier.variant))

    def drifted(self) -> bool:
        bridge_gone = self.settings.source_validation is not SourceValidation.OFF and not self.bridge.exists()
        return not table_present() or not health_checks.links_present(self.tunnel_links) or bridge_gone

    def remove_all(self) -> tuple[str, ...]:
        result = self.bridge.remove() + self.applier.remove_all()
        return result.changes + tuple(f"FAILED {f}" for f in result.failures)

    def stand_down(self) -> PassOutcome:
        """Both roles own the `inet egressgw` table, the tunnel devices and the routes of our protocol: when the
        table already is a gateway's (its comment names the role), the gateway service has taken the node's data
        path over and only the worker-only bridge table goes; otherwise everything of ours goes."""
        observed = self.applier.nft.observe()
        taken_over = gateway_owns_table(observed.comment if observed is not None else None)
        result = self.bridge.remove() if taken_over else self.bridge.remove() + self.applier.remove_all()
        self.incremental.intent = self.incremental.plan = None
        self.steered, self.unbound, self.tunnel_links, self.plan_skips = None, None, (), frozenset()
        changes = result.changes + (("kernel state left to the gateway service",) if taken_over else ())
        return PassOutcome(changes=changes, failures=result.failures)

    def counters(self) -> Mapping[str, tuple[int, int]]:
        return {**self.applier.counters(), **self.bridge.counters()}

    def policy_drop_counters(self) -> Mapping[str, DropLabels]:
        """Per-policy drop counter name -> labels, of the last full plan (pod churn reuses its counters)."""
        return self.incremental.policy_drops


def nat_chain_notes(chains: tuple[NatChain, ...]) -> frozenset[SkipNote]:
    """Each foreign nat chain at or before our identity SNAT, as a note (logged `plan.skipped` when it appears,
    counted in `egressgw_plan_skipped{reason="NatChainBeforeIdentitySnat"}`): such a chain may masquerade steered
    packets inside the tunnel, which the gateway then drops as spoofed (`drop_spoofed`)."""
    return frozenset(
        SkipNote(planner="worker", reason="NatChainBeforeIdentitySnat", subject=c.name, subject_kind="nat_chain",
                 detail=f"priority {c.priority}")
        for c in chains
    )


def steering_by_pod_ip(intent: Intent, node: str) -> dict[IPAddress, frozenset[tuple[str, ...]]]:
    """For each pod IP of this node: the (policy, EIP, destinations) its traffic is steered to."""
    out: dict[IPAddress, set[tuple[str, ...]]] = {}
    for s in intent.steerings:
        if s.node == node:
            out.setdefault(s.pod_ip, set()).add((str(s.policy), str(s.eip), *map(str, s.destinations)))
    return {ip: frozenset(v) for ip, v in out.items()}


def changed_pod_ips(
    old: Mapping[IPAddress, frozenset[tuple[str, ...]]], new: Mapping[IPAddress, frozenset[tuple[str, ...]]]
) -> frozenset[IPAddress]:
    """Pod IPs whose steering differs between two passes (started, stopped or moved to another EIP)."""
    return frozenset(ip for ip in old.keys() | new.keys() if old.get(ip) != new.get(ip))


def make_worker_datapath(cfg: AgentConfig, underlay: Underlay, *, annotator: Any | None = None) -> WorkerDataPath:
    """`annotator` publishes the WireGuard public keys on the Node
    (`appliance.runtime.wireguard_common.KubeNodeAnnotator`)."""
    require_binaries()
    return RealWorkerDataPath(cfg, underlay, annotator=annotator)
