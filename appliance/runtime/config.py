"""Typed YAML configuration of the two node roles: `egressgw agent` (worker) and `egressgw gateway` (member).

Why typed and strict: a config file is read once, at start, by a long-running service; a typo that silently falls
back to a default (`resync_periode: 5`) is found weeks later. So every key is known, every value is checked, and
every error raises `ConfigError(field_path, message)` naming the exact field (`health.upstream_probe.port`); the
commands turn it into `config error: <file>: <field>: <message>` and exit 2.

Loading is pure apart from reading the file and the environment defaults (node name from `$NODE_NAME`, else the
host name): auto-detection of the underlay from the default route happens at run time (`appliance.runtime.underlay`),
so a config can be validated on any machine. YAML keys are snake_case; see docs/operations.md for the reference.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from appliance.core.config_fields import abs_path, integer, ip, mapping, number, string
from appliance.core.errors import ConfigError
from appliance.core.events import LogFormat, LogLevel, LogSettings
from appliance.core.model import IPAddress
from appliance.datapath.plan.endpoint_liveness import ProbeSettings
from appliance.datapath.plan.gateway import TunnelSourceCheck
from appliance.datapath.plan.nft_variant import RULESET_SETTINGS
from appliance.datapath.plan.state_sync import StateSyncSettings, peer_overrides
from appliance.datapath.plan.tunnel import GATEWAY_MARKS, MarkSettings
from appliance.datapath.plan.worker import SourceValidation
from bgp.settings import BgpSettings, parse_bgp_settings

#: stands in for `bgp.router_id` until the uplink address is known (never sent: replaced at start)
ROUTER_ID_PLACEHOLDER = ipaddress.IPv4Address("0.0.0.1")


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeSettings:
    #: kubeconfig file (its current-context is used); None = $KUBECONFIG, else the in-cluster service account
    kubeconfig: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceSettings:
    """An interface and its addresses; both empty = detect from the default route at start."""

    interface: str | None = None
    addresses: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelOverrides:
    #: inner MTU for every tunnel of this node; None = the gateway spec's MTU, else derived from the underlay MTU
    mtu: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSettings:
    #: listen host ("" = every address); None for the whole settings = metrics disabled
    host: str = ""
    port: int = 9710

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileSettings:
    #: full pass even without events, to repair drift (someone flushed our table): 30 s bounds the repair time
    #: without measurable cost (an idempotent pass that changes nothing costs a few milliseconds)
    resync_period_s: float = 30.0
    #: events arriving within this window share one pass (a deployment rollout is hundreds of pod events)
    debounce_ms: int = 50
    #: a steady event stream still gets a pass at least this often
    max_delay_ms: int = 500
    #: first retry after a failed pass; doubles per consecutive failure up to backoff_max_s
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamProbe:
    """An optional reachability check through the uplink: TCP connect to address:port, or ICMP echo when no port."""

    address: IPAddress
    port: int | None = None
    timeout_ms: int = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSettings:
    #: seconds between health observations
    interval_s: float = 1.0
    #: consecutive failures before withdrawing (hysteresis: one slow check must not move traffic twice)
    fall: int = 3
    #: consecutive successes before announcing again
    rise: int = 2
    #: the reconcile loop counts as stalled when its heartbeat is older than this
    heartbeat_max_age_s: float = 10.0
    upstream_probe: UpstreamProbe | None = None
    #: when this file exists the member is in maintenance and withdraws; None = `<state_dir>/maintenance`
    disable_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WireguardSettings:
    """Only used when a gateway instance has `tunnel.type: wireguard`."""

    #: interface name prefix (1-8 characters); None = the planner's default (`wg-egw-`)
    interface_prefix: str | None = None
    #: gateway: directory with `<instance>.key`, the instance private key shared by its members (0600)
    instance_key_dir: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DatapathSettings:
    #: `datapath.ruleset`: the nftables ruleset variant (`plan.nft_variant`): `auto` picks `modern` on kernels that
    #: have every feature it uses and `compat` below (docs/datapath.md "Kernel floor")
    ruleset: str = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class CommonConfig:
    """Fields shared by both roles."""

    source: Path
    node_name: str
    kube: KubeSettings = KubeSettings()
    tunnel: TunnelOverrides = TunnelOverrides()
    metrics: MetricsSettings | None = MetricsSettings()
    lease_namespace: str = "egressgw-system"
    reconcile: ReconcileSettings = ReconcileSettings()
    state_dir: Path = Path("/var/lib/egressgw")
    log: LogSettings = LogSettings()
    wireguard: WireguardSettings = WireguardSettings()
    datapath: DatapathSettings = DatapathSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig(CommonConfig):
    underlay: InterfaceSettings = InterfaceSettings()
    #: how a steered packet's source is checked against the pod that owns it (docs/datapath.md "Source binding");
    #: strict by default: a pod whose interface cannot be found never leaves with an EIP
    source_validation: SourceValidation = SourceValidation.STRICT
    #: `liveness`: the data-path probes of the tunnel endpoints (docs/datapath.md "Who decides")
    liveness: ProbeSettings = ProbeSettings()
    #: `marks`: the packet-mark bits the agent owns; the default avoids the bits CNIs and kube-proxy use
    #: (docs/operations.md "CNI compatibility")
    marks: MarkSettings = MarkSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig(CommonConfig):
    uplink: InterfaceSettings = InterfaceSettings()
    #: None = no BGP speaker (a member that only forwards; EIP routes come from elsewhere)
    bgp: BgpSettings | None = None
    #: `bgp.router_id` (and `bgp.local_address`) not given: the uplink's IPv4 address is the router id
    router_id_from_uplink: bool = False
    health: HealthSettings = HealthSettings()
    #: set for an appliance outside the cluster: the EgressGateway it joins (registers with a member Lease)
    gateway: str | None = None
    #: drain: upper bound for the whole drain, and the time forwarding continues after the withdrawal was acked;
    #: taken from `bgp.drain` when a `bgp:` section exists (that is where they belong), else from here
    drain_timeout_s: float = 10.0
    drain_settle_s: float = 1.0
    #: `security.tunnel_source_check`: reverse-path check of VXLAN outer sources (docs/security.md): strict by
    #: default (a gateway must not relay for a spoofed worker address arriving on another interface)
    tunnel_source_check: TunnelSourceCheck = TunnelSourceCheck.STRICT
    #: `state_sync`: conntrack state shared with the other members of each instance (docs/operations.md)
    state_sync: StateSyncSettings = StateSyncSettings()
    #: `marks`: the packet-mark bits the gateway owns (16 slot bits: one per worker node)
    marks: MarkSettings = GATEWAY_MARKS

    @property
    def disable_file(self) -> Path:
        return self.health.disable_file or self.state_dir / "maintenance"


# ----- field parsers: each names its path in the error -----

_COMMON_KEYS = {
    "node_name", "kubeconfig", "tunnel", "metrics", "lease_namespace", "reconcile", "state_dir",
    "log", "datapath",
}  # fmt: skip
_AGENT_KEYS = _COMMON_KEYS | {"underlay", "wireguard", "source_validation", "liveness", "marks"}
_GATEWAY_KEYS = _COMMON_KEYS | {
    "uplink", "bgp", "health", "gateway", "drain", "wireguard", "security", "state_sync", "marks",
}  # fmt: skip
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")


def _interface(raw: Any, path: str) -> InterfaceSettings:
    m = mapping(raw, path, {"interface", "addresses"})
    name = None
    if m.get("interface") is not None:
        name = string(m["interface"], f"{path}.interface")
        if not _IFNAME.match(name):
            raise ConfigError(f"{path}.interface", f"not a valid interface name: {name!r}")
    addrs = m.get("addresses", [])
    if not isinstance(addrs, list):
        raise ConfigError(f"{path}.addresses", "must be a list of IP addresses (at most one per family)")
    parsed = tuple(ip(a, f"{path}.addresses[{i}]") for i, a in enumerate(addrs))
    for i, a in enumerate(parsed):
        if any(b.version == a.version for b in parsed[:i]):
            raise ConfigError(f"{path}.addresses[{i}]", f"more than one IPv{a.version} address")
    return InterfaceSettings(interface=name, addresses=tuple(sorted(parsed, key=lambda a: a.version)))


def _wireguard(raw: Any, path: str, base: Path, *, gateway: bool) -> WireguardSettings:
    m = mapping(raw, path, {"interface_prefix", "instance_key_dir"} if gateway else {"interface_prefix"})
    prefix = None
    if m.get("interface_prefix") is not None:
        prefix = string(m["interface_prefix"], f"{path}.interface_prefix")
        if len(prefix) > 8 or not _IFNAME.match(prefix):
            raise ConfigError(
                f"{path}.interface_prefix", f"must be 1-8 characters valid in an interface name: {prefix!r}"
            )
    key_dir = None
    if m.get("instance_key_dir") is not None:
        key_dir = abs_path(m["instance_key_dir"], f"{path}.instance_key_dir", base)
    return WireguardSettings(interface_prefix=prefix, instance_key_dir=key_dir)


def _metrics(raw: Any, path: str, default_port: int) -> MetricsSettings | None:
    """`metrics: {address: "host:port"}`; `address: ""` or `enabled: false` disables the HTTP server."""
    m = mapping(raw, path, {"address", "enabled"})
    if m.get("enabled", True) is False:
        return None
    if "enabled" in m and not isinstance(m["enabled"], bool):
        raise ConfigError(f"{path}.enabled", f"must be true or false, got {m['enabled']!r}")
    addr = m.get("address", f":{default_port}")
    if not isinstance(addr, str):
        raise ConfigError(f"{path}.address", f"must be a string host:port, got {addr!r}")
    if addr == "":
        return None
    match = re.fullmatch(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)", addr)
    if match is None:
        raise ConfigError(f"{path}.address", f"must be host:port, [v6]:port or :port, got {addr!r}")
    host = match.group("v6") or match.group("host") or ""
    if match.group("v6"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{path}.address", f"not an IPv6 address: {host!r}") from None
    port = integer(int(match.group("port")), f"{path}.address", 1, 65535)
    return MetricsSettings(host=host, port=port)


def _reconcile(raw: Any, path: str) -> ReconcileSettings:
    keys = {"resync_period_s", "debounce_ms", "max_delay_ms", "backoff_initial_s", "backoff_max_s"}
    m = mapping(raw, path, keys)
    d = ReconcileSettings()
    s = ReconcileSettings(
        resync_period_s=number(m.get("resync_period_s", d.resync_period_s), f"{path}.resync_period_s", 1.0, 86400.0),
        debounce_ms=integer(m.get("debounce_ms", d.debounce_ms), f"{path}.debounce_ms", 0, 10000),
        max_delay_ms=integer(m.get("max_delay_ms", d.max_delay_ms), f"{path}.max_delay_ms", 0, 60000),
        backoff_initial_s=number(
            m.get("backoff_initial_s", d.backoff_initial_s), f"{path}.backoff_initial_s", 0.01, 600.0
        ),
        backoff_max_s=number(m.get("backoff_max_s", d.backoff_max_s), f"{path}.backoff_max_s", 0.01, 3600.0),
    )
    if s.max_delay_ms < s.debounce_ms:
        raise ConfigError(f"{path}.max_delay_ms", "must be at least debounce_ms")
    if s.backoff_max_s < s.backoff_initial_s:
        raise ConfigError(f"{path}.backoff_max_s", "must be at least backoff_initial_s")
    return s


def _state_sync(raw: Any, path: str) -> StateSyncSettings:
    keys = {"enabled", "address", "port", "port_span", "peers", "resync_timeout_s", "peer_timeout_s",
            "stats_interval_s", "refresh_interval_s", "binary"}
    m = mapping(raw, path, keys)
    d = StateSyncSettings()
    enabled = m.get("enabled", d.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{path}.enabled", f"must be true or false, got {enabled!r}")
    port = integer(m.get("port", d.port), f"{path}.port", 1, 65535)
    span = integer(m.get("port_span", d.port_span), f"{path}.port_span", 1, 4096)
    if port + span - 1 > 65535:
        raise ConfigError(f"{path}.port_span", f"port + port_span - 1 must be at most 65535, got {port + span - 1}")
    peers_raw = m.get("peers") or {}
    if not isinstance(peers_raw, Mapping):
        raise ConfigError(f"{path}.peers", "must be a mapping of member name -> sync address")
    peers = {}
    for name, value in peers_raw.items():
        if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
            raise ConfigError(f"{path}.peers", f"not a member name: {name!r}")
        peers[name] = ip(value, f"{path}.peers.{name}")
    address = None if m.get("address") is None else ip(m["address"], f"{path}.address")
    return StateSyncSettings(
        enabled=enabled,
        address=address,
        port=port,
        port_span=span,
        peers=peer_overrides(peers),
        resync_timeout_s=number(m.get("resync_timeout_s", d.resync_timeout_s), f"{path}.resync_timeout_s", 0.0, 600.0),
        peer_timeout_s=number(m.get("peer_timeout_s", d.peer_timeout_s), f"{path}.peer_timeout_s", 1.0, 600.0),
        stats_interval_s=number(m.get("stats_interval_s", d.stats_interval_s), f"{path}.stats_interval_s", 0.1, 60.0),
        refresh_interval_s=number(m.get("refresh_interval_s", d.refresh_interval_s), f"{path}.refresh_interval_s",
                                  0.0, 3600.0),
        binary=string(m.get("binary", d.binary), f"{path}.binary"),
    )


def _log(raw: Any, path: str) -> LogSettings:
    m = mapping(raw, path, {"level", "format"})
    try:
        level = LogLevel(str(m.get("level", "info")).lower())
    except ValueError:
        raise ConfigError(f"{path}.level", "must be one of debug, info, warning, error") from None
    try:
        fmt = LogFormat(m.get("format", "kv"))
    except ValueError:
        raise ConfigError(f"{path}.format", "must be json or kv") from None
    return LogSettings(level=level, format=fmt)


def _health(raw: Any, path: str, base: Path) -> HealthSettings:
    keys = {"interval_s", "fall", "rise", "heartbeat_max_age_s", "upstream_probe", "disable_file"}
    m = mapping(raw, path, keys)
    d = HealthSettings()
    probe = None
    if m.get("upstream_probe") is not None:
        pp = f"{path}.upstream_probe"
        pm = mapping(m["upstream_probe"], pp, {"address", "port", "timeout_ms"})
        if "address" not in pm:
            raise ConfigError(f"{pp}.address", "is required")
        probe = UpstreamProbe(
            address=ip(pm["address"], f"{pp}.address"),
            port=None if pm.get("port") is None else integer(pm["port"], f"{pp}.port", 1, 65535),
            timeout_ms=integer(pm.get("timeout_ms", 500), f"{pp}.timeout_ms", 1, 60000),
        )
    interval = number(m.get("interval_s", d.interval_s), f"{path}.interval_s", 0.05, 60.0)
    max_age = number(m.get("heartbeat_max_age_s", d.heartbeat_max_age_s), f"{path}.heartbeat_max_age_s", 1.0, 3600.0)
    return HealthSettings(
        interval_s=interval,
        fall=integer(m.get("fall", d.fall), f"{path}.fall", 1, 100),
        rise=integer(m.get("rise", d.rise), f"{path}.rise", 1, 100),
        heartbeat_max_age_s=max_age,
        upstream_probe=probe,
        disable_file=abs_path(m["disable_file"], f"{path}.disable_file", base) if "disable_file" in m else None,
    )


def _common(m: Mapping[str, Any], source: Path, default_metrics_port: int, env: Mapping[str, str]) -> dict[str, Any]:
    base = source.parent
    node = m.get("node_name")
    if node is None:
        node = env.get("NODE_NAME") or socket.gethostname().split(".")[0].lower()
        field = "node_name ($NODE_NAME or the host name)"
    else:
        field = "node_name"
    node = string(node, field)
    if not _DNS_SUBDOMAIN.match(node) or len(node) > 253:
        raise ConfigError(field, f"must be a Kubernetes node name (DNS subdomain), got {node!r}")
    tunnel_m = mapping(m.get("tunnel"), "tunnel", {"mtu"})
    lease_ns = string(m.get("lease_namespace", "egressgw-system"), "lease_namespace")
    if not _DNS_LABEL.match(lease_ns) or len(lease_ns) > 63:
        raise ConfigError("lease_namespace", f"must be a namespace name (DNS label), got {lease_ns!r}")
    return {
        "source": source,
        "node_name": node,
        "kube": KubeSettings(
            kubeconfig=abs_path(m["kubeconfig"], "kubeconfig", base) if m.get("kubeconfig") is not None else None,
        ),
        "tunnel": TunnelOverrides(
            mtu=None if tunnel_m.get("mtu") is None else integer(tunnel_m["mtu"], "tunnel.mtu", 1280, 9000)
        ),
        "metrics": _metrics(m.get("metrics"), "metrics", default_metrics_port),
        "lease_namespace": lease_ns,
        "reconcile": _reconcile(m.get("reconcile"), "reconcile"),
        "state_dir": abs_path(m.get("state_dir", "/var/lib/egressgw"), "state_dir", base),
        "log": _log(m.get("log"), "log"),
        "datapath": _datapath(m.get("datapath"), "datapath"),
    }


def _datapath(raw: Any, path: str) -> DatapathSettings:
    m = mapping(raw, path, {"ruleset"})
    ruleset = string(m.get("ruleset", "auto"), f"{path}.ruleset")
    if ruleset not in RULESET_SETTINGS:
        raise ConfigError(f"{path}.ruleset", f"must be one of {', '.join(RULESET_SETTINGS)}, got {ruleset!r}")
    return DatapathSettings(ruleset=ruleset)


def _read(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError("(file)", f"cannot read: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError("(file)", f"not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("(top level)", "must be a mapping")
    return raw


def parse_agent_config(raw: Any, *, source: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    m = mapping(raw, "", _AGENT_KEYS)
    common = _common(m, source, 9710, os.environ if env is None else env)
    return AgentConfig(
        **common,
        underlay=_interface(m.get("underlay"), "underlay"),
        wireguard=_wireguard(m.get("wireguard"), "wireguard", source.parent, gateway=False),
        source_validation=_source_validation(m.get("source_validation"), "source_validation"),
        liveness=_liveness(m.get("liveness"), "liveness"),
        marks=_marks(m.get("marks"), "marks", MarkSettings()),
    )


def _marks(raw: Any, path: str, default: MarkSettings) -> MarkSettings:
    """`marks: {mark_base, mark_mask, slot_mask}` (integers; YAML reads 0x2000 as one); unset keys keep the role's
    default. The combination is validated by MarkSettings (base inside mask, slot bits outside it...)."""
    if raw is None:
        return default
    m = mapping(raw, path, {"mark_base", "mark_mask", "slot_mask"})
    values = {k: integer(m.get(k, getattr(default, k)), f"{path}.{k}", 0, 0xFFFFFFFF)
              for k in ("mark_base", "mark_mask", "slot_mask")}
    try:
        return MarkSettings(**values, rule_priority_base=default.rule_priority_base, table_base=default.table_base)
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise ConfigError(f"{path}.{field}", message) from exc


def _liveness(raw: Any, path: str) -> ProbeSettings:
    d = ProbeSettings()
    if raw is None:
        return d
    m = mapping(raw, path, {"enabled", "interval_s", "fall", "rise", "max_rate_per_s"})
    enabled = m.get("enabled", d.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{path}.enabled", f"must be true or false: {enabled!r}")
    return ProbeSettings(
        enabled=enabled,
        interval_s=number(m.get("interval_s", d.interval_s), f"{path}.interval_s", 0.05, 10.0),
        fall=integer(m.get("fall", d.fall), f"{path}.fall", 1, 100),
        rise=integer(m.get("rise", d.rise), f"{path}.rise", 1, 100),
        max_rate_per_s=number(m.get("max_rate_per_s", d.max_rate_per_s), f"{path}.max_rate_per_s", 0.1, 1000.0),
    )


def _source_validation(raw: Any, path: str) -> SourceValidation:
    if raw is None:
        return SourceValidation.STRICT
    value = string(raw, path)
    try:
        return SourceValidation(value)
    except ValueError:
        allowed = ", ".join(v.value for v in SourceValidation)
        raise ConfigError(path, f"must be one of {allowed}: {value!r}") from None


def parse_gateway_config(raw: Any, *, source: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    m = mapping(raw, "", _GATEWAY_KEYS)
    common = _common(m, source, 9711, os.environ if env is None else env)
    bgp = None
    router_id_from_uplink = False
    if m.get("bgp") is not None:
        if not isinstance(m["bgp"], Mapping):
            raise ConfigError("bgp", "must be a mapping")
        raw_bgp = dict(m["bgp"])
        # neither router_id nor local_address: the uplink's IPv4 address at start (one config for every member of a
        # DaemonSet); the placeholder only lets the BGP parser validate everything else now
        router_id_from_uplink = "router_id" not in raw_bgp and "local_address" not in raw_bgp
        if router_id_from_uplink:
            raw_bgp["router_id"] = str(ROUTER_ID_PLACEHOLDER)
        bgp = parse_bgp_settings(raw_bgp, "bgp")
    gateway = None
    if m.get("gateway") is not None:
        gateway = string(m["gateway"], "gateway")
        if not _DNS_SUBDOMAIN.match(gateway):
            raise ConfigError("gateway", f"must be an EgressGateway name, got {gateway!r}")
    drain = mapping(m.get("drain"), "drain", {"timeout_s", "settle_s"})
    if drain and bgp is not None:
        raise ConfigError("drain", "set the drain timings in bgp.drain when a bgp section exists")
    timeout = number(drain.get("timeout_s", 10.0), "drain.timeout_s", 0.1, 3600.0)
    settle = number(drain.get("settle_s", 1.0), "drain.settle_s", 0.0, 600.0)
    if bgp is not None:
        timeout, settle = bgp.drain.timeout_s, bgp.drain.settle_s
    elif settle > timeout:
        raise ConfigError("drain.settle_s", "must not exceed drain.timeout_s")
    security = mapping(m.get("security"), "security", {"tunnel_source_check"})
    check = security.get("tunnel_source_check", TunnelSourceCheck.STRICT.value)
    if check not in {c.value for c in TunnelSourceCheck}:
        raise ConfigError("security.tunnel_source_check",
                          f"must be one of {', '.join(c.value for c in TunnelSourceCheck)}, got {check!r}")
    return GatewayConfig(
        **common,
        tunnel_source_check=TunnelSourceCheck(check),
        marks=_marks(m.get("marks"), "marks", GATEWAY_MARKS),
        uplink=_interface(m.get("uplink"), "uplink"),
        wireguard=_wireguard(m.get("wireguard"), "wireguard", source.parent, gateway=True),
        bgp=bgp,
        health=_health(m.get("health"), "health", source.parent),
        gateway=gateway,
        router_id_from_uplink=router_id_from_uplink,
        drain_timeout_s=timeout,
        drain_settle_s=settle,
        state_sync=_state_sync(m.get("state_sync"), "state_sync"),
    )


def load_agent_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate an agent config file; raise `ConfigError` naming the field."""
    p = Path(path)
    return parse_agent_config(_read(p), source=p.absolute(), env=env)


def load_gateway_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a gateway config file; raise `ConfigError` naming the field."""
    p = Path(path)
    return parse_gateway_config(_read(p), source=p.absolute(), env=env)


def config_error_line(path: str | Path, error: ConfigError) -> str:
    """The one-line message both commands print before exiting 2."""
    return f"config error: {path}: {error.field}: {error.message}"


_Config = TypeVar("_Config")


def load_or_exit_code(load: Callable[[str], _Config], path: str) -> _Config | int:
    """`load(path)`, or - on a `ConfigError` - exit code 2 after printing `config_error_line` to stderr (the
    commands' way of loading their config)."""
    try:
        return load(path)
    except ConfigError as e:
        print(config_error_line(path, e), file=sys.stderr)
        return 2
