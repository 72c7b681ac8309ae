"""A thin raw-JSON layer over the official Kubernetes client: objects stay plain dicts (API JSON, camelCase).

Why: the typed client models cost a lot of CPU and memory for 10k pods, drop unknown fields and turn timestamps into
datetimes; our edge parsers (`appliance.api.manifests`, `appliance.api.validation`) want the API's own JSON. Every call
goes through `ApiClient.call_api(..., _preload_content=False)`, so authentication, TLS and proxies come from the
official client's configuration (kubeconfig or in-cluster).

Network behaviour (why it is not the client's default): the official client leaves urllib3's `Retry(total=3)` and
callers usually pass a 30 s timeout, so a call toward an unreachable API server hung for up to 4 x 30 s and said
nothing. Here every call fails fast and once: connect timeout `CONNECT_TIMEOUT_S`, a bounded read timeout, no urllib3
retries (the callers retry on their own schedule: the reflectors' loop, the lease loops). Every client socket has TCP
keepalive with short settings (`KEEPALIVE`), so a watch on a connection that died silently (a partition: no FIN, no
RST) fails within ~`KEEPALIVE.dead_after_s` instead of waiting for its read timeout or for the server's TCP
retransmissions after the network returns. `Connectivity` records whether the last call reached the server at all
(any HTTP answer counts, an error status too); the reflectors use its recovery edge to restart watches at once.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.connection import HTTPConnection

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
#: connections per host: one per watch (about 10) plus status writes and lists in parallel
POOL_SIZE = 32
#: TCP connect timeout of every call: an API server (or its load balancer) that does not accept a connection within
#: 2 s is treated as unreachable; the caller retries soon anyway (a SYN lost once is retransmitted after 1 s)
CONNECT_TIMEOUT_S = 2.0
#: read timeout (seconds without a byte) of ordinary calls; lists of 10k pods come in pages, each well within it
READ_TIMEOUT_S = 30.0
#: (connect, read) of ordinary requests
DEFAULT_TIMEOUT = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
Timeout = float | tuple[float, float] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Keepalive:
    """TCP keepalive of the client sockets: first probe after `idle_s` without traffic, then every `interval_s`;
    `count` unanswered probes close the connection (and `user_timeout_s` bounds unacknowledged data the same way)."""

    idle_s: int = 5
    interval_s: int = 1
    count: int = 3

    @property
    def dead_after_s(self) -> int:
        return self.idle_s + self.interval_s * self.count

    def socket_options(self) -> list[tuple[int, int, int]]:
        opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
        for name, value in (("TCP_KEEPIDLE", self.idle_s), ("TCP_KEEPINTVL", self.interval_s),
                            ("TCP_KEEPCNT", self.count), ("TCP_USER_TIMEOUT", self.dead_after_s * 1000)):
            if hasattr(socket, name):  # Linux has them all; elsewhere plain keepalive
                opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
        return opts


KEEPALIVE = Keepalive()


class ApiError(Exception):
    """A non-2xx answer from the API server: `status` (HTTP code, 0 when no answer), `reason`, `body` (dict)."""

    def __init__(self, status: int, reason: str, body: JSON | None = None) -> None:
        message = (body or {}).get("message") or reason
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.body: JSON = body or {}

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """One kind as the REST API names it."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


def make_api_client(kubeconfig: str | None = None, *, context: str | None = None) -> Any:
    """An official `ApiClient`: from `kubeconfig`, else $KUBECONFIG, else in-cluster, else ~/.kube/config.
    `context`: that kubeconfig context instead of the current one (never in-cluster then)."""
    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path:
            config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        elif context:
            config.load_kube_config(context=context, client_configuration=cfg)
        else:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)
    if not cfg.verify_ssl:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    cfg.connection_pool_maxsize = POOL_SIZE
    cfg.retries = False  # no urllib3 retries: fail fast and once, the callers retry (module docstring)
    api_client = client.ApiClient(configuration=cfg)
    set_socket_options(api_client, KEEPALIVE)
    return api_client


def set_socket_options(api_client: Any, keepalive: Keepalive) -> None:
    """TCP keepalive on every connection the client's pool opens from now on (the official client has no setting
    for socket options; its urllib3 `PoolManager` passes `connection_pool_kw` to each pool it creates)."""
    pool_manager = api_client.rest_client.pool_manager
    pool_manager.connection_pool_kw["socket_options"] = [
        *HTTPConnection.default_socket_options, *keepalive.socket_options()
    ]


