"""Typed BGP settings of a gateway member, parsed from the `bgp:` section of the gateway YAML config.

Why a separate parser: the gateway config loader (data path) hands us the raw mapping and we return a frozen,
validated `BgpSettings` or raise `ConfigError(field_path, message)` naming the exact field (`bgp.peers[0].asn`), so
`egressgw validate` and the running service can never disagree on what a config means.

YAML keys are snake_case and mirror the dataclass fields (see docs/bgp.md for an annotated example). Unknown keys are
errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import enum
import ipaddress
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.core.config_fields import integer, number
from appliance.core.errors import ConfigError
from appliance.core.model import IPAddress


class Family(enum.StrEnum):
    IPV4_UNICAST = "ipv4-unicast"
    IPV6_UNICAST = "ipv6-unicast"

    @property
    def version(self) -> int:
        return 4 if self is Family.IPV4_UNICAST else 6

    @classmethod
    def of(cls, ip: IPAddress) -> Family:
        return cls.IPV4_UNICAST if ip.version == 4 else cls.IPV6_UNICAST


class PreferenceMode(enum.StrEnum):
    """How a member's ranking position becomes a BGP preference the router understands."""

    MED = "med"
    AS_PATH_PREPEND = "as-path-prepend"
    BOTH = "both"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerSettings:
    address: IPAddress
    asn: int
    #: TCP-MD5 (RFC 2385) secret; None = no authentication
    md5_password: str | None = None
    #: 3 s is the smallest RFC 4271 allows besides 0; with BFD it is only the fallback detector
    hold_time: int = 3
    #: False: we connect (the lab's routers are passive, which survives our restarts without waiting for them)
    passive: bool = False
    #: local source address of the session; None = kernel's choice
    local_address: IPAddress | None = None
    #: families carried on this session; default = the global families of the peer address's own family, because
    #: `next-hop self` only yields a valid next hop in the session's own family
    families: tuple[Family, ...] = ()
    #: next hop for the family that is not the session's own (needed only when `families` crosses families)
    next_hop_ipv4: ipaddress.IPv4Address | None = None
    next_hop_ipv6: ipaddress.IPv6Address | None = None

    def next_hop_for(self, family: Family) -> str:
        """`self` for the session's own family, else the explicit next hop (validated to exist)."""
        if family.version == self.address.version:
            return "self"
        nh = self.next_hop_ipv4 if family is Family.IPV4_UNICAST else self.next_hop_ipv6
        return str(nh) if nh is not None else "self"


