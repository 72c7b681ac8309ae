"""The shipped dashboard and alert rules against the real system: a real Prometheus server scrapes every gateway member
and worker agent of a lab and evaluates deploy/monitoring/alerts.yaml.

- Every metric name the dashboard and the alert rules use is offered by a running member's or agent's `/metrics`,
  and every dashboard query runs on the real Prometheus (most of them with data).
- Cutting the primary member's uplink fires `EgressgwMemberDown` for that member (and for no other member), while
  the EIP stays announced by the backup, so `EgressgwEipNotAnnounced` stays quiet; restoring the uplink clears it.

Prometheus runs inside the lab router's namespace (the one node that reaches both the members' uplink LAN and the
workers' LAN; the host gets no route into the lab), with its storage in a temporary directory, 1 s scrape and
evaluation intervals and a copy of the shipped rules whose `for:` is shortened (generated from the shipped file, so
the test evaluates the shipped expressions). The test reads Prometheus' HTTP API through a loopback forwarder.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.core.waiting import poll_until, wait_until
from appliance.runtime.config import MetricsSettings
from lab.netns_forward import ForwardSpec, NetnsForwarder
from lab.scenarios import policy_manifest, scenario_gateway, stable_primary
from lab.system import DEFAULT_TOPOLOGY, System
from tests.e2e.conftest import DEFAULT_EIP_V4, Scenario
from tests.monitoring import (
    ALERTS,
    alert_rules,
    concrete,
    dashboard,
    dashboard_expressions,
    exposed_names,
    metric_names,
    promtool,
    tool,
    with_short_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

METRICS_PORT = MetricsSettings().port
PROMETHEUS_PORT = 9090
#: the test copy's `for:`: long enough that one slow scrape on a busy machine does not fire anything
SHORT_FOR = "3s"
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


class MonitoredSystem(System):
    """The e2e system with every member's and agent's metrics endpoint listening (the shared lab leaves them off)."""

    def _config_common(self, node: str) -> dict[str, Any]:
        cfg = super()._config_common(node)
        cfg["metrics"] = {"address": f":{METRICS_PORT}"}
        return cfg


def router(system: System) -> str:
    return next(n for n, v in system.nodes.items() if v.role == "router")


def target(system: System, node: str) -> str:
    return f"{system.nodes[node].address(4, 'eth1')}:{METRICS_PORT}"


@pytest.fixture(scope="module")
def monitored() -> Iterator[System]:
    s = MonitoredSystem.up(DEFAULT_TOPOLOGY, prefix="egt-e2m-")
    sc: Scenario | None = None
    try:
        s.apply([scenario_gateway(s.scenario)])
        sc = Scenario(s, "monitoring")  # a policy with traffic: EIPs in place, per-policy and per-EIP series
        sc.pod("web", "w1p1", {"app": "web"})
        sc.apply(policy_manifest(sc.namespace, "p", match_labels={"app": "web"}))
        assert s.wait_source("w1p1", DEFAULT_EIP_V4, timeout=90) == DEFAULT_EIP_V4
        yield s
    finally:
        if sc is not None:
            sc.cleanup()
        s.down()


class Prometheus:
    """A Prometheus server in a lab namespace, read through a loopback forwarder."""

    def __init__(self, system: System, node: str, workdir: Path) -> None:
        self.system, self.node = system, node
        rules = with_short_for(ALERTS, workdir / "alerts.yaml", for_=SHORT_FOR)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": "egressgw-gateway",
                 "static_configs": [{"targets": [target(system, g) for g in system.gateways]}]},
                {"job_name": "egressgw-agent",
                 "static_configs": [{"targets": [target(system, w) for w in system.workers]}]},
            ],
        }
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        check = promtool("check", "config", str(path))
        assert check.returncode == 0, check.stdout + check.stderr
        system.lab.start_daemon(node, "prometheus", [
            tool("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}", "--storage.tsdb.retention.time=1h",
        ])
        self.forwarder = NetnsForwarder(ForwardSpec(netns=system.lab.netns(node),
                                                    upstream=("127.0.0.1", PROMETHEUS_PORT)))

    def stop(self) -> None:
        self.forwarder.close()
        self.system.lab.stop_daemon(self.node, "prometheus", grace=10.0)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.forwarder.port}{path}", timeout=10) as answer:
            doc = json.loads(answer.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.forwarder.port}/-/ready", timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.get("/api/v1/targets")["activeTargets"]
        return active

    def alerts(self, name: str, state: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == name and (state is None or a["state"] == state)]


@pytest.fixture(scope="module")
def prometheus(monitored: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prom = Prometheus(monitored, router(monitored), tmp_path_factory.mktemp("prometheus"))
    try:
        wait_until(prom.ready, timeout=120, interval=0.5, what="Prometheus ready")
        yield prom
    finally:
        prom.stop()


def scrape(system: System, node: str) -> str:
    """A member's or agent's /metrics page, fetched from the router's namespace (where Prometheus runs)."""
    url = f"http://{target(system, node)}/metrics"
    return str(system.lab.exec(router(system), [sys.executable, "-c", FETCH, url], timeout=30).stdout)