def is_network_error(error: BaseException) -> bool:
    """True when a call failed without an answer from the API server: refused, reset, timed out, cut short, TLS.
    An `ApiError` with an HTTP status is an answer (the server is reachable); status 0 means none came."""
    if isinstance(error, ApiError):
        return error.status == 0
    return isinstance(error, (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException))


class Connectivity:
    """Whether the API server answered the last call. Thread-safe. `on_recovered` callbacks run (in the calling
    thread) on the first answer after a network failure, with the time the failures began (monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._callbacks: list[Callable[[float], None]] = []
        self.failures = 0

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    @property
    def down_since(self) -> float | None:
        return self._down_since

    def on_recovered(self, callback: Callable[[float], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[float], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def failed(self, error: BaseException) -> None:
        """Record a call's failure; only network errors (`is_network_error`) mark the server unreachable."""
        if not is_network_error(error):
            self.answered()
            return
        with self._lock:
            self.failures += 1
            if self._down_since is None:
                self._down_since = self._clock()

    def answered(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
            callbacks = list(self._callbacks) if since is not None else []
        for callback in callbacks:
            if since is not None:
                callback(since)


class KubeApi:
    """Raw JSON calls. Thread-safe (the urllib3 pool is; we never use the client's `last_response`)."""

    def __init__(self, api_client: Any, connectivity: Connectivity | None = None) -> None:
        self.client = api_client
        self.connectivity = connectivity or Connectivity()

    def _call(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
              content_type: str = "application/json", timeout: Timeout = DEFAULT_TIMEOUT) -> Any:
        params = [(k, v) for k, v in (query or {}).items() if v is not None and v != ""]
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            resp = self.client.call_api(
                path, method, query_params=params, header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                _request_timeout=timeout,
            )
        except ApiException as e:
            error = _api_error(e)
            self.connectivity.failed(error)
            raise error from None
        except Exception as e:
            self.connectivity.failed(e)
            raise
        self.connectivity.answered()
        return resp

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json", timeout: Timeout = DEFAULT_TIMEOUT) -> JSON:
        resp = self._call(method, path, query=query, body=body, content_type=content_type, timeout=timeout)
        try:
            raw = resp.data
        except Exception as e:
            self.connectivity.failed(e)
            raise
        finally:
            resp.release_conn()
        result: JSON = json.loads(raw) if raw else {}
        return result

    def get(self, path: str, query: Mapping[str, Any] | None = None, timeout: Timeout = DEFAULT_TIMEOUT) -> JSON:
        return self.request("GET", path, query=query, timeout=timeout)

    def create(self, path: str, body: JSON, query: Mapping[str, Any] | None = None,
               timeout: Timeout = DEFAULT_TIMEOUT) -> JSON:
        return self.request("POST", path, query=query, body=body, timeout=timeout)

    def replace(self, path: str, body: JSON, timeout: Timeout = DEFAULT_TIMEOUT) -> JSON:
        return self.request("PUT", path, body=body, timeout=timeout)

    def merge_patch(self, path: str, patch: JSON, timeout: Timeout = DEFAULT_TIMEOUT) -> JSON:
        return self.request("PATCH", path, body=patch, content_type=MERGE_PATCH, timeout=timeout)

    def delete(self, path: str, query: Mapping[str, Any] | None = None, timeout: Timeout = DEFAULT_TIMEOUT) -> JSON:
        return self.request("DELETE", path, query=query, timeout=timeout)

    def open_stream(self, path: str, query: Mapping[str, Any], read_timeout: float) -> Any:
        """Open a watch: returns the urllib3 response (close it, or `shutdown()` it from another thread)."""
        return self._call("GET", path, query=query, timeout=(CONNECT_TIMEOUT_S, read_timeout))


def iter_json_lines(resp: Any) -> Iterator[JSON]:
    """The watch events of an open stream, one JSON object per line, until the server ends it."""
    pending = b""
    for chunk in resp.stream(amt=None, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)


def _api_error(e: Any) -> ApiError:
    body: JSON = {}
    raw = getattr(e, "body", None)
    if raw:
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, dict):
                body = parsed
        except ValueError:
            body = {"message": raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)}
    return ApiError(int(getattr(e, "status", 0) or 0), str(getattr(e, "reason", "") or ""), body)