@dataclass(frozen=True, slots=True, kw_only=True)
class PreferenceSettings:
    mode: PreferenceMode = PreferenceMode.MED
    #: MED of the best (primary) member; lower MED wins, so 100 leaves room below for operators
    base_med: int = 100
    #: MED added per ranking position
    med_step: int = 10
    #: prepends at the worst position; positions beyond are clamped (AS paths must stay short)
    max_prepends: int = 3

    @property
    def stale_med(self) -> int:
        """MED of a member whose cluster view is stale (`bgp.freshness`): below even the worst-preference band."""
        return self.base_med + self.med_step * 2000

    @property
    def worst_med(self) -> int:
        """MED used for 'announce with worst preference' (unhealthy, hold-down): far above any ranked MED."""
        return self.base_med + self.med_step * 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class BfdSettings:
    #: BFD is the only way to detect a dead gateway in well under the 3 s hold time
    enabled: bool = True
    #: 50 ms x 3 measured 120-160 ms outages here (lab-feasibility notes); 20 ms works but costs more CPU
    min_tx_ms: int = 50
    min_rx_ms: int = 50
    multiplier: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainSettings:
    #: upper bound for a drain: withdraw, wait for acks + settle, then give up waiting
    timeout_s: float = 10.0
    #: time after the withdrawal was acknowledged before kernel state may be removed: the router needs to
    #: receive the UPDATE and re-run best path (1-8 ms measured), plus margin for in-flight packets
    settle_s: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GracefulRestartSettings:
    """BGP graceful restart (RFC 4724) as the restarting speaker: ExaBGP advertises the capability, so routers that
    act as helpers keep our routes (marked stale) while ExaBGP restarts, instead of dropping every path when ExaBGP
    dies on every member at once. A real member failure is still BFD's: a BFD-detected failure is a hard down on
    the routers (BIRD `bfd on`, FRR without `check-control-plane-failure`), see docs/routers.md."""

    enabled: bool = True
    #: how long a router keeps our stale routes waiting for the session to come back. It bounds the outage of a
    #: member that dies *without* BFD noticing (BFD disabled, or a service stopped hard while its kernel state stays
    #: up); ExaBGP is respawned within about a second and a crash loop backs off to 10 s, so 30 s leaves room
    restart_time_s: int = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleViewSettings:
    """Stale members step back (see `bgp.freshness`): a member whose cluster view is older than `grace_s` (watch down
    or never synced) announces below every member with a fresh view, unless no member of its instance is fresh.
    Members tell each other their view age with a small UDP heartbeat on the uplink (no API server involved)."""

    enabled: bool = True
    #: view age beyond which a member steps back. Longer than a watch reconnect after an API-server restart (a few
    #: seconds), short enough that a pod selected during a partition is carried within grace + BGP convergence
    grace_s: float = 10.0
    #: UDP port of the member heartbeat (on the members' uplink addresses)
    port: int = 4790
    #: heartbeat period; a peer's report older than `peer_timeout_s` is ignored (that member may be down: BFD and
    #: the routers deal with it, its view does not count as fresh)
    interval_s: float = 1.0
    peer_timeout_s: float = 3.5
    #: shared secret for the heartbeat's HMAC-SHA256; None = heartbeats are accepted from any member address
    #: of the instance (validated by source address and member name only)
    secret: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BgpSettings:
    local_asn: int
    router_id: ipaddress.IPv4Address
    peers: tuple[PeerSettings, ...]
    local_address: IPAddress | None = None
    families: tuple[Family, ...] = (Family.IPV4_UNICAST, Family.IPV6_UNICAST)
    preference: PreferenceSettings = PreferenceSettings()
    #: True: an unhealthy member withdraws; False: it keeps announcing with the worst preference (traffic still
    #: reaches it when every member is unhealthy, which some operators prefer to a blackhole)
    withdraw_on_unhealthy: bool = True
    bfd: BfdSettings = BfdSettings()
    drain: DrainSettings = DrainSettings()
    #: None = take the gateway spec's failover.failbackHoldSeconds
    failback_hold_s: float | None = None
    #: ExaBGP 5.0.x from the same venv (5.0 resets its reconnect back-off after a session; 4.2 does not)
    exabgp_binary: Path = Path(sys.executable).parent / "exabgp"
    graceful_restart: GracefulRestartSettings = GracefulRestartSettings()
    stale_view: StaleViewSettings = StaleViewSettings()

    def failback_hold(self, spec_seconds: float) -> float:
        return spec_seconds if self.failback_hold_s is None else self.failback_hold_s


# ----- parsing -----

_TOP_KEYS = {
    "local_asn", "router_id", "local_address", "peers", "families", "preference", "withdraw_on_unhealthy",
    "bfd", "drain", "failback_hold_s", "exabgp_binary", "graceful_restart", "stale_view",
}  # fmt: skip
_PEER_KEYS = {
    "address", "asn", "md5_password", "hold_time", "passive", "local_address", "families", "next_hop_ipv4",
    "next_hop_ipv6",
}  # fmt: skip


