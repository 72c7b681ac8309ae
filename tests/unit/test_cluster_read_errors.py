"""`egressgw status` and `egressgw explain` exit 1 naming the command when the cluster cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli import main


@pytest.mark.parametrize("command", [["status"], ["explain", "-n", "default", "--pod", "p"]])
def test_unreadable_cluster_exits_1_naming_the_command(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main([*command, "--kubeconfig", str(tmp_path / "missing-kubeconfig")])
    assert rc == 1
    assert capsys.readouterr().err.startswith(f"egressgw {command[0]}: cannot read the cluster: ")
