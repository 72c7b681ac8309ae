"""Field parsers for the YAML configs: each checks one value and raises `ConfigError` naming its dotted path.

Kept apart from `appliance.runtime.config` (which says what the fields are) so the field rules read as one small table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.core.errors import ConfigError
from appliance.core.model import IPAddress


def mapping(raw: Any, path: str, allowed: set[str]) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "must be a mapping")
    for key in raw:
        if key not in allowed:
            prefix = f"{path}." if path else ""
            raise ConfigError(f"{prefix}{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def string(raw: Any, path: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(path, f"must be a non-empty string, got {raw!r}")
    return raw


def integer(raw: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(path, f"must be an integer, got {raw!r}")
    if not lo <= raw <= hi:
        raise ConfigError(path, f"must be between {lo} and {hi}, got {raw}")
    return int(raw)


def number(raw: Any, path: str, lo: float, hi: float) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ConfigError(path, f"must be a number, got {raw!r}")
    if not lo <= float(raw) <= hi:
        raise ConfigError(path, f"must be between {lo} and {hi}, got {raw}")
    return float(raw)


def ip(raw: Any, path: str) -> IPAddress:
    try:
        if isinstance(raw, str):
            return ipaddress.ip_address(raw)
    except ValueError:
        pass
    raise ConfigError(path, f"must be an IP address, got {raw!r}")


def abs_path(raw: Any, path: str, base: Path) -> Path:
    """Relative paths are relative to the config file's directory (so a lab directory is self-contained)."""
    p = Path(string(raw, path)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()