def _mapping(raw: Any, path: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "must be a mapping")
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def _bool(raw: Any, path: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(path, f"must be true or false, got {raw!r}")
    return raw


def _ip(raw: Any, path: str, version: int | None = None) -> IPAddress:
    try:
        ip = ipaddress.ip_address(str(raw)) if isinstance(raw, str) else None
    except ValueError:
        ip = None
    if ip is None:
        raise ConfigError(path, f"must be an IP address, got {raw!r}")
    if version is not None and ip.version != version:
        raise ConfigError(path, f"must be an IPv{version} address, got {raw}")
    return ip


def _families(raw: Any, path: str) -> tuple[Family, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(path, "must be a non-empty list of ipv4-unicast / ipv6-unicast")
    out: list[Family] = []
    for i, item in enumerate(raw):
        try:
            fam = Family(item)
        except ValueError:
            raise ConfigError(f"{path}[{i}]", f"unknown family {item!r} (ipv4-unicast, ipv6-unicast)") from None
        if fam in out:
            raise ConfigError(f"{path}[{i}]", f"duplicate family {fam}")
        out.append(fam)
    return tuple(sorted(out))


_ASN_MAX = 2**32 - 1
_DEFAULT_FAMILIES = (Family.IPV4_UNICAST, Family.IPV6_UNICAST)


def _peer(raw: Any, path: str, families: tuple[Family, ...], local: IPAddress | None) -> PeerSettings:
    m = _mapping(raw, path, _PEER_KEYS)
    if "address" not in m:
        raise ConfigError(f"{path}.address", "is required")
    if "asn" not in m:
        raise ConfigError(f"{path}.asn", "is required")
    address = _ip(m["address"], f"{path}.address")
    md5 = m.get("md5_password")
    if md5 is not None and (not isinstance(md5, str) or not md5 or len(md5) > 80 or '"' in md5 or "\n" in md5):
        raise ConfigError(f"{path}.md5_password", "must be a non-empty string of at most 80 characters without quotes")
    hold = integer(m.get("hold_time", 3), f"{path}.hold_time", 0, 65535)
    if hold in (1, 2):
        raise ConfigError(f"{path}.hold_time", "must be 0 or at least 3 (RFC 4271)")
    if "local_address" in m:
        peer_local: IPAddress | None = _ip(m["local_address"], f"{path}.local_address", address.version)
    else:
        peer_local = local if local is not None and local.version == address.version else None
    nh4 = _ip(m["next_hop_ipv4"], f"{path}.next_hop_ipv4", 4) if "next_hop_ipv4" in m else None
    nh6 = _ip(m["next_hop_ipv6"], f"{path}.next_hop_ipv6", 6) if "next_hop_ipv6" in m else None
    if "families" in m:
        fams = _families(m["families"], f"{path}.families")
    else:
        fams = tuple(f for f in families if f.version == address.version)
        if not fams:
            raise ConfigError(f"{path}.families", f"no configured family matches the IPv{address.version} session")
    for fam in fams:
        if fam.version != address.version and (nh4 if fam.version == 4 else nh6) is None:
            raise ConfigError(f"{path}.next_hop_ipv{fam.version}", f"is required to carry {fam} on this session")
    return PeerSettings(
        address=address,
        asn=integer(m["asn"], f"{path}.asn", 1, _ASN_MAX),
        md5_password=md5,
        hold_time=hold,
        passive=_bool(m.get("passive", False), f"{path}.passive"),
        local_address=peer_local,
        families=fams,
        next_hop_ipv4=nh4,  # type: ignore[arg-type]
        next_hop_ipv6=nh6,  # type: ignore[arg-type]
    )


def _preference(raw: Any, path: str) -> PreferenceSettings:
    m = _mapping(raw, path, {"mode", "base_med", "med_step", "max_prepends"})
    try:
        mode = PreferenceMode(m.get("mode", "med"))
    except ValueError:
        raise ConfigError(f"{path}.mode", "must be one of med, as-path-prepend, both") from None
    base = integer(m.get("base_med", 100), f"{path}.base_med", 0, 2**31)
    step = integer(m.get("med_step", 10), f"{path}.med_step", 1, 2**20)
    if base + step * 3000 > _ASN_MAX:  # three bands of 1000 positions: ranked, worst, stale view
        raise ConfigError(f"{path}.med_step", "base_med + 3000 * med_step must fit in 32 bits")
    prepends = integer(m.get("max_prepends", 3), f"{path}.max_prepends", 1 if mode is not PreferenceMode.MED else 0, 10)
    return PreferenceSettings(mode=mode, base_med=base, med_step=step, max_prepends=prepends)


def _bfd(raw: Any, path: str) -> BfdSettings:
    m = _mapping(raw, path, {"enabled", "min_tx_ms", "min_rx_ms", "multiplier"})
    return BfdSettings(
        enabled=_bool(m.get("enabled", True), f"{path}.enabled"),
        min_tx_ms=integer(m.get("min_tx_ms", 50), f"{path}.min_tx_ms", 10, 60000),
        min_rx_ms=integer(m.get("min_rx_ms", 50), f"{path}.min_rx_ms", 10, 60000),
        multiplier=integer(m.get("multiplier", 3), f"{path}.multiplier", 1, 255),
    )


def _drain(raw: Any, path: str) -> DrainSettings:
    m = _mapping(raw, path, {"timeout_s", "settle_s"})
    timeout = number(m.get("timeout_s", 10.0), f"{path}.timeout_s", 0.1, 3600.0)
    settle = number(m.get("settle_s", 1.0), f"{path}.settle_s", 0.0, 600.0)
    if settle > timeout:
        raise ConfigError(f"{path}.settle_s", "must not exceed drain.timeout_s")
    return DrainSettings(timeout_s=timeout, settle_s=settle)


#: ExaBGP's (and RFC 4724's) largest restart time: 12 bits
_GR_MAX_S = 4095


def _graceful_restart(raw: Any, path: str) -> GracefulRestartSettings:
    m = _mapping(raw, path, {"enabled", "restart_time_s"})
    return GracefulRestartSettings(
        enabled=_bool(m.get("enabled", True), f"{path}.enabled"),
        restart_time_s=integer(m.get("restart_time_s", 30), f"{path}.restart_time_s", 1, _GR_MAX_S),
    )


def _stale_view(raw: Any, path: str) -> StaleViewSettings:
    m = _mapping(raw, path, {"enabled", "grace_s", "port", "interval_s", "peer_timeout_s", "secret"})
    interval = number(m.get("interval_s", 1.0), f"{path}.interval_s", 0.05, 60.0)
    timeout = number(m.get("peer_timeout_s", 3.5 * interval), f"{path}.peer_timeout_s", 0.1, 600.0)
    if timeout <= interval:
        raise ConfigError(f"{path}.peer_timeout_s", "must be longer than interval_s (several heartbeats)")
    secret = m.get("secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 8):
        raise ConfigError(f"{path}.secret", "must be a string of at least 8 characters")
    return StaleViewSettings(
        enabled=_bool(m.get("enabled", True), f"{path}.enabled"),
        grace_s=number(m.get("grace_s", 10.0), f"{path}.grace_s", 0.5, 3600.0),
        port=integer(m.get("port", 4790), f"{path}.port", 1, 65535),
        interval_s=interval,
        peer_timeout_s=timeout,
        secret=secret,
    )


def parse_bgp_settings(raw: Mapping[str, Any], path: str = "bgp") -> BgpSettings:
    """Validate the raw `bgp:` mapping and build `BgpSettings`; raise `ConfigError` naming the bad field."""
    m = _mapping(raw, path, _TOP_KEYS)
    if "local_asn" not in m:
        raise ConfigError(f"{path}.local_asn", "is required")
    local_asn = integer(m["local_asn"], f"{path}.local_asn", 1, _ASN_MAX)
    local = _ip(m["local_address"], f"{path}.local_address") if "local_address" in m else None
    if "router_id" in m:
        rid = _ip(m["router_id"], f"{path}.router_id", 4)
    elif local is not None and local.version == 4:
        rid = local
    else:
        raise ConfigError(f"{path}.router_id", "is required (an IPv4 address) unless local_address is IPv4")
    families = _families(m["families"], f"{path}.families") if "families" in m else _DEFAULT_FAMILIES
    raw_peers = m.get("peers")
    if not isinstance(raw_peers, list) or not raw_peers:
        raise ConfigError(f"{path}.peers", "must be a non-empty list of peers")
    peers = tuple(_peer(p, f"{path}.peers[{i}]", families, local) for i, p in enumerate(raw_peers))
    seen: set[IPAddress] = set()
    for i, peer in enumerate(peers):
        if peer.address in seen:
            raise ConfigError(f"{path}.peers[{i}].address", f"duplicate peer {peer.address}")
        seen.add(peer.address)
    hold_s = m.get("failback_hold_s")
    binary = m.get("exabgp_binary")
    if binary is not None and (not isinstance(binary, str) or not binary.startswith("/")):
        raise ConfigError(f"{path}.exabgp_binary", "must be an absolute path")
    return BgpSettings(
        local_asn=local_asn,
        router_id=rid,  # type: ignore[arg-type]
        peers=peers,
        local_address=local,
        families=families,
        preference=_preference(m.get("preference", {}), f"{path}.preference"),
        withdraw_on_unhealthy=_bool(m.get("withdraw_on_unhealthy", True), f"{path}.withdraw_on_unhealthy"),
        bfd=_bfd(m.get("bfd", {}), f"{path}.bfd"),
        drain=_drain(m.get("drain", {}), f"{path}.drain"),
        failback_hold_s=None if hold_s is None else number(hold_s, f"{path}.failback_hold_s", 0.0, 86400.0),
        exabgp_binary=Path(binary) if binary else Path(sys.executable).parent / "exabgp",
        graceful_restart=_graceful_restart(m.get("graceful_restart", {}), f"{path}.graceful_restart"),
        stale_view=_stale_view(m.get("stale_view", {}), f"{path}.stale_view"),
    )
