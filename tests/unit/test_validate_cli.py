"""`egressgw validate`: exit codes 0/1/2 and the `FILE: Kind/name: field.path: message` line format."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli.validate import validate_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))
LINE = re.compile(r"^(?P<file>[^:]+): (?P<ref>Egress\w+/[^:]+): (?P<field>[\w.\[\]']+): (?P<message>.+)$")


def run(*paths: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = validate_files(list(paths), out, err)
    return code, out.getvalue(), err.getvalue()


def test_examples_are_valid() -> None:
    assert len(EXAMPLES) >= 6
    assert run(*EXAMPLES) == (0, "", "")


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_each_invalid_example_names_its_field(path: Path) -> None:
    expected = re.search(r"^# expect: (\S+)$", path.read_text(), re.M)
    assert expected, f"{path} lacks an '# expect: field.path' line"
    code, out, err = run(path)
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert lines
    for line in lines:
        m = LINE.match(line)
        assert m, line
        assert m["file"] == str(path)
    assert expected[1] in [LINE.match(line)["field"] for line in lines], out  # type: ignore[index]


def test_cross_file_checks(tmp_path: Path) -> None:
    gw = tmp_path / "gw.yaml"
    gw.write_text("apiVersion: egressgw.io/v1alpha1\nkind: EgressGateway\nmetadata: {name: gw}\n"
                  "spec: {ippools: {ipv4: [203.0.113.128/28]}, nodeSelector: {selector: {matchLabels: {a: b}}}}\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: egressgw.io/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p, namespace: x}\n"
                      "spec: {egressGatewayName: gw, egressIP: {ipv4: 203.0.113.99},"
                      " appliedTo: {podSelector: {matchLabels: {app: a}}}}\n")
    assert run(policy)[0] == 0  # alone: the gateway is unknown, which is not an error (Pending)
    code, out, _ = run(gw, policy)
    assert code == 1
    assert out == f"{policy}: EgressPolicy/x/p: spec.egressIP.ipv4: 203.0.113.99 is not in the ipv4 pool of " \
                  "EgressGateway gw\n"


def test_unparseable_and_unreadable_files_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    code, out, err = run(bad)
    assert code == 2 and out == "" and str(bad) in err and "not valid YAML" in err
    code, out, err = run(tmp_path / "missing.yaml")
    assert code == 2 and "cannot read" in err


def test_non_object_document_exits_1(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    code, out, _ = run(f)
    assert code == 1 and out.startswith(f"{f}: Unknown/#0: not a Kubernetes object")


def test_console_script_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("{")
    cmd = [sys.executable, "-m", "appliance.cli", "validate"]
    assert subprocess.run([*cmd, *map(str, EXAMPLES)], capture_output=True).returncode == 0
    done = subprocess.run([*cmd, str(INVALID[0])], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout.startswith(str(INVALID[0]))
    assert subprocess.run([*cmd, str(bad)], capture_output=True).returncode == 2


def test_kind_list_is_expanded(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("apiVersion: v1\nkind: List\nitems:\n"
                 "- apiVersion: egressgw.io/v1alpha1\n  kind: EgressClusterInfo\n  metadata: {name: main}\n")
    code, out, _ = run(f)
    assert (code, out) == (1, f"{f}: EgressClusterInfo/main: metadata.name: EgressClusterInfo is a singleton: "
                              "its name must be 'default'\n")
