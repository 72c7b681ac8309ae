"""What the monitoring tests share: the shipped dashboard and alert rules, the metric names they use, and
`promtool` (Debian package `prometheus`, installed by scripts/install-system-deps.sh)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
DASHBOARD = MONITORING / "egressgw-dashboard.json"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "tests" / "alerts_test.yaml"

_METRIC = re.compile(r"\b(egressgw_[a-z0-9_]+)")
#: Grafana's variables, replaced by values Prometheus accepts when an expression is parsed or queried
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "1m", "$__interval": "1m"}


def tool(name: str) -> str:
    """The path of a Prometheus binary; a test needing it fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run scripts/install-system-deps.sh (Debian package prometheus)",
                    pytrace=False)
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, check=False)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels") or []  # a collapsed row keeps its panels inside


def dashboard_expressions(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard_panels(dash) for t in p.get("targets") or []]


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in (a PromQL expression Prometheus can run)."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def metric_names(expressions: list[str]) -> set[str]:
    return {m for e in expressions for m in _METRIC.findall(e)}


def exposed_names(text: str) -> set[str]:
    """Every metric name a /metrics page offers: sample names, and family names from `# HELP`/`# TYPE` (a labelled
    metric no one has set yet has no sample but is declared), with a histogram's `_bucket/_sum/_count`."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def with_short_for(path: Path, out: Path, *, for_: str) -> Path:
    """A copy of the shipped rules whose every `for:` is `for_` (the e2e test's short evaluation), nothing else
    changed: the test loads what ships."""
    doc = yaml.safe_load(path.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out
