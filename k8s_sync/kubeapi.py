"""A thin raw-JSON layer over the official Kubernetes client: objects stay plain dicts (API JSON, camelCase).

Why: the typed client models cost a lot of CPU and memory for 10k pods, drop unknown fields and turn timestamps into
datetimes; our edge parsers (`appliance.api.manifests`, `appliance.api.validation`) want the API's own JSON. Every call
goes through `ApiClient.call_api(..., _preload_content=False)`, so authentication, TLS and proxies come from the
official
client's configuration (kubeconfig or in-cluster).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
#: connections per host: one per watch (about 10) plus status writes and lists in parallel
POOL_SIZE = 32


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


def make_api_client(kubeconfig: str | None = None) -> Any:
    """An official `ApiClient`: from `kubeconfig`, else $KUBECONFIG, else in-cluster, else ~/.kube/config."""
    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path:
            config.load_kube_config(config_file=path, client_configuration=cfg)
        else:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)
    if not cfg.verify_ssl:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    cfg.connection_pool_maxsize = POOL_SIZE
    return client.ApiClient(configuration=cfg)


class KubeApi:
    """Raw JSON calls. Thread-safe (the urllib3 pool is; we never use the client's `last_response`)."""

    def __init__(self, api_client: Any) -> None:
        self.client = api_client

    def _call(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
              content_type: str = "application/json", timeout: float | tuple[float, float] | None = 30.0) -> Any:
        params = [(k, v) for k, v in (query or {}).items() if v is not None and v != ""]
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            resp = self.client.call_api(
                path, method, query_params=params, header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                _request_timeout=timeout,
            )
        except ApiException as e:
            raise _api_error(e) from None
        return resp

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json", timeout: float | tuple[float, float] | None = 30.0) -> JSON:
        resp = self._call(method, path, query=query, body=body, content_type=content_type, timeout=timeout)
        try:
            raw = resp.data
        finally:
            resp.release_conn()
        result: JSON = json.loads(raw) if raw else {}
        return result

    def get(self, path: str, query: Mapping[str, Any] | None = None, timeout: float = 60.0) -> JSON:
        return self.request("GET", path, query=query, timeout=timeout)

    def create(self, path: str, body: JSON, query: Mapping[str, Any] | None = None) -> JSON:
        return self.request("POST", path, query=query, body=body)

    def replace(self, path: str, body: JSON) -> JSON:
        return self.request("PUT", path, body=body)

    def merge_patch(self, path: str, patch: JSON) -> JSON:
        return self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    def delete(self, path: str, query: Mapping[str, Any] | None = None) -> JSON:
        return self.request("DELETE", path, query=query)

    def open_stream(self, path: str, query: Mapping[str, Any], read_timeout: float) -> Any:
        """Open a watch: returns the urllib3 response (close it, or `shutdown()` it from another thread)."""
        return self._call("GET", path, query=query, timeout=(10.0, read_timeout))


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
