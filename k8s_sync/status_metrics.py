"""Prometheus metrics of the status writer's lag, exported only by the member holding the status lease.

A status that is not written is invisible in the data path but misleads everyone who reads `kubectl get`: the
EIP a policy shows, the members a gateway lists. Two gauges say whether the API holds what the writer planned:

- `egressgw_status_pending_objects`: status writes of the current (or last) pass not done yet; it stays above 0
  while writes fail (API server away, RBAC refusing `/status`) and the writer retries.
- `egressgw_status_last_write_timestamp_seconds`: wall time of the end of the last pass that left nothing to write.
  With writes pending, `time() - it` is how stale the published status can be.

Followers write nothing, so they export neither (an idle follower must not look like a lagging writer); the series
move with the lease. Read at scrape time: no thread of ours sets them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from k8s_sync.status_writer import StatusWriter


class StatusWriterCollector:
    """A prometheus_client collector reading a `StatusWriter`'s lag figures."""

    def __init__(self, writer: StatusWriter) -> None:
        self._writer = writer

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the families exist only on the leader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self._writer.is_leader():
            return
        yield GaugeMetricFamily(
            "egressgw_status_pending_objects",
            "Status writes planned and not done yet (only on the member holding the status lease); above 0 for "
            "long = the published status lags.",
            value=self._writer.pending_objects,
        )
        yield GaugeMetricFamily(
            "egressgw_status_last_write_timestamp_seconds",
            "Unix time the status writer last had everything it planned written (only on the member holding the "
            "status lease).",
            value=self._writer.caught_up_at,
        )


def register_status_metrics(writer: StatusWriter, registry: Any) -> StatusWriterCollector:
    """Register the status writer's lag gauges on a prometheus_client CollectorRegistry."""
    collector = StatusWriterCollector(writer)
    registry.register(collector)
    return collector
