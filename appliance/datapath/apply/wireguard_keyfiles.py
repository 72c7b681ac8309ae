"""WireGuard keys on disk and in the cluster: the 0600 key files, a worker's key rotation, publishing public keys.

Why this module exists: a node's private key is generated on first start and never leaves the node; it lives in a
file only root can read, written so that it never exists on disk with wider permissions, and a file readable by
others is refused (a leaked key is a compromised tunnel). The key values themselves (redacted `PrivateKey`,
derivation, slots, the published list) are pure and live in `appliance.datapath.plan.wireguard_keys`.

Worker key files live in the agent's state directory: `wg-current.key` (the key in use) and, during a rotation,
`wg-next.key` then `wg-previous.key`. A rotation always generates a next key of the other slot than the current one,
so both can be live on their own interface while the cluster catches up (docs/wireguard.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from appliance.core.model import WIREGUARD_KEY_ANNOTATION
from appliance.datapath.plan.wireguard_keys import (
    LocalKey,
    PrivateKey,
    PublicKey,
    format_published_keys,
    is_valid_public_key,
    key_slot,
)

CURRENT_KEY_FILE = "wg-current.key"
NEXT_KEY_FILE = "wg-next.key"
PREVIOUS_KEY_FILE = "wg-previous.key"


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
