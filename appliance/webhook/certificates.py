"""The webhook's own small PKI: a CA and a serving certificate signed by it, made with `cryptography`.

Why its own CA and not cert-manager: the webhook must install with plain manifests. The API server trusts the CA
through the `caBundle` of the ValidatingWebhookConfiguration (`appliance.webhook.bootstrap` patches it), so the CA
outlives serving certificates: re-issuing a serving certificate with the same CA changes nothing the API server or the
other replicas hold. Keys are ECDSA P-256 (small, fast, accepted by Go's TLS stack).

`CertBundle` holds PEM bytes; `issue` makes a serving certificate (and a CA when none is given); `needs_new_serving`
and `ca_usable` say whether what is stored can still be used, given the names it must cover and the time.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: how long a new CA is valid; it is replaced (with a new caBundle) only when it comes within RENEW_BEFORE of the end
CA_VALIDITY = dt.timedelta(days=3650)
#: how long a new serving certificate is valid
SERVING_VALIDITY = dt.timedelta(days=365)
#: a certificate closer than this to its end is replaced at start
RENEW_BEFORE = dt.timedelta(days=30)
#: tolerated clock difference between this node and the API server's
CLOCK_SKEW = dt.timedelta(minutes=5)


class CertificateError(ValueError):
    """Stored PEM data that cannot be read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CertBundle:
    """PEM bytes: the CA (certificate and key) and the serving certificate and key it signed."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"egressgw-webhook-ca-{int(now.timestamp())}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _load_ca(bundle: CertBundle) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(bundle.ca_cert)
        key = serialization.load_pem_private_key(bundle.ca_key, password=None)
    except ValueError as e:
        raise CertificateError(f"stored CA cannot be read: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("stored CA key is not an ECDSA key")
    return cert, key


def issue(names: Sequence[str], *, now: dt.datetime, ca: CertBundle | None = None) -> CertBundle:
    """A serving certificate for `names` (DNS names or IP addresses; the first is the subject), signed by `ca`'s CA,
    or by a new CA when `ca` is None."""
    if not names:
        raise ValueError("a serving certificate needs at least one name")
    ca_cert, ca_key = _load_ca(ca) if ca is not None else _new_ca(now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(min(now + SERVING_VALIDITY,
                                                                    ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_san(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return CertBundle(ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM), ca_key=_key_pem(ca_key),
                      cert=cert.public_bytes(serialization.Encoding.PEM), key=_key_pem(key))


def _fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now + CLOCK_SKEW and now + RENEW_BEFORE < cert.not_valid_after_utc


def ca_usable(bundle: CertBundle, now: dt.datetime) -> bool:
    """The stored CA can sign (readable, a CA, not near its end)."""
    try:
        cert, _ = _load_ca(bundle)
    except CertificateError:
        return False
    return _fresh(cert, now)


def needs_new_serving(bundle: CertBundle, names: Sequence[str], now: dt.datetime) -> str:
    """Why the stored serving certificate cannot be served ('' when it can): unreadable, not signed by the stored
    CA, near its end, or missing one of `names`."""
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert)
        serialization.load_pem_private_key(bundle.key, password=None)
        ca_cert, _ = _load_ca(bundle)
    except (ValueError, CertificateError) as e:
        return f"unreadable: {e}"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the stored CA"
    if not _fresh(cert, now):
        return f"valid until {cert.not_valid_after_utc:%Y-%m-%d}: renewing"
    try:
        present = {str(n) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                   .get_values_for_type(x509.DNSName)}
        present |= {str(a) for a in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                    .get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        present = set()
    missing = [n for n in names if _canonical(n) not in present]
    return f"does not cover {', '.join(missing)}" if missing else ""


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name
