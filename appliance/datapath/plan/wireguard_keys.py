"""WireGuard keys as values: the private-key type, public-key derivation, key slots and the published key list.

Why this module exists: a node's private key must stay on that node (never logged or put in a plan), while its
public key travels through the cluster (the Node annotation `egressgw.io/wireguard-public-key`, or an appliance's
Lease). Everything that holds a private key is a `PrivateKey`, whose repr and str are redacted, so an accidental log
line or exception message cannot leak it. Key files on disk, rotation and publication are I/O and live in
`appliance.datapath.apply.wireguard_keyfiles`; this module stays pure so the planners can use it.

The public key is X25519 of the private scalar with the base point (RFC 7748), computed by the `cryptography`
package (constant-time, OpenSSL-backed) rather than by shelling out to `wg pubkey`: key handling needs no external
binary and is unit-testable; an integration test checks the result against `wg pubkey`.

A key's tunnel *slot* (0 or 1, see `appliance.datapath.plan.wireguard`) is the low bit of its public key's first
byte; a rotation always generates a next key of the other slot, so old and new key can be live on two interfaces at
once and the switch loses no packet (docs/wireguard.md).

The annotation value is one key, or during a rotation two comma-separated keys, the active one first (`OLD,NEW` then
`NEW,OLD`): `parse_published_keys` reads both forms.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import NewType

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

PublicKey = NewType("PublicKey", str)


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """A WireGuard private key (32 bytes). repr/str never show it."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError("a WireGuard private key is 32 bytes")

    @classmethod
    def generate(cls) -> PrivateKey:
        """A fresh key, clamped the way `wg genkey` stores it (X25519 clamps anyway; the file looks the same)."""
        k = bytearray(secrets.token_bytes(32))
        k[0] &= 248
        k[31] = (k[31] & 127) | 64
        return cls(bytes(k))

    @classmethod
    def from_base64(cls, text: str) -> PrivateKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not a base64 WireGuard key") from None
        return cls(raw)

    def to_base64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def public_key(self) -> PublicKey:
        """The matching public key, base64 as WireGuard prints it."""
        public = X25519PrivateKey.from_private_bytes(self.raw).public_key().public_bytes_raw()
        return PublicKey(base64.b64encode(public).decode())

    def __repr__(self) -> str:
        return "PrivateKey(<redacted>)"

    __str__ = __repr__


def is_valid_public_key(text: str) -> bool:
    """Whether `text` is a WireGuard public key as published: 44 characters of base64 for 32 bytes."""
    try:
        return len(base64.b64decode(text, validate=True)) == 32 and len(text) == 44
    except (binascii.Error, ValueError):
        return False


def key_slot(public_key: str) -> int:
    """The tunnel slot (0/1) of a public key: low bit of its first byte. Both sides compute it the same way."""
    return base64.b64decode(public_key)[0] & 1


def parse_published_keys(value: str | None) -> tuple[PublicKey, ...]:
    """The keys of a Node annotation / Member key value, active first; invalid entries are left out."""
    if not value:
        return ()
    keys = [k.strip() for k in value.replace(" ", ",").split(",") if k.strip()]
    return tuple(PublicKey(k) for k in keys if is_valid_public_key(k))


def format_published_keys(keys: tuple[PublicKey, ...]) -> str:
    """The annotation value for `keys` (active first), the inverse of `parse_published_keys`."""
    return ",".join(keys)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalKey:
    """A private key on this node as planners see it: the public key and the file path, never the key itself."""

    public_key: PublicKey
    private_key_file: Path

    @property
    def slot(self) -> int:
        return key_slot(self.public_key)
