"""The gateway member's data path: `plan_gateway` + apply behind `appliance.gateway.seams.GatewayDataPath`.

Why a separate module: the service speaks passes, health checks and the EIPs in place; the data path speaks plans
and kernel steps (`appliance.datapath.plan.gateway`, `appliance.datapath.apply`). This is the one place on the
gateway side that knows both.

Which EIPs are "in place" (the only ones the member may announce): after a pass without failures, every EIP of the
plan; after a pass with failures, only EIPs that were in place before and are still held on the host (a new EIP is
announced only after a pass that installed everything, its SNAT entries included).

After a successful pass, pod IPs whose binding on this member changed (steering ended, started, moved to another
EIP, destination, worker or instance: `plan.gateway.pod_bindings`) get their conntrack entries deleted, in one
time-bounded netlink batch (`apply.conntrack.flush_pod_conntrack`); a failure fails the pass and the pod IP is
flushed again on the next one. Together with the forward chain's `drop_unsteered_reply` this makes a server that
keeps pushing after the steering ended hit `drop_eip_unsolicited` instead of reaching the pod with its own IP.

On every health check (at most every `SPOOF_READ_S`) the per-worker spoofed-drop counters are read; a rise is
logged (`worker.spoofed_traffic`, naming the worker) and reported as the member condition `WorkerTrafficSpoofed`
(`appliance.gateway.spoofing`).

Metrics beyond the raw counters (`appliance.datapath.apply.metrics`): `policy_counters()` names the labels of the
per-policy counters of the current plan, and `snat_ports` samples SNAT port use of the EIPs in place from conntrack
(bounded: mark-filtered dump, entry cap, deadline, at most every interval; docs/operations.md).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping

from appliance.core.events import EventLogger, error_text
from appliance.core.intent import Intent
from appliance.core.model import IPAddress
from appliance.core.snapshot import Snapshot
from appliance.datapath.apply import health_checks
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.conntrack import ConntrackFlushResult, conntrack_changes, flush_pod_conntrack
from appliance.datapath.apply.incremental import IncrementalGateway
from appliance.datapath.apply.snat_ports import SnatPortSampler, sample_snat_ports
from appliance.datapath.plan.gateway import (
    GatewaySettings,
    PodBinding,
    PodKey,
    changed_bindings,
    plan_gateway,
    pod_bindings,
    workers_of,
)
from appliance.datapath.plan.policy_counters import PolicyLabels
from appliance.gateway.seams import DataPathResult, GatewayDataPath
from appliance.gateway.spoofing import SpoofWatch, spoof_condition
from appliance.gateway.view import MemberCondition
from appliance.gateway.wireguard import GatewayWireguardHook
from appliance.runtime.config import GatewayConfig
from appliance.runtime.datapath_common import require_binaries, ruleset_variant, table_present
from appliance.runtime.reconciling import PassOutcome
from appliance.runtime.skips import gateway_skips
from appliance.runtime.underlay import Underlay
from bgp.health import Check

#: seconds between two readings of the spoofed-drop counters (the health tick may run every 200 ms)
SPOOF_READ_S = 5.0

Flush = Callable[[frozenset[IPAddress]], ConntrackFlushResult]


class FlowFlusher:
    """Deletes the conntrack entries of pod IPs whose binding on this member changed between successful passes."""

    def __init__(self, flush: Flush) -> None:
        self.flush = flush
        #: pod IP -> its binding on this member as of the last successful pass (None before the first one)
        self.bindings: dict[PodKey, PodBinding] | None = None
        #: pod IPs whose conntrack flush failed or was cut off by its deadline: retried on the next pass
        self.unflushed: frozenset[IPAddress] = frozenset()

    def after_pass(self, bindings: dict[PodKey, PodBinding]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Call after a pass whose rules are in place (so nothing re-creates the flows): one batched, bounded
        flush; (change lines, failures). The first pass adopts what is there and flushes nothing."""
        changes: tuple[str, ...] = ()
        failures: tuple[str, ...] = ()
        if self.bindings is not None:
            to_flush = changed_bindings(self.bindings, bindings) | self.unflushed
            if to_flush:
                result = self.flush(to_flush)
                self.unflushed = frozenset(to_flush) - frozenset(result.flushed)
                changes = conntrack_changes(result)
                failures = result.problems()
        self.bindings = bindings
        return changes, failures


