"""wireguard-go control sockets live in one host-wide directory while interfaces live in namespaces: the applier
may remove a stale socket before starting wireguard-go, never one a live wireguard-go (in another namespace, e.g.
another lab with the same interface names) still serves."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.datapath.apply import wireguard as wireguard_applier
from appliance.datapath.apply.wireguard import Backend, CommandError, WireguardApplier, control_socket_in_use


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(wireguard_applier, "WG_RUN_DIR", tmp_path)
    return tmp_path


@pytest.fixture
def live_socket(run_dir: Path) -> Iterator[Path]:
    path = run_dir / "wgt-a0.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        yield path
    finally:
        server.close()


def stale_socket(run_dir: Path) -> Path:
    path = run_dir / "wgt-a0.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens (what a killed wireguard-go leaves behind)
    return path


def test_live_stale_and_missing_sockets(run_dir: Path, live_socket: Path) -> None:
    assert control_socket_in_use(live_socket)
    assert not control_socket_in_use(run_dir / "missing.sock")
    other = run_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(other))
    s.close()
    assert not control_socket_in_use(other)


def test_create_refuses_a_name_served_elsewhere_and_keeps_its_socket(
    live_socket: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_run(*_a: Any, **_k: Any) -> None:
        raise AssertionError("wireguard-go must not be started")

    monkeypatch.setattr(subprocess, "run", no_run)
    applier = WireguardApplier(prefix="wgt-", backend=Backend.WIREGUARD_GO)
    with pytest.raises(CommandError, match="unique on the host"):
        applier.create_interface("wgt-a0")
    assert live_socket.exists() and control_socket_in_use(live_socket)


def test_create_removes_a_stale_socket_before_starting(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = stale_socket(run_dir)
    started: list[list[str]] = []

    def fake_run(argv: list[str], **_k: Any) -> None:
        assert not path.exists(), "the stale socket must be gone before wireguard-go starts"
        started.append(argv)
        raise subprocess.CalledProcessError(1, argv)  # stop here: nothing is really started

    monkeypatch.setattr(subprocess, "run", fake_run)
    applier = WireguardApplier(prefix="wgt-", backend=Backend.WIREGUARD_GO)
    with pytest.raises(subprocess.CalledProcessError):
        applier.create_interface("wgt-a0")
    assert started and started[0][-1] == "wgt-a0"
