"""ExaBGP config and BFD sidecar config rendering: golden files (set UPDATE_GOLDEN=1 to rewrite them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bgp.bfd_sidecar import render_bird_bfd_config
from bgp.exabgp_config import exabgp_environment, render_exabgp_config
from bgp.settings import parse_bgp_settings

GOLDEN = Path(__file__).parent / "test_bgp_golden"
BRIDGE = ["/opt/egressgw/bin/python", "-m", "bgp.api_bridge", "/run/egressgw/bgp/api.sock"]

CASES: dict[str, dict[str, Any]] = {
    "dual_stack": {
        "local_asn": 64513,
        "router_id": "198.51.100.11",
        "local_address": "198.51.100.11",
        "peers": [
            {"address": "2001:db8:198::1", "asn": 64512, "local_address": "2001:db8:198::11"},
            {"address": "198.51.100.1", "asn": 64512},
        ],
    },
    "md5_passive_cross_family": {
        "local_asn": 4200000001,
        "router_id": "198.51.100.12",
        "peers": [
            {"address": "198.51.100.1", "asn": 64512, "md5_password": "s3cret", "hold_time": 9, "passive": True,
             "families": ["ipv4-unicast", "ipv6-unicast"], "next_hop_ipv6": "2001:db8:198::12"},
        ],
        "bfd": {"min_tx_ms": 20, "min_rx_ms": 30, "multiplier": 5},
    },
}  # fmt: skip


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_exabgp_config_golden(case: str) -> None:
    check_golden(f"{case}.exabgp.conf", render_exabgp_config(parse_bgp_settings(CASES[case]), bridge_command=BRIDGE))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bird_bfd_config_golden(case: str) -> None:
    check_golden(f"{case}.bird-bfd.conf", render_bird_bfd_config(parse_bgp_settings(CASES[case])))


def test_rendering_ignores_peer_order() -> None:
    raw = CASES["dual_stack"]
    flipped = {**raw, "peers": list(reversed(raw["peers"]))}
    assert render_exabgp_config(parse_bgp_settings(raw), bridge_command=BRIDGE) == render_exabgp_config(
        parse_bgp_settings(flipped), bridge_command=BRIDGE
    )


@pytest.mark.parametrize("bad", [["python", "-m", "x"], ["/bin/py", "a b"], ["/bin/py", "a;b"], []])
def test_bridge_command_must_be_safe(bad: list[str]) -> None:
    with pytest.raises(ValueError):
        render_exabgp_config(parse_bgp_settings(CASES["dual_stack"]), bridge_command=bad)


def test_environment_runs_as_root_without_cli_and_with_acks() -> None:
    env = exabgp_environment(parse_bgp_settings(CASES["dual_stack"]))
    assert env["exabgp_daemon_user"] == "root" and env["exabgp_daemon_drop"] == "false"
    assert env["exabgp_api_ack"] == "true" and env["exabgp_api_cli"] == "false"
    assert env["exabgp_tcp_bind"] == ""  # nobody passive: no listening socket


def test_environment_listens_for_passive_peers() -> None:
    env = exabgp_environment(parse_bgp_settings(CASES["md5_passive_cross_family"]))
    assert env["exabgp_tcp_bind"] == "0.0.0.0 ::"


@pytest.mark.parametrize("case", sorted(CASES))
def test_exabgp_accepts_the_rendered_config(case: str, tmp_path: Path) -> None:
    """ExaBGP 5 itself parses what we render (its `validate` command, no sessions)."""
    conf = tmp_path / "exabgp.conf"
    bridge = [sys.executable, "-m", "bgp.api_bridge", str(tmp_path / "api.sock")]
    conf.write_text(render_exabgp_config(parse_bgp_settings(CASES[case]), bridge_command=bridge))
    exabgp = Path(sys.executable).parent / "exabgp"
    res = subprocess.run([str(exabgp), "validate", str(conf)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
