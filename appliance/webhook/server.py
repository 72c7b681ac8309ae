"""The HTTPS server of `egressgw webhook`: AdmissionReview in, `appliance.api.admission.decide` out, and a health
endpoint. Standard library only (`http.server`, `ssl`).

- `POST /validate`: the body is an AdmissionReview (v1 or v1beta1); the egressgw.io objects currently in the cluster
  are listed (`ClusterLister`, one paged list per kind, per request: a quorum read, so `kubectl apply` of two objects
  in a row sees the first when admitting the second), then the pure decision runs. If the list fails, the object is
  checked on its own (every per-object rule still applies; only the cross-object rules are skipped) and the event
  `webhook.cluster_unreadable` is logged. A body that is not a review gets 400.
- `GET /healthz`: 200 `ok` while serving, 503 once stopping.
- TLS handshakes run in the connection's own thread (never in the accept loop), with a timeout, so a slow or broken
  client cannot hold up the others.
- Graceful stop (`WebhookServer.stop`): stop accepting, let every request already being answered finish (bounded by
  `DRAIN_TIMEOUT_S`), then close. Idle keep-alive connections are not waited for (the API server reconnects).
"""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from appliance.api.admission import ReviewError, decide, parse_review, review_response
from appliance.core.events import EventLogger, error_text
from appliance.webhook.certificates import CertBundle
from k8s_sync.kubeapi import KubeApi
from k8s_sync.resources import RESOURCES

log = EventLogger("egressgw.webhook")

EGRESS_KINDS = ("EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo")
VALIDATE_PATH = "/validate"
HEALTH_PATH = "/healthz"
#: the API server sends at most ~3 MiB (an object of up to 1.5 MiB, twice on UPDATE); refuse more
MAX_BODY = 4 * 1024 * 1024
#: seconds a connection may take for its TLS handshake or between requests
CONNECTION_TIMEOUT_S = 10.0
#: seconds `stop` waits for requests being answered
DRAIN_TIMEOUT_S = 10.0
LIST_PAGE = 500

#: the egressgw.io objects in the cluster now (raises when they cannot be read)
ClusterLister = Callable[[], Sequence[Mapping[str, Any]]]


def list_egress_objects(api: KubeApi) -> list[dict[str, Any]]:
    """Every egressgw.io object in the cluster (each kind listed in pages; apiVersion and kind filled in)."""
    out: list[dict[str, Any]] = []
    for kind in EGRESS_KINDS:
        resource = RESOURCES[kind]
        token = ""
        while True:
            page = api.get(resource.path(), {"limit": LIST_PAGE, "continue": token})
            for item in page.get("items") or ():
                out.append({"apiVersion": resource.api_version, "kind": kind, **item})
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                break
    return out


def server_context(bundle: CertBundle) -> ssl.SSLContext:
    """A TLS server context serving `bundle`'s certificate (TLS 1.2 or later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="egressgw-webhook-") as tmp:  # 0700: load_cert_chain wants files
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(bundle.cert)
        key.touch(mode=0o600)
        key.write_bytes(bundle.key)
        context.load_cert_chain(cert, key)
    return context


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_S
    server: WebhookServer

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook.http", client=self.client_address[0], msg=format % args)

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != HEALTH_PATH:
            self._send(404, b"not found\n", "text/plain")
        elif self.server.stopping:
            self._send(503, b"stopping\n", "text/plain")
        else:
            self._send(200, b"ok\n", "text/plain")

    def do_POST(self) -> None:
        with self.server.in_flight():
            self._validate()

    def _validate(self) -> None:
        if self.path.split("?", 1)[0] != VALIDATE_PATH:
            self._send(404, b"not found\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._send(411, b"Content-Length required\n", "text/plain")
            return
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            self._send(413, b"body too large or empty\n", "text/plain")
            return
        try:
            request = parse_review(json.loads(self.rfile.read(length)))
        except (ValueError, ReviewError) as e:
            self._send(400, json.dumps({"error": str(e)}).encode())
            return
        existing: Sequence[Mapping[str, Any]] = ()
        try:
            existing = self.server.lister()
        except Exception as e:  # any failure to read (API error, network): decide on the object alone
            log.warning("webhook.cluster_unreadable", error=error_text(e))
        decision = decide(request, existing)
        answer = review_response(request, decision)
        obj = request.obj or {}
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        emit = log.info if decision.allowed else log.warning
        emit("webhook.allowed" if decision.allowed else "webhook.denied", uid=request.uid,
             operation=request.operation, kind=obj.get("kind"), namespace=request.namespace,
             name=(meta or {}).get("name"), problems=[p.field for p in decision.problems],
             warnings=len(decision.warnings))
        self._send(200, json.dumps(answer).encode())


class WebhookServer(ThreadingHTTPServer):
    """The webhook's HTTPS server. `serve_forever()` in one thread, `stop()` from another."""

    daemon_threads = True  # idle keep-alive connections never hold up the exit; `stop` waits for requests instead
    block_on_close = False

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, lister: ClusterLister) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.context = context
        self.lister = lister
        self.stopping = False
        self._busy = 0
        self._idle = threading.Condition()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # `::` takes IPv4 too
        super().server_bind()

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = self.socket.accept()
        # the handshake happens in the connection's thread (`_Handler.setup`), never in the accept loop
        return self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("webhook.connection_failed", client=str(client_address[0]) if client_address else "")

    def in_flight(self) -> _InFlight:
        return _InFlight(self)

    def _enter(self) -> None:
        with self._idle:
            self._busy += 1

    def _leave(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self, timeout: float = DRAIN_TIMEOUT_S) -> int:
        """Stop accepting, wait (up to `timeout`) for requests being answered, close. Returns how many were still
        running when the wait ended (0 = a clean drain)."""
        self.stopping = True
        self.shutdown()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            busy = self._busy
        self.server_close()
        return busy


class _InFlight:
    def __init__(self, server: WebhookServer) -> None:
        self.server = server

    def __enter__(self) -> None:
        self.server._enter()

    def __exit__(self, *exc: object) -> None:
        self.server._leave()
