"""The scenario description of a lab topology: which EgressGateway the demo, the e2e scenarios and the benchmarks
apply, with which pools and default EIPs.

The topology file says what the network is (roles, addresses, interfaces, ASNs); the scenario says what the
cluster objects are. By default the scenario of `lab/topologies/NAME.clab.yml` is `lab/topologies/NAME.scenario.yml`
(`default_scenario_path`); `egressgw lab demo --scenario FILE` and `egressgw bench failover --scenario FILE` override
it. Format (every key but `gateway` and `pools` optional)::

    gateway: egw-default                      # the EgressGateway's name
    tunnel: {type: vxlan, family: ""}         # family: "" (each node's default) | IPv4 | IPv6 (spec.tunnel.family)
    pools: {ipv4: ["203.0.113.200-203.0.113.209"], ipv6: ["2001:db8:e1::200-2001:db8:e1::209"]}
    default_eip: {ipv4: 203.0.113.200, ipv6: "2001:db8:e1::200"}
    failback_hold_s: 3.0

Pure: reads YAML, validates, returns a frozen value. Every problem found is reported at once, each naming its key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_TOP_KEYS = frozenset({"gateway", "tunnel", "pools", "default_eip", "failback_hold_s"})
_FAMILY_KEYS = ("ipv4", "ipv6")
TUNNEL_TYPES = ("vxlan", "wireguard")
#: accepted spellings of tunnel.family -> the EgressGateway's spelling ("" = not set)
_FAMILIES = {"": "", "ipv4": "ipv4", "ipv6": "ipv6"}


class ScenarioError(ValueError):
    """The scenario file is invalid; `problems` lists every problem, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: invalid scenario:\n  " + "\n  ".join(problems))
        self.source = source
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioSpec:
    gateway: str
    pools_v4: tuple[str, ...] = ()
    pools_v6: tuple[str, ...] = ()
    default_eip_v4: str = ""
    default_eip_v6: str = ""
    tunnel_type: str = "vxlan"
    #: "" (unset: each node's default family) | "ipv4" | "ipv6"
    tunnel_family: str = ""
    failback_hold_s: float = 3.0

    def default_eip(self, version: int) -> str:
        """The default EIP of family `version` ("" when the scenario sets none)."""
        return self.default_eip_v4 if version == 4 else self.default_eip_v6

    def pools(self, version: int) -> tuple[str, ...]:
        return self.pools_v4 if version == 4 else self.pools_v6


