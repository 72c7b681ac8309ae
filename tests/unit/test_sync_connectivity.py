"""The API client fails fast and says so: no urllib3 retries, short connect timeout, TCP keepalive on every pooled
connection, `Connectivity` (network failure vs. an answer, the recovery edge) and the rate-limited lease failure log."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from k8s_sync.kubeapi import (
    CONNECT_TIMEOUT_S,
    KEEPALIVE,
    ApiError,
    Connectivity,
    KubeApi,
    is_network_error,
    make_api_client,
)
from k8s_sync.leases import LEASE_TIMEOUT, FailureLog, MemberIdentity, MemberLease

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://198.51.100.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_the_client_has_no_urllib3_retries_and_keepalive_on_its_sockets(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    api_client = make_api_client(str(path))
    assert api_client.configuration.retries is False
    pool_manager = api_client.rest_client.pool_manager
    retries = pool_manager.connection_pool_kw["retries"]
    assert retries is False or retries.total is False  # urllib3 may normalise it to Retry(total=False)
    options = pool_manager.connection_pool_kw["socket_options"]
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE.idle_s) in options
    assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in options  # urllib3's own default is kept
    # the pool built for the server carries them to each connection it opens
    pool = pool_manager.connection_from_url("https://198.51.100.1:6443")
    assert pool.conn_kw["socket_options"] == options


class ScriptedClient:
    """`call_api` raises or answers from a script; records the timeouts it was given."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.timeouts: list[Any] = []

    def call_api(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        self.timeouts.append(_request_timeout)
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


class Answer:
    def __init__(self, data: bytes = b"{}") -> None:
        self.data = data

    def release_conn(self) -> None:
        pass


def test_connectivity_goes_down_on_network_failures_only_and_reports_its_recovery() -> None:
    refused = urllib3.exceptions.NewConnectionError(None, "refused")  # type: ignore[arg-type]
    conflict = ApiException(status=409, reason="Conflict")
    client = ScriptedClient([refused, TimeoutError("t"), conflict, Answer()])
    times = iter([10.0, 11.0])
    conn = Connectivity(clock=lambda: next(times))
    api = KubeApi(client, conn)
    recovered: list[float] = []
    conn.on_recovered(recovered.append)
    with pytest.raises(urllib3.exceptions.NewConnectionError):
        api.get("/api/v1/namespaces")
    with pytest.raises(TimeoutError):
        api.get("/api/v1/namespaces")
    assert not conn.reachable and conn.down_since == 10.0 and conn.failures == 2
    with pytest.raises(ApiError):
        api.get("/api/v1/namespaces")  # a 409 is an answer: the server is reachable again
    assert conn.reachable and recovered == [10.0]
    api.get("/api/v1/namespaces")
    assert recovered == [10.0]  # only the edge is reported
    assert all(t[0] == CONNECT_TIMEOUT_S for t in client.timeouts)


def test_network_error_classification() -> None:
    assert is_network_error(ConnectionResetError())
    assert is_network_error(urllib3.exceptions.ProtocolError("Connection broken"))
    assert is_network_error(urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"))  # type: ignore[arg-type]
    assert is_network_error(ApiError(0, "SSLError"))
    assert not is_network_error(ApiError(503, "Service Unavailable"))
    assert not is_network_error(ValueError("bad JSON"))


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    return [(r.egressgw_event, r.egressgw_fields) for r in caplog.records  # type: ignore[attr-defined]
            if getattr(r, "egressgw_event", "").startswith("lease.renew")]


def test_failure_log_is_rate_limited_and_reports_the_recovery(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    flog = FailureLog("lease.renew_failed", every=30.0, clock=lambda: now[0], loop="member-lease-g1")
    with caplog.at_level(logging.INFO):
        for _ in range(12):  # a renewal every 3 s for 33 s
            flog.failed(TimeoutError("connect timed out"))
            now[0] += 3.0
        flog.succeeded()
        flog.succeeded()
    lines = failure_lines(caplog)
    assert [e for e, _ in lines] == ["lease.renew_failed", "lease.renew_failed", "lease.renew_recovered"]
    assert lines[0][1]["failures"] == 1 and lines[0][1]["network"] is True
    assert lines[1][1]["failures"] == 11 and lines[1][1]["failing_for_s"] == 30.0
    assert lines[2][1]["failures"] == 12 and lines[2][1]["loop"] == "member-lease-g1"


class RecordingApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def merge_patch(self, path: str, patch: Any, timeout: Any = None) -> Any:
        self.calls.append(("PATCH", timeout))
        return {}


def test_member_lease_renewal_uses_the_short_lease_timeout() -> None:
    api = RecordingApi()
    MemberLease(api, MemberIdentity(name="g1")).renew_once()  # type: ignore[arg-type]
    assert api.calls == [("PATCH", LEASE_TIMEOUT)]
    assert LEASE_TIMEOUT[0] == CONNECT_TIMEOUT_S
