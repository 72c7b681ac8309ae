"""Prometheus metrics of the service shell (reconcile loop) and the metrics HTTP server of both commands.

The data path (nft counters per policy/EIP, drops by reason) and BGP (`bgp.metrics`) register their own metrics in
the same registry; this module adds what only the loop knows: pass duration, passes by result, consecutive
failures, the loop's heartbeat. One HTTP server per process serves them all on the configured address.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from appliance.runtime.config import MetricsSettings
from appliance.runtime.reconciling import PassReport


class LoopMetrics:
    def __init__(self, role: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.role = role
        self.duration = Histogram(
            "egressgw_reconcile_pass_seconds",
            "Wall time of one reconcile pass (resolve + plan + apply).",
            ["role"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.passes = Counter(
            "egressgw_reconcile_passes",
            "Reconcile passes by result (ok, failed). A failed pass is retried with backoff.",
            ["role", "result"],
            registry=registry,
        )
        self.failures_in_a_row = Gauge(
            "egressgw_reconcile_consecutive_failures",
            "Failed passes since the last successful one (0 = the kernel state converged on the last pass).",
            ["role"],
            registry=registry,
        )
        self.changes = Counter(
            "egressgw_reconcile_changes",
            "Kernel changes made by reconcile passes (a steady rise without cluster changes means drift).",
            ["role"],
            registry=registry,
        )
        self.last_pass = Gauge(
            "egressgw_reconcile_last_pass_timestamp_seconds",
            "Unix time of the end of the last pass (ok or failed).",
            ["role"],
            registry=registry,
        )

    def observe(self, report: PassReport, wall: Callable[[], float] = time.time) -> None:
        self.duration.labels(role=self.role).observe(report.duration_s)
        self.passes.labels(role=self.role, result="ok" if report.outcome.ok else "failed").inc()
        self.failures_in_a_row.labels(role=self.role).set(report.failures_in_a_row)
        self.changes.labels(role=self.role).inc(len(report.outcome.changes))
        self.last_pass.labels(role=self.role).set(wall())


class SkipMetrics:
    """`egressgw_plan_skipped{role,reason}`: how many things the planners currently leave out, per reason.

    Labels are bounded on purpose (role and the planners' reason enums): the pod IPs and policies of the skips are
    in the logs (`plan.skipped`) and the gateway status, never in a label."""

    def __init__(self, role: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.role = role
        self._seen: set[str] = set()
        self.skipped = Gauge(
            "egressgw_plan_skipped",
            "Steerings, peers or announcements the planners currently leave out, by reason (see `plan.skipped`).",
            ["role", "reason"],
            registry=registry,
        )

    def observe(self, counts: Mapping[str, int]) -> None:
        """Set the current counts; a reason seen before and now absent goes back to 0."""
        self._seen |= set(counts)
        for reason in sorted(self._seen):
            self.skipped.labels(role=self.role, reason=reason).set(counts.get(reason, 0))


def serve_metrics(settings: MetricsSettings | None, registry: CollectorRegistry = REGISTRY) -> str | None:
    """Start the HTTP server in a daemon thread; returns the address it listens on (None = disabled).

    An empty host listens on every address: `::` (dual stack) where IPv6 exists, else `0.0.0.0`.
    """
    if settings is None:
        return None
    hosts = [settings.host] if settings.host else ["::", "0.0.0.0"]
    error: OSError | None = None
    for host in hosts:
        try:
            start_http_server(settings.port, addr=host, registry=registry)
        except OSError as e:
            error = e
            continue
        return f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"
    assert error is not None
    raise error
