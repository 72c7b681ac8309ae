"""deploy/monitoring checked by the real tools: `promtool check rules` on the alert rules, `promtool test rules` on
their unit tests (every alert fires on synthetic series and stays silent otherwise), and the dashboard's JSON and
every one of its PromQL expressions parsed by promtool. That the metric names exist on a running member is checked
in the lab (tests/e2e/test_d_monitoring.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.monitoring import (
    ALERT_TESTS,
    ALERTS,
    alert_rules,
    concrete,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    promtool,
    with_short_for,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_promtool_accepts_the_alert_rules() -> None:
    res = promtool("check", "rules", str(ALERTS))
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_fires_in_its_promtool_unit_test_and_stays_silent_before() -> None:
    res = promtool("test", "rules", str(ALERT_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    checks = [c for t in tests for c in t.get("alert_rule_test") or []]
    for rule in alert_rules():
        name = rule["alert"]
        mine = [c for c in checks if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no promtool test sees it fire"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no promtool test sees it silent"


def test_the_short_for_copy_changes_only_the_for_clauses(tmp_path: Path) -> None:
    copy = with_short_for(ALERTS, tmp_path / "alerts.yaml", for_="2s")
    shipped, short = alert_rules(), alert_rules(copy)
    assert [r["alert"] for r in short] == [r["alert"] for r in shipped]
    assert all(r["for"] == "2s" for r in short)
    assert [{**r, "for": None} for r in short] == [{**r, "for": None} for r in shipped]
    res = promtool("check", "rules", str(copy))
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_dashboard_is_valid_and_promtool_parses_every_expression(tmp_path: Path) -> None:
    dash = dashboard()
    panels = list(dashboard_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] and dash["title"]
    exprs = dashboard_expressions(dash)
    assert len(exprs) >= 30
    for p in panels:
        if p["type"] != "row":
            assert p.get("targets"), f"panel {p['title']!r} has no query"
            assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']!r} ignores the data source variable"
    # every expression as a recording rule: promtool check rules parses its PromQL
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"egressgw_dashboard:expr_{i}", "expr": concrete(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump(rules))
    res = promtool("check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_is_explained_in_the_operations_guide() -> None:
    text = DOCS.read_text()
    missing = [r["alert"] for r in alert_rules() if f"`{r['alert']}`" not in text]
    assert not missing, f"docs/operations.md does not explain: {missing}"
