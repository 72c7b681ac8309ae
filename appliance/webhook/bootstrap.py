"""Certificate bootstrap of `egressgw webhook`, with no cert-manager: find or make the CA and serving certificate,
store them where every replica finds them, and make the API server trust the CA.

Storage is either a Secret (`SecretStore`: shared by the replicas of the Deployment; the first replica to start
creates it, the others read it; two racing creators resolve by the API server's 409: the loser re-reads) or a
directory (`DirStore`: files `ca.crt`, `ca.key`, `tls.crt`, `tls.key`, e.g. a mounted Secret managed by someone
else, or a single process outside the cluster). A stored CA is kept as long as it is usable, so a serving
certificate re-issued for new names or before its end changes nothing the API server holds; only a new CA changes
the `caBundle`, and `patch_ca_bundle` writes it into every webhook of the named ValidatingWebhookConfiguration
(read, change, replace with the read resourceVersion; retried on 409).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.core.events import EventLogger
from appliance.webhook.certificates import CertBundle, ca_usable, issue, needs_new_serving
from k8s_sync.kubeapi import ApiError, KubeApi, Resource

log = EventLogger("egressgw.webhook")

SECRETS = Resource(kind="Secret", group="", version="v1", plural="secrets", namespaced=True)
WEBHOOK_CONFIGS = Resource(kind="ValidatingWebhookConfiguration", group="admissionregistration.k8s.io",
                           version="v1", plural="validatingwebhookconfigurations", namespaced=False)
#: file/Secret key of each part of the bundle
KEYS = {"ca_cert": "ca.crt", "ca_key": "ca.key", "cert": "tls.crt", "key": "tls.key"}
CONFLICT_RETRIES = 5


class BootstrapError(RuntimeError):
    """The certificates could not be stored or the webhook configuration not patched (the message says which)."""


class CertStore(Protocol):
    """Where the bundle lives. `load` returns None when nothing (complete) is stored."""

    def load(self) -> CertBundle | None: ...

    def save(self, bundle: CertBundle) -> CertBundle:
        """Store `bundle`; returns what is stored afterwards (another replica's bundle when it won a race)."""
        ...


def _bundle(parts: dict[str, bytes]) -> CertBundle | None:
    if not all(parts.get(k) for k in KEYS):
        return None
    return CertBundle(**{k: parts[k] for k in KEYS})


@dataclass(frozen=True, slots=True)
class DirStore:
    path: Path

    def load(self) -> CertBundle | None:
        parts = {k: (self.path / f).read_bytes() for k, f in KEYS.items() if (self.path / f).is_file()}
        return _bundle(parts)

    def save(self, bundle: CertBundle) -> CertBundle:
        self.path.mkdir(parents=True, exist_ok=True)
        for attr, name in KEYS.items():
            target = self.path / name
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as f:
                f.write(getattr(bundle, attr))
            os.replace(tmp, target)  # mkstemp made it 0600
        return bundle


class SecretStore:
    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self._resource_version = ""

    def _get(self) -> dict[str, Any] | None:
        try:
            return self.api.get(SECRETS.path(self.namespace, self.name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise BootstrapError(f"cannot read Secret {self.namespace}/{self.name}: {e}") from e

    def load(self) -> CertBundle | None:
        secret = self._get()
        if secret is None:
            self._resource_version = ""
            return None
        self._resource_version = str((secret.get("metadata") or {}).get("resourceVersion") or "")
        data = secret.get("data") or {}
        try:
            parts = {k: base64.b64decode(data.get(f) or "") for k, f in KEYS.items()}
        except ValueError:
            return None
        return _bundle(parts)

    def save(self, bundle: CertBundle) -> CertBundle:
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/name": "egressgw-webhook"}},
            "data": {f: base64.b64encode(getattr(bundle, k)).decode() for k, f in KEYS.items()},
        }
        try:
            if self._resource_version:
                body["metadata"]["resourceVersion"] = self._resource_version
                self.api.replace(SECRETS.path(self.namespace, self.name), body)
            else:
                self.api.create(SECRETS.path(self.namespace), body)
        except ApiError as e:
            if e.status == 409:  # another replica stored its bundle first: serve that one
                log.info("webhook.certificates_raced", secret=f"{self.namespace}/{self.name}")
                stored = self.load()
                if stored is not None:
                    return stored
            raise BootstrapError(f"cannot store Secret {self.namespace}/{self.name}: {e}") from e
        return bundle


def ensure_certificates(store: CertStore, names: Sequence[str], *, now: dt.datetime | None = None) -> CertBundle:
    """The bundle to serve: the stored one when usable for `names`; else a new serving certificate from the stored CA
    (when usable), else a new CA and serving certificate; stored before it is returned."""
    now = now or dt.datetime.now(dt.UTC)
    stored = store.load()
    if stored is not None:
        why = needs_new_serving(stored, names, now)
        if not why:
            return stored
        keep_ca = ca_usable(stored, now)
        log.info("webhook.certificate_reissued", reason=why, new_ca=not keep_ca)
        return store.save(issue(names, now=now, ca=stored if keep_ca else None))
    log.info("webhook.certificates_created", names=list(names))
    return store.save(issue(names, now=now))


def patch_ca_bundle(api: KubeApi, config_name: str, ca_pem: bytes) -> int:
    """Set `caBundle` of every webhook of the ValidatingWebhookConfiguration `config_name` to `ca_pem`. Returns how
    many webhooks changed (0 when all already had it)."""
    wanted = base64.b64encode(ca_pem).decode()
    path = WEBHOOK_CONFIGS.path(name=config_name)
    for _ in range(CONFLICT_RETRIES):
        try:
            config = api.get(path)
        except ApiError as e:
            raise BootstrapError(f"cannot read ValidatingWebhookConfiguration {config_name}: {e}") from e
        webhooks = config.get("webhooks") or []
        changed = 0
        for webhook in webhooks:
            client_config = webhook.setdefault("clientConfig", {})
            if client_config.get("caBundle") != wanted:
                client_config["caBundle"] = wanted
                changed += 1
        if not changed:
            return 0
        try:
            api.replace(path, config)
        except ApiError as e:
            if e.status == 409:
                continue  # changed meanwhile (another replica): read again
            raise BootstrapError(f"cannot update ValidatingWebhookConfiguration {config_name}: {e}") from e
        log.info("webhook.ca_bundle_patched", config=config_name, webhooks=changed)
        return changed
    raise BootstrapError(f"ValidatingWebhookConfiguration {config_name} kept changing ({CONFLICT_RETRIES} conflicts)")
