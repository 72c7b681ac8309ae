"""`egressgw agent rotate-key`: the next WireGuard key is generated next to the current one (other slot, 0600)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.datapath.apply.wireguard_keyfiles import CURRENT_KEY_FILE, NEXT_KEY_FILE, read_key_file
from appliance.datapath.plan.wireguard_keys import key_slot


def test_rotate_key_writes_the_next_key_in_the_other_slot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"node_name: worker1\nstate_dir: {tmp_path / 'state'}\n")
    assert main(["agent", "rotate-key", "--config", str(cfg)]) == 0
    wg = tmp_path / "state" / "wireguard"
    current, nxt = read_key_file(wg / CURRENT_KEY_FILE), read_key_file(wg / NEXT_KEY_FILE)
    assert key_slot(current.public_key()) != key_slot(nxt.public_key())
    assert stat.S_IMODE((wg / NEXT_KEY_FILE).stat().st_mode) == 0o600
    assert str(nxt.public_key()) in capsys.readouterr().out
    # idempotent: asking again keeps the pending key
    assert main(["agent", "rotate-key", "--config", str(cfg)]) == 0
    assert read_key_file(wg / NEXT_KEY_FILE).public_key() == nxt.public_key()


def test_rotate_key_needs_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "rotate-key"]) == 2
    assert "--config" in capsys.readouterr().err
