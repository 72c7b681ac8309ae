"""WireGuard keys: generation, the 0600 key files, public-key derivation, publication and worker key rotation.

Why this module exists: a node's private key must stay on that node (generated on first start, written with mode
0600, never logged or put in a plan), while its public key travels through the cluster (the Node annotation
`egressgw.io/wireguard-public-key`, or an appliance's Lease). Everything that holds a private key is a `PrivateKey`,
whose repr and str are redacted, so an accidental log line or exception message cannot leak it.

The public key is derived here (X25519 of the private scalar with the base point, RFC 7748) instead of shelling out
to `wg pubkey`: key handling then needs no external binary and is unit-testable; an integration test checks it
against `wg pubkey`. The ladder is not constant-time; it runs once per key, locally, on a key we just generated or
read from our own disk, so there is no attacker-controlled timing to observe.

Worker key files live in the agent's state directory: `wg-current.key` (the key in use) and, during a rotation,
`wg-next.key` then `wg-previous.key`. A key's tunnel *slot* (0 or 1, see `appliance.datapath.plan.wireguard`) is the
low bit of its public key's first byte; a rotation always generates a next key of the other slot, so old and new
key can be live on two interfaces at once and the switch loses no packet (docs/wireguard.md).

The annotation value is one key, or during a rotation two comma-separated keys, the active one first (`OLD,NEW` then
`NEW,OLD`): `parse_published_keys` reads both forms.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import NewType, Protocol

from appliance.core.model import WIREGUARD_KEY_ANNOTATION

PublicKey = NewType("PublicKey", str)

CURRENT_KEY_FILE = "wg-current.key"
NEXT_KEY_FILE = "wg-next.key"
PREVIOUS_KEY_FILE = "wg-previous.key"

_P = 2**255 - 19
_A24 = 121665


def _x25519(scalar: bytes, u_point: bytes) -> bytes:
    """X25519(k, u) per RFC 7748 section 5 (Montgomery ladder over Curve25519)."""
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    kn = int.from_bytes(k, "little")
    u = int.from_bytes(u_point, "little") & ((1 << 255) - 1)
    x1, x2, z2, x3, z3, swap = u, 1, 0, u, 1, 0
    for t in reversed(range(255)):
        bit = (kn >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


_BASE_POINT = (9).to_bytes(32, "little")


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """A WireGuard private key (32 bytes). repr/str never show it."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError("a WireGuard private key is 32 bytes")

    @classmethod
    def generate(cls) -> PrivateKey:
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
        return PublicKey(base64.b64encode(_x25519(self.raw, _BASE_POINT)).decode())

    def __repr__(self) -> str:
        return "PrivateKey(<redacted>)"

    __str__ = __repr__


def is_valid_public_key(text: str) -> bool:
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
    return ",".join(keys)


# ----- key files -----


def write_key_file(path: Path, key: PrivateKey) -> None:
    """Write atomically with mode 0600 from the start (the key never exists on disk with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        os.write(fd, (key.to_base64() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_key_file(path: Path) -> PrivateKey:
    """Read a key file; refuses files readable by group/others (a leaked key is a compromised tunnel)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path}: WireGuard key file must not be accessible by group/others (mode {mode:o})")
    return PrivateKey.from_base64(path.read_text())


def load_or_create_key(path: Path) -> PrivateKey:
    """The node's key: read it, or generate it on first start. Stable across restarts."""
    if path.exists():
        return read_key_file(path)
    key = PrivateKey.generate()
    write_key_file(path, key)
    return key


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalKey:
    """A private key on this node as planners see it: the public key and the file path, never the key itself."""

    public_key: PublicKey
    private_key_file: Path

    @property
    def slot(self) -> int:
        return key_slot(self.public_key)


def local_keys(state_dir: Path) -> tuple[LocalKey, ...]:
    """The worker's keys, active first (creates the current key on first start).

    The second key, when present, is the next key (rotation phase 1) or the previous key (phase 2); both get their
    own interface, only the first carries the steered traffic. Publish them in this order.
    """
    current = state_dir / CURRENT_KEY_FILE
    found = [LocalKey(public_key=load_or_create_key(current).public_key(), private_key_file=current)]
    for name in (NEXT_KEY_FILE, PREVIOUS_KEY_FILE):
        other = state_dir / name
        if other.exists():
            found.append(LocalKey(public_key=read_key_file(other).public_key(), private_key_file=other))
    return tuple(found)


# ----- rotation (worker) -----
# phase 1 begin_rotation: wg-next.key (other slot); publish "OLD,NEW"; gateways add NEW on its slot interface.
# phase 2 switch_rotation (once a probe through NEW's interface is answered): current->previous, next->current;
#         publish "NEW,OLD": the worker sends through NEW, gateways move return routes to NEW's slot.
# phase 3 end_rotation (after a grace period): drop wg-previous.key; publish "NEW"; gateways remove OLD.


def begin_rotation(state_dir: Path) -> LocalKey:
    """Generate the next key (of the other slot than the current key) into `wg-next.key`; idempotent."""
    current = load_or_create_key(state_dir / CURRENT_KEY_FILE).public_key()
    nxt_path = state_dir / NEXT_KEY_FILE
    if nxt_path.exists():
        existing = read_key_file(nxt_path).public_key()
        if key_slot(existing) != key_slot(current):
            return LocalKey(public_key=existing, private_key_file=nxt_path)
    (state_dir / PREVIOUS_KEY_FILE).unlink(missing_ok=True)
    while True:
        key = PrivateKey.generate()
        if key_slot(key.public_key()) != key_slot(current):
            break
    write_key_file(nxt_path, key)
    return LocalKey(public_key=key.public_key(), private_key_file=nxt_path)


def switch_rotation(state_dir: Path) -> None:
    """Phase 2: the next key becomes current, the old current key is kept as previous (still live for returns)."""
    nxt_path = state_dir / NEXT_KEY_FILE
    if not nxt_path.exists():
        return
    os.replace(state_dir / CURRENT_KEY_FILE, state_dir / PREVIOUS_KEY_FILE)
    os.replace(nxt_path, state_dir / CURRENT_KEY_FILE)


def end_rotation(state_dir: Path) -> None:
    """Phase 3: forget the previous key (its interface and the gateways' peer for it go away)."""
    (state_dir / PREVIOUS_KEY_FILE).unlink(missing_ok=True)


# ----- publication -----


class NodeAnnotator(Protocol):
    """The one API call publication needs (a kubernetes client adapter, or a fake in tests)."""

    def patch_node_annotations(self, node: str, annotations: dict[str, str | None]) -> None: ...


def publish_public_key(client: NodeAnnotator, node: str, keys: tuple[PublicKey, ...]) -> None:
    """Publish this node's public key(s), active first, on its Node annotation (merge patch).

    Workers call it with their local keys; gateway members that are cluster nodes publish the *instance* public key
    (the members of an instance share one key pair). Appliances put the same value on their Lease instead.
    """
    for k in keys:
        if not is_valid_public_key(k):
            raise ValueError(f"not a WireGuard public key: {k!r}")
    client.patch_node_annotations(node, {WIREGUARD_KEY_ANNOTATION: format_published_keys(keys) if keys else None})
