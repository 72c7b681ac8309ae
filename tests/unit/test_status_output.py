"""`egressgw status` output modes (table, wide, json, yaml, the --watch stream) and the kubectl plugin's own parts
(its help, the offline `validate`, `drain` without a cluster). The cluster side is tests/integration/sync/
test_kubectl_integration.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.cli import kubectl_plugin
from appliance.cli.status import render, render_table, stable_part

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_704_067_265.0  # 2024-01-01T00:01:05Z


def document() -> dict[str, Any]:
    return {
        "gateways": [{
            "name": "egw", "clusterDefault": True, "ready": True, "reason": "Ready", "message": "1 of 2 members alive",
            "tunnel": "wireguard",
            "members": [
                {"name": "gw1", "kind": "Node", "healthy": True, "eips": ["203.0.113.10"], "address": "198.51.100.11",
                 "leaseRenewTime": "2024-01-01T00:01:00.000000Z"},
                {"name": "gw2", "kind": "Appliance", "healthy": False, "eips": [], "address": "198.51.100.12",
                 "leaseRenewTime": "2024-01-01T00:00:00.000000Z"},
            ],
            "eips": [{"ip": "203.0.113.10", "primary": "gw1", "backups": ["gw2"]}],
            "ipUsage": {"ipv4Total": 4, "ipv4Free": 3},
        }],
        "policies": [{"kind": "EgressPolicy", "namespace": "shop", "name": "web", "state": "Ready", "reason": "",
                      "message": "EIP assigned", "gateway": "egw", "eip": {"ipv4": "203.0.113.10"}, "primary": "gw1",
                      "useNodeIP": False, "selectedIPs": 2, "writtenState": "Pending"}],
        "clusterCidrs": ["100.64.0.0/16"],
        "problems": [],
        "statusWriter": {"holder": "gw1", "renewTime": "2024-01-01T00:01:03.000000Z"},
    }


def test_default_table_has_no_wide_columns() -> None:
    text = render(document(), "table", now=NOW)
    assert text == render_table(document())
    lines = text.splitlines()
    assert lines[0] == "GATEWAYS"
    assert lines[1].split() == ["NAME", "READY", "MEMBERS", "IPV4", "FREE", "IPV6", "FREE"]
    assert lines[2].split() == ["egw", "(default)", "yes", "gw1,", "gw2", "(down)", "3/4", "-"]
    assert "MEMBERS" not in lines[3:] and "STATUS WRITER" not in text and "WRITTEN" not in text
    assert next(ln for ln in lines if ln.startswith("EgressPolicy")).split() == [
        "EgressPolicy", "shop", "web", "Ready", "egw", "203.0.113.10", "gw1", "2"]


def test_wide_adds_members_written_state_and_the_writer() -> None:
    text = render(document(), "wide", now=NOW)
    sections = {s.splitlines()[0]: s.splitlines()[1:] for s in text.strip().split("\n\n")}
    assert sections["GATEWAYS"][0].split()[-2:] == ["TUNNEL", "MESSAGE"]
    assert "wireguard" in sections["GATEWAYS"][1] and "1 of 2 members alive" in sections["GATEWAYS"][1]
    members = {r.split()[1]: r.split() for r in sections["MEMBERS"][1:]}
    assert members["gw1"][2:6] == ["Node", "198.51.100.11", "yes", "5s"]
    assert members["gw2"][2:6] == ["Appliance", "198.51.100.12", "no", "1m5s"]
    assert members["gw1"][-1] == "203.0.113.10"
    policy = sections["POLICIES"][1].split()
    assert policy[8:10] == ["Pending", "EIP"]  # written state differs from the computed Ready: the writer is behind
    assert text.strip().splitlines()[-1] == "STATUS WRITER: gw1 (lease renewed 2s ago)"
    nobody = document()
    nobody["statusWriter"] = {"holder": "", "renewTime": ""}
    assert "none elected" in render(nobody, "wide", now=NOW)


def test_json_and_yaml_carry_the_document() -> None:
    doc = document()
    assert json.loads(render(doc, "json")) == doc
    assert yaml.safe_load(render(doc, "yaml")) == doc
    streamed = render(doc, "json", stream=True)
    assert streamed.count("\n") == 1 and json.loads(streamed) == doc
    docs = list(yaml.safe_load_all(render(doc, "yaml", stream=True) + render(doc, "yaml", stream=True)))
    assert docs == [doc, doc]


def test_watch_ignores_lease_renewals_only() -> None:
    a, b = document(), document()
    b["gateways"][0]["members"][0]["leaseRenewTime"] = "2024-01-01T00:02:00.000000Z"
    b["statusWriter"]["renewTime"] = "2024-01-01T00:02:01.000000Z"
    assert a != b and stable_part(a) == stable_part(b)
    c = copy.deepcopy(a)
    c["gateways"][0]["members"][1]["healthy"] = True
    assert stable_part(a) != stable_part(c)


def test_plugin_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_plugin.main([]) == 0
    out = capsys.readouterr().out
    for command in ("status", "explain", "drain", "undrain", "validate"):
        assert f"\n  {command} " in out
    with pytest.raises(SystemExit) as e:
        kubectl_plugin.main(["--help"])
    assert e.value.code == 0 and "--kubeconfig" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        kubectl_plugin.main(["frobnicate"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_plugin_validate_is_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_plugin.main(["validate", str(ROOT / "examples/gateway.yaml")]) == 0
    invalid = sorted((ROOT / "examples/invalid").glob("*.yaml"))[0]
    assert kubectl_plugin.main(["validate", str(invalid)]) == 1
    capsys.readouterr()
    assert kubectl_plugin.main(["validate", "--context", "prod", str(ROOT / "examples/gateway.yaml")]) == 2
    assert "reads files only" in capsys.readouterr().err


def test_plugin_drain_without_a_cluster_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-kubeconfig"
    code = kubectl_plugin.main(["drain", "gw1", "--kubeconfig", str(missing)])
    assert code == 1 and "cannot change member 'gw1'" in capsys.readouterr().err