def default_scenario_path(topology: str | Path) -> Path:
    """`dir/NAME.clab.yml` (or `NAME.yml`/`NAME.yaml`) -> `dir/NAME.scenario.yml`."""
    p = Path(topology)
    name = p.name
    for suffix in (".clab.yml", ".clab.yaml", ".yml", ".yaml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(f"{name}.scenario.yml")


def load_scenario(path: str | Path) -> ScenarioSpec:
    """Read and validate a scenario file; ScenarioError lists every problem (OSError when unreadable)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(str(p), [f"not valid YAML: {exc}"]) from exc
    return parse_scenario(data, source=str(p))


def _pool_problem(text: str, version: int) -> str | None:
    """None when `text` is a CIDR or an `A-B` range of family `version`, else what is wrong."""
    try:
        if "-" in text:
            lo_s, _, hi_s = text.partition("-")
            lo, hi = ipaddress.ip_address(lo_s.strip()), ipaddress.ip_address(hi_s.strip())
            if lo.version != version or hi.version != version:
                return f"{text!r} is not an IPv{version} range"
            if int(hi) < int(lo):
                return f"{text!r}: the range ends before it starts"
            return None
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        return f"{text!r} is neither a CIDR nor an A-B range ({exc})"
    return None if net.version == version else f"{text!r} is not an IPv{version} network"


def _mapping(data: dict[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key}: must be a mapping")
        return {}
    return value


def parse_scenario(data: Any, *, source: str = "<scenario>") -> ScenarioSpec:
    """Validate parsed YAML; raise ScenarioError with every problem found."""
    if not isinstance(data, dict):
        raise ScenarioError(source, ["the file must be a mapping with at least 'gateway' and 'pools'"])
    problems: list[str] = []
    unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})")
    gateway = data.get("gateway")
    if not isinstance(gateway, str) or not _NAME_RE.match(gateway):
        problems.append(f"gateway: {gateway!r} must be a Kubernetes object name (lower-case letters, digits, '-', '.')")
        gateway = ""
    tunnel = _mapping(data, "tunnel", problems)
    for key in sorted(str(k) for k in tunnel if k not in ("type", "family")):
        problems.append(f"tunnel.{key}: unknown key (known: type, family)")
    tunnel_type = tunnel.get("type", "vxlan")
    if tunnel_type not in TUNNEL_TYPES:
        problems.append(f"tunnel.type: {tunnel_type!r} must be one of {', '.join(TUNNEL_TYPES)}")
        tunnel_type = "vxlan"
    family_raw = tunnel.get("family") or ""
    family = _FAMILIES.get(str(family_raw).lower()) if isinstance(family_raw, str) else None
    if family is None:
        problems.append(f"tunnel.family: {family_raw!r} must be \"\", IPv4 or IPv6")
        family = ""
    pools: dict[int, tuple[str, ...]] = {4: (), 6: ()}
    raw_pools = _mapping(data, "pools", problems)
    if "pools" not in data:
        problems.append("pools: required (ipv4 and/or ipv6: lists of CIDRs or A-B ranges)")
    for key in sorted(str(k) for k in raw_pools if k not in _FAMILY_KEYS):
        problems.append(f"pools.{key}: unknown key (known: ipv4, ipv6)")
    for version, key in ((4, "ipv4"), (6, "ipv6")):
        value = raw_pools.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"pools.{key}: must be a list of strings (CIDRs or A-B ranges)")
            continue
        for i, text in enumerate(value):
            if (problem := _pool_problem(text, version)) is not None:
                problems.append(f"pools.{key}[{i}]: {problem}")
        pools[version] = tuple(value)
    if "pools" in data and not pools[4] and not pools[6]:
        problems.append("pools: needs at least one IPv4 or IPv6 pool")
    if family and not pools[4 if family == "ipv4" else 6]:
        problems.append(f"tunnel.family: {family_raw} needs pools.{family} (the tunnels end at EIPs of that family)")
    defaults: dict[int, str] = {4: "", 6: ""}
    raw_defaults = _mapping(data, "default_eip", problems)
    for key in sorted(str(k) for k in raw_defaults if k not in _FAMILY_KEYS):
        problems.append(f"default_eip.{key}: unknown key (known: ipv4, ipv6)")
    for version, key in ((4, "ipv4"), (6, "ipv6")):
        value = raw_defaults.get(key)
        if value is None or value == "":
            continue
        try:
            addr = ipaddress.ip_address(str(value))
        except ValueError:
            problems.append(f"default_eip.{key}: {value!r} is not an IP address")
            continue
        if addr.version != version:
            problems.append(f"default_eip.{key}: {value!r} is not an IPv{version} address")
        elif not pools[version]:
            problems.append(f"default_eip.{key}: set, but pools.{key} is empty")
        else:
            defaults[version] = str(addr)
    hold = data.get("failback_hold_s", 3.0)
    if isinstance(hold, bool) or not isinstance(hold, int | float) or hold < 0:
        problems.append(f"failback_hold_s: {hold!r} must be a number of seconds >= 0")
        hold = 3.0
    if problems:
        raise ScenarioError(source, problems)
    return ScenarioSpec(gateway=gateway, pools_v4=pools[4], pools_v6=pools[6], default_eip_v4=defaults[4],
                        default_eip_v6=defaults[6], tunnel_type=str(tunnel_type), tunnel_family=family,
                        failback_hold_s=float(hold))