class RealGatewayDataPath:
    """plan_gateway + apply, with the pod-churn fast path (`IncrementalGateway`) for event-driven passes."""

    def __init__(
        self, cfg: GatewayConfig, uplink: Underlay, *, publish_key: Callable[[str], None] | None = None,
        applier: DataPathApplier | None = None, flush: Flush | None = None,
        clock: Callable[[], float] = time.monotonic, log: EventLogger | None = None,
    ) -> None:
        self.member = cfg.node_name
        self.settings = GatewaySettings(uplink_mtu=uplink.mtu, tunnel_mtu=cfg.tunnel.mtu, marks=cfg.marks,
                                        source_check=cfg.tunnel_source_check,
                                        state_sync=cfg.state_sync if cfg.state_sync.enabled else None)
        self.applier = applier or DataPathApplier(variant=ruleset_variant(cfg))
        self.clock = clock
        self.log = log or EventLogger("egressgw.gateway", node=cfg.node_name)
        self.flows = FlowFlusher(flush or flush_pod_conntrack)
        self.spoofing = SpoofWatch()
        self._spoof_read_at: float | None = None
        self.incremental = IncrementalGateway(self.applier, member=self.member, settings=self.settings)
        self.in_place: frozenset[IPAddress] = frozenset()
        self.tunnel_links: tuple[str, ...] = ()
        self.planned = False
        marks = self.settings.marks
        self.snat_ports = SnatPortSampler(
            lambda: self.in_place, functools.partial(sample_snat_ports, mark=marks.mark_base, mask=marks.mark_mask),
        )
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
        changes, failures = result.changes, result.failures
        if not result.failures:
            flushed = self.flows.after_pass(pod_bindings(intent, member=self.member))
            changes += flushed[0]
            failures += flushed[1]
        skipped = gateway_skips(plan.skipped) | self.wireguard.skipped
        return DataPathResult(
            outcome=PassOutcome(changes=changes, failures=failures, skipped=skipped),
            eips_in_place=self.in_place,
        )

    def checks(self) -> Mapping[Check, bool]:
        if not self.planned:
            return {}  # nothing planned yet: the reconcile-loop check already keeps the member unhealthy
        self.watch_spoofing()
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

    def policy_counters(self) -> Mapping[str, PolicyLabels]:
        """Per-policy counter name -> labels, of the last full plan (pod churn reuses its counters)."""
        return self.incremental.policy_counters

    def watch_spoofing(self) -> None:
        """Read the per-worker spoofed-drop counters (at most every SPOOF_READ_S) and log each worker that rose."""
        now = self.clock()
        if self._spoof_read_at is not None and now - self._spoof_read_at < SPOOF_READ_S:
            return
        self._spoof_read_at = now
        try:
            readings = self.applier.counters()
        except Exception as e:  # never let reading counters fail a health check
            self.log.warning("worker.spoofed_counters_unreadable", error=error_text(e))
            return
        for alert in self.spoofing.observe(readings, now):
            self.log.warning("worker.spoofed_traffic", worker=alert.node, new_packets=alert.new_packets,
                             total=alert.total, counter="drop_spoofed",
                             hint="inner source is not a pod of this worker: a NAT chain on the worker "
                                  "masquerading steered packets?")

    def conditions(self) -> tuple[MemberCondition, ...]:
        """The member conditions this data path reports (status document): `WorkerTrafficSpoofed`."""
        return (spoof_condition(self.spoofing.recent(self.clock())),)


def make_gateway_datapath(
    cfg: GatewayConfig, uplink: Underlay, *, publish_key: Callable[[str], None] | None = None
) -> GatewayDataPath:
    """`publish_key(public_key)` publishes the WireGuard instance public key (Node annotation or member Lease)."""
    require_binaries()
    return RealGatewayDataPath(cfg, uplink, publish_key=publish_key)
