"""Loop metrics and the metrics HTTP server: a pass report becomes counters/histograms served on /metrics."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client import CollectorRegistry

from appliance.runtime.config import MetricsSettings
from appliance.runtime.datapath_common import register_datapath_metrics
from appliance.runtime.metrics import LoopMetrics, serve_metrics
from appliance.runtime.reconciling import PassOutcome, PassReport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CountingDataPath:
    def counters(self) -> dict[str, tuple[int, int]]:
        return {"eip_203_0_113_130": (10, 1500), "drop_unknown_vtep": (2, 120)}


def test_pass_reports_are_served() -> None:
    registry = CollectorRegistry()
    m = LoopMetrics("gateway", registry)
    assert register_datapath_metrics(CountingDataPath(), registry, role="gateway")
    assert not register_datapath_metrics(object(), registry, role="gateway")
    ok = PassReport(
        reasons=frozenset({"pod"}),
        started=0.0,
        duration_s=0.02,
        revision=3,
        outcome=PassOutcome(changes=("a", "b")),
        failures_in_a_row=0,
        retry_at=None,
    )
    bad = PassReport(
        reasons=frozenset({"retry"}),
        started=1.0,
        duration_s=0.5,
        revision=3,
        outcome=PassOutcome(failures=("x",)),
        failures_in_a_row=1,
        retry_at=1.5,
    )
    m.observe(ok)
    m.observe(bad)
    port = free_port()
    assert serve_metrics(MetricsSettings(host="127.0.0.1", port=port), registry) == f"127.0.0.1:{port}"
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'egressgw_reconcile_passes_total{result="ok",role="gateway"} 1.0' in body
    assert 'egressgw_reconcile_passes_total{result="failed",role="gateway"} 1.0' in body
    assert 'egressgw_reconcile_consecutive_failures{role="gateway"} 1.0' in body
    assert 'egressgw_reconcile_changes_total{role="gateway"} 2.0' in body
    assert 'egressgw_reconcile_pass_seconds_count{role="gateway"} 2.0' in body
    assert "egressgw_datapath_eip_packets_total" in body and "203.0.113.130" in body


def test_disabled_metrics_start_nothing() -> None:
    assert serve_metrics(None, CollectorRegistry()) is None