def test_every_metric_of_the_dashboard_and_the_alerts_exists_on_a_running_system(monitored: System) -> None:
    wanted = metric_names(dashboard_expressions(dashboard()) + [r["expr"] for r in alert_rules()])
    assert len(wanted) >= 30

    def missing() -> set[str]:
        offered: set[str] = set()
        for node in monitored.gateways + monitored.workers:
            offered |= exposed_names(scrape(monitored, node))
        return wanted - offered

    # some series appear only after the first passes (the status writer's only on the lease holder): wait for them
    left = poll_until(lambda: not missing(), timeout=90, interval=2.0)
    assert left, f"used by the dashboard or the alert rules but offered by no member or agent: {sorted(missing())}"


def test_every_dashboard_query_runs_on_the_real_prometheus(monitored: System, prometheus: Prometheus) -> None:
    """Each panel's query, with Grafana's variables filled in, is accepted by Prometheus; most return series (the
    rest are about drops and faults this healthy lab does not have)."""
    expected = len(monitored.gateways) + len(monitored.workers)
    wait_until(lambda: _all_up(prometheus, expected), timeout=120, interval=1.0, what="every target scraped",
               describe=prometheus.targets)
    exprs = dashboard_expressions(dashboard())

    def answered() -> int:
        return sum(bool(prometheus.get("/api/v1/query?" + urllib.parse.urlencode({"query": concrete(e)}))["result"])
                   for e in exprs)

    # rate() needs two scrapes, the SNAT sampler its first sample: wait until most panels have data
    with_data = wait_until(lambda: (n := answered()) >= len(exprs) * 3 // 4 and n, timeout=120, interval=2.0,
                           what="most dashboard queries answered with series")
    print(f"\n{with_data} of {len(exprs)} dashboard queries return series in the healthy lab")


def _all_up(prom: Prometheus, expected: int) -> bool:
    targets = prom.targets()
    return len(targets) == expected and all(t["health"] == "up" for t in targets)


def test_primary_uplink_cut_fires_member_down_and_the_restore_clears_it(monitored: System,
                                                                        prometheus: Prometheus) -> None:
    expected = len(monitored.gateways) + len(monitored.workers)
    wait_until(lambda: _all_up(prometheus, expected), timeout=120, interval=1.0, what="every target scraped",
               describe=prometheus.targets)
    wait_until(lambda: not prometheus.alerts("EgressgwMemberDown"), timeout=120, interval=1.0,
               what="no member down before the cut", describe=lambda: prometheus.alerts("EgressgwMemberDown"))
    primary = stable_primary(monitored, DEFAULT_EIP_V4)
    primary_target = target(monitored, primary)
    monitored.lab.cut_link(primary, "eth1")
    cut_at = time.monotonic()
    try:
        firing = wait_until(lambda: prometheus.alerts("EgressgwMemberDown", "firing"), timeout=120, interval=0.5,
                            what=f"EgressgwMemberDown firing for {primary}",
                            describe=lambda: prometheus.get("/api/v1/alerts"))
        fired_s = time.monotonic() - cut_at
        assert {a["labels"]["instance"] for a in firing} == {primary_target}
        assert firing[0]["labels"]["severity"] == "critical"
        # the backup announces the EIP: the routers still have a path, so that alert has nothing to say
        assert not prometheus.alerts("EgressgwEipNotAnnounced", "firing")
        query = urllib.parse.urlencode({"query": f'max(egressgw_bgp_eip_announced{{eip="{DEFAULT_EIP_V4}"}})'})
        announced = prometheus.get(f"/api/v1/query?{query}")
        assert [float(r["value"][1]) for r in announced["result"]] == [1.0]
    finally:
        monitored.lab.restore_link(primary, "eth1")
    restored_at = time.monotonic()
    wait_until(lambda: not prometheus.alerts("EgressgwMemberDown"), timeout=180, interval=1.0,
               what="EgressgwMemberDown cleared after the restore",
               describe=lambda: prometheus.alerts("EgressgwMemberDown"))
    print(f"\nuplink cut of {primary}: EgressgwMemberDown firing after {fired_s:.1f} s (for: {SHORT_FOR}), "
          f"cleared {time.monotonic() - restored_at:.1f} s after the restore")
    health = {t["labels"]["instance"]: t["health"] for t in prometheus.targets()}
    assert health[primary_target] == "up"
