"""The webhook's certificates and its HTTPS server, on loopback with a real TLS handshake (no API server: the cluster
lister is a function here; tests/integration/webhook/ runs it against the real one)."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from appliance.cli.validate import load_documents
from appliance.cli.webhook import UsageError, parse_listen, service_names
from appliance.core.waiting import wait_until
from appliance.webhook.bootstrap import DirStore, ensure_certificates
from appliance.webhook.certificates import SERVING_VALIDITY, CertBundle, ca_usable, issue, needs_new_serving
from appliance.webhook.server import WebhookServer, server_context

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def sans(bundle: CertBundle) -> set[str]:
    ext = x509.load_pem_x509_certificate(bundle.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return {str(v) for v in ext.value.get_values_for_type(x509.DNSName)} | \
        {str(v) for v in ext.value.get_values_for_type(x509.IPAddress)}


def test_a_new_bundle_covers_its_names_and_is_signed_by_its_ca() -> None:
    bundle = issue(["hook", "hook.ns.svc", "127.0.0.1"], now=NOW)
    assert sans(bundle) == {"hook", "hook.ns.svc", "127.0.0.1"}
    x509.load_pem_x509_certificate(bundle.cert).verify_directly_issued_by(
        x509.load_pem_x509_certificate(bundle.ca_cert))
    assert needs_new_serving(bundle, ["hook.ns.svc", "127.0.0.1"], NOW) == ""
    assert needs_new_serving(bundle, ["other.ns.svc"], NOW) == "does not cover other.ns.svc"
    assert ca_usable(bundle, NOW)


def test_a_serving_certificate_near_its_end_is_renewed_with_the_same_ca(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "tls")
    first = ensure_certificates(store, ["hook.ns.svc"], now=NOW)
    assert ensure_certificates(store, ["hook.ns.svc"], now=NOW) == first  # stored and reused
    later = NOW + SERVING_VALIDITY - dt.timedelta(days=10)
    assert needs_new_serving(first, ["hook.ns.svc"], later).startswith("valid until")
    renewed = ensure_certificates(store, ["hook.ns.svc"], now=later)
    assert renewed.cert != first.cert and renewed.ca_cert == first.ca_cert  # the caBundle need not change
    assert store.load() == renewed
    assert {p.name for p in (tmp_path / "tls").iterdir()} == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert all((p.stat().st_mode & 0o077) == 0 for p in (tmp_path / "tls").iterdir())


def test_a_new_name_gets_a_new_serving_certificate_from_the_same_ca(tmp_path: Path) -> None:
    store = DirStore(tmp_path)
    first = ensure_certificates(store, ["hook.ns.svc"], now=NOW)
    second = ensure_certificates(store, ["hook.ns.svc", "127.0.0.1"], now=NOW)
    assert second.ca_cert == first.ca_cert and sans(second) == {"hook.ns.svc", "127.0.0.1"}


def test_a_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    a, b = issue(["hook"], now=NOW), issue(["hook"], now=NOW)
    mixed = CertBundle(ca_cert=a.ca_cert, ca_key=a.ca_key, cert=b.cert, key=b.key)
    assert needs_new_serving(mixed, ["hook"], NOW) == "not signed by the stored CA"


@pytest.mark.parametrize(("text", "expected"), [
    (":8443", ("::", 8443)), ("127.0.0.1:9443", ("127.0.0.1", 9443)), ("[::1]:8443", ("::1", 8443)),
])
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8443", "host:", "host:99999", "host:http"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="--listen"):
        parse_listen(text)


def test_service_names() -> None:
    assert service_names("hook.egressgw-system") == ("hook", "hook.egressgw-system", "hook.egressgw-system.svc")
    with pytest.raises(UsageError):
        service_names("hook")


class Served:
    def __init__(self, server: WebhookServer, ca: bytes) -> None:
        self.server = server
        self.client_context = ssl.create_default_context(cadata=ca.decode())

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=self.client_context, timeout=30)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            text = raw.decode()
            return resp.status, json.loads(text) if resp.getheader("Content-Type") == "application/json" else text
        finally:
            conn.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[], Sequence[Mapping[str, Any]]]], Served]]:
    started: list[tuple[WebhookServer, threading.Thread]] = []

    def start(lister: Callable[[], Sequence[Mapping[str, Any]]]) -> Served:
        bundle = issue(["127.0.0.1"], now=dt.datetime.now(dt.UTC))
        server = WebhookServer(("127.0.0.1", 0), server_context(bundle), lister)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        return Served(server, bundle.ca_cert)

    yield start
    for server, thread in started:
        if not server.stopping:
            server.stop()
        thread.join(timeout=30)


def review(obj: Any, namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-7", "operation": "CREATE", "object": obj, "namespace": namespace}}


def test_the_server_answers_reviews_over_tls_and_reports_health(serve: Any) -> None:
    gw, policy = load_documents(EXAMPLES / "invalid" / "policy-eip-outside-pool.yaml")
    served = serve(lambda: [gw])
    assert served.request("GET", "/healthz") == (200, "ok\n")
    code, answer = served.request("POST", "/validate", review(policy))
    assert code == 200 and answer["response"]["uid"] == "u-7" and answer["response"]["allowed"] is False
    assert answer["response"]["status"]["message"] == ("EgressPolicy/shop/policy-eip-outside-pool: spec.egressIP.ipv4: "
                                                       "203.0.113.200 is not in the ipv4 pool of EgressGateway "
                                                       "policy-eip-outside-pool")
    code, answer = served.request("POST", "/validate", {"kind": "Pod"})
    assert code == 400 and "not an AdmissionReview" in answer["error"]
    assert served.request("GET", "/nothing")[0] == 404


def test_when_the_cluster_cannot_be_read_the_object_is_checked_alone(serve: Any) -> None:
    def unreadable() -> list[Any]:
        raise ConnectionRefusedError("api server away")

    served = serve(unreadable)
    (bad,) = load_documents(EXAMPLES / "invalid" / "negative-priority.yaml")
    _, answer = served.request("POST", "/validate", review(bad))
    assert answer["response"]["allowed"] is False
    assert "spec.priority: -1 is below the minimum 0" in answer["response"]["status"]["message"]
    _, policy = load_documents(EXAMPLES / "invalid" / "policy-eip-outside-pool.yaml")
    _, answer = served.request("POST", "/validate", review(policy))
    assert answer["response"]["allowed"] is True  # the gateway it names is not known: only a cross-object rule


def test_stop_lets_a_request_being_answered_finish(serve: Any) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_lister() -> list[Any]:
        entered.set()
        release.wait(60)
        return []

    served = serve(slow_lister)
    (policy,) = load_documents(EXAMPLES / "tenant-policy.yaml")
    answers: list[tuple[int, Any]] = []
    client = threading.Thread(target=lambda: answers.append(served.request("POST", "/validate", review(policy))))
    client.start()
    assert entered.wait(60)
    unfinished: list[int] = []
    stopper = threading.Thread(target=lambda: unfinished.append(served.server.stop(timeout=60)))
    stopper.start()
    wait_until(lambda: served.server.stopping, timeout=30, what="the server to begin stopping")
    assert stopper.is_alive()  # waiting for the request in flight
    release.set()
    stopper.join(60)
    client.join(60)
    assert unfinished == [0]
    assert answers and answers[0][0] == 200 and answers[0][1]["response"]["allowed"] is True
    with pytest.raises(OSError):
        served.request("GET", "/healthz")
