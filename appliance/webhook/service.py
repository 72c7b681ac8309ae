"""The webhook service: certificates first, then serve until told to stop, keeping the CA in the webhook config.

Order at start: certificates (`bootstrap.ensure_certificates`: the stored ones, or new ones stored for the other
replicas), then the HTTPS server, then the `caBundle` keeper: a thread that writes the CA into the named
ValidatingWebhookConfiguration at once and re-checks it every `CA_BUNDLE_RECHECK_S` (the configuration may be
created after the webhook, or re-applied by someone with another `caBundle`); a failed attempt is retried after
`CA_BUNDLE_RETRY_S`. Serving never waits for it: until the API server trusts the CA its calls fail and the
configuration's failurePolicy applies, exactly as when the webhook is down.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from appliance.core.events import EventLogger, error_text
from appliance.webhook.bootstrap import (
    BootstrapError,
    CertStore,
    DirStore,
    SecretStore,
    ensure_certificates,
    patch_ca_bundle,
)
from appliance.webhook.server import WebhookServer, list_egress_objects, server_context
from k8s_sync.kubeapi import KubeApi

log = EventLogger("egressgw.webhook")

#: seconds between checks that the webhook configuration still carries our CA
CA_BUNDLE_RECHECK_S = 60.0
#: seconds before retrying a failed caBundle write (configuration missing, API server away)
CA_BUNDLE_RETRY_S = 5.0


class StartError(RuntimeError):
    """The webhook cannot start (certificates, listening socket); the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    host: str
    port: int
    #: names the serving certificate covers (DNS names or IP addresses)
    names: tuple[str, ...]
    tls_dir: Path | None = None
    #: (namespace, name) of the Secret holding the certificates (used when tls_dir is None)
    secret: tuple[str, str] | None = None
    #: the ValidatingWebhookConfiguration whose caBundle we keep ("" = leave it alone)
    webhook_config: str = ""


def cert_store(settings: WebhookSettings, api: KubeApi) -> CertStore:
    if settings.tls_dir is not None:
        return DirStore(settings.tls_dir)
    if settings.secret is None:
        raise StartError("either a TLS directory or a Secret is needed for the certificates")
    return SecretStore(api, *settings.secret)


class CaBundleKeeper:
    """Keeps `caBundle` of one ValidatingWebhookConfiguration equal to our CA (see the module docstring)."""

    def __init__(self, api: KubeApi, config_name: str, ca_pem: bytes, stop: threading.Event) -> None:
        self.api, self.config_name, self.ca_pem, self.stop = api, config_name, ca_pem, stop
        self.written = threading.Event()  # set after the first successful check
        self._thread = threading.Thread(target=self._run, name="ca-bundle", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                patch_ca_bundle(self.api, self.config_name, self.ca_pem)
            except Exception as e:  # BootstrapError, or the client's network errors: keep trying, never die
                log.warning("webhook.ca_bundle_failed", config=self.config_name, error=error_text(e))
                self.stop.wait(CA_BUNDLE_RETRY_S)
                continue
            self.written.set()
            self.stop.wait(CA_BUNDLE_RECHECK_S)


def run_webhook(settings: WebhookSettings, api: KubeApi, stop: threading.Event) -> None:
    """Serve until `stop` is set, then drain and return. Raises StartError when it cannot start."""
    try:
        bundle = ensure_certificates(cert_store(settings, api), settings.names)
        context = server_context(bundle)
    except (BootstrapError, OSError, ValueError) as e:
        raise StartError(f"certificates: {error_text(e)}") from e
    try:
        server = WebhookServer((settings.host, settings.port), context, lambda: list_egress_objects(api))
    except OSError as e:
        raise StartError(f"cannot listen on {settings.host}:{settings.port}: {e}") from e
    thread = threading.Thread(target=server.serve_forever, name="https", daemon=True)
    thread.start()
    log.info("webhook.listening", address=f"{settings.host}:{server.port}", names=list(settings.names))
    if settings.webhook_config:
        CaBundleKeeper(api, settings.webhook_config, bundle.ca_cert, stop).start()
    stop.wait()
    log.info("webhook.stopping")
    unfinished = server.stop()
    thread.join(timeout=5)
    log.info("webhook.stopped", unfinished=unfinished)
