"""The one error type for bad configuration files: it names the field path, so the message tells what to fix."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration value is missing or wrong. `field` is a dotted path such as `bgp.peers[0].asn`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
