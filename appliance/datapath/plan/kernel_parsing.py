"""Parsing what the kernel tools print (`ip -json`, `nft -json`, `sysctl`) into the kernel model: pure functions.

Why a module of its own: the appliers observe the kernel by running `ip -j ...` and `nft -j list ...`, and reading
that output is where most of the kernel's quirks show (a route's encap `dst` repeating the `dst` key, `default`
instead of a prefix, rule marks in hex strings, nft elements as nested prefix/range/concat objects). Kept apart from
the commands, the parsing is tested against outputs captured on a real kernel (tests/unit/fixtures/kernel) without
root or namespaces, and the appliers only run commands and hand the text over.

Everything here takes the text (or the already decoded JSON) and returns model values; nothing runs a command.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface, ip_address, ip_interface, ip_network
from typing import Any

from appliance.core.model import IPAddress, IPNetwork
from appliance.datapath.plan.kernel_model import (
    LINK_PREFIX,
    MAIN_TABLE,
    OWN_METRIC,
    OWN_PROTO,
    Encap,
    LocalAddress,
    Neighbour,
    Route,
    Rule,
    Sysctl,
    TunnelLink,
)
from appliance.datapath.plan.nft_rendering import MARKER_PREFIX, Contents, Element

JsonObject = dict[str, Any]

# ----- ip -json -----


def _keep_repeated_keys(items: list[tuple[str, Any]]) -> JsonObject:
    """JSON object hook: a repeated key (a route's encap `dst` after its own `dst`) is kept as `<key>_2`."""
    d: JsonObject = {}
    for k, v in items:
        d[f"{k}_2" if k in d else k] = v
    return d


def load_ip_json(text: str) -> list[JsonObject]:
    """`ip -json` output as a list of objects; empty output (nothing matched) is an empty list.

    iproute2 prints a route's encapsulation destination as a second `dst` key in the same object; the standard
    decoder would keep only the last one, so the second is kept as `dst_2`.
    """
    data = json.loads(text or "[]", object_pairs_hook=_keep_repeated_keys)
    return data if isinstance(data, list) else []


def _table(value: object) -> int:
    if value in (None, "main"):
        return MAIN_TABLE
    return int(str(value))


@functools.lru_cache(maxsize=65536)
def _net(dst: str, version: int) -> IPNetwork:
    if dst == "default":
        return ip_network("0.0.0.0/0" if version == 4 else "::/0")
    return ip_network(dst)


@functools.lru_cache(maxsize=65536)
def _addr(text: str) -> IPAddress:
    """Parsing addresses is the slow part of observing 10k routes; a steady state parses the same strings."""
    return ip_address(text)


def addr_infos(addresses: Iterable[Mapping[str, Any]]) -> list[JsonObject]:
    """The `addr_info` entries of every link in `ip -j addr show [dev X]` output, in order."""
    return [a for d in addresses for a in d.get("addr_info", [])]


def owned_link_names(links: Iterable[Mapping[str, Any]], prefix: str = LINK_PREFIX) -> list[str]:
    """Names of the links in `ip -j link show` output that carry our prefix (nothing else is ever ours)."""
    return [str(d.get("ifname", "")) for d in links if str(d.get("ifname", "")).startswith(prefix)]


def parse_tunnel_link(link: Mapping[str, Any], addr_info: Sequence[Mapping[str, Any]]) -> TunnelLink:
    """One of our tunnel links from its `ip -d -j link show` object and its `addr_info` entries.

    The port is -1 unless the link is a VXLAN device in external mode (so a same-named device of another kind is
    replaced), and the MTU is -1 while the link is down (so the applier brings it up); the IPv4 address is
    0.0.0.0/32 when it has none.
    """
    linkinfo = link.get("linkinfo", {})
    info = linkinfo.get("info_data", {})
    external = bool(info.get("external")) and linkinfo.get("info_kind") == "vxlan"
    up = "UP" in link.get("flags", [])
    addr4 = next((a for a in addr_info if a.get("family") == "inet"), None)
    address = IPv4Interface(f"{addr4['local']}/{addr4['prefixlen']}") if addr4 else IPv4Interface("0.0.0.0/32")
    return TunnelLink(
        name=str(link.get("ifname", "")), port=int(info.get("port", 0)) if external else -1,
        mac=str(link.get("address", "")), mtu=int(link.get("mtu", 0)) if up else -1, address=address,
    )


def parse_local_addresses(addr_info: Iterable[Mapping[str, Any]]) -> frozenset[LocalAddress]:
    """Our EIPs among `lo`'s addresses: the ones with metric OWN_METRIC (the ownership marker)."""
    return frozenset(LocalAddress(ip=ip_address(a["local"])) for a in addr_info if a.get("metric") == OWN_METRIC)


def parse_neighbours(neighbours: Iterable[Mapping[str, Any]]) -> frozenset[Neighbour]:
    """Neighbours on our links from `ip -j neigh show nud permanent`."""
    return frozenset(
        Neighbour(dev=str(n["dev"]), ip=ip_address(n["dst"]), mac=str(n.get("lladdr", "")))
        for n in neighbours
        if str(n.get("dev", "")).startswith(LINK_PREFIX)
    )


def parse_routes(routes: Iterable[Mapping[str, Any]], version: int) -> frozenset[Route]:
    """Routes from `ip -j -4|-6 route show table all proto OWN_PROTO` (loaded with `load_ip_json`).

    `version` is needed because iproute2 prints `default` for both families. The next hop is `gateway` (same
    family) or `via.host` (IPv6 next hop of an IPv4 route); the encapsulation is `id` and `dst_2`.
    """
    found: set[Route] = set()
    for r in routes:
        via = r.get("gateway") or r.get("via", {}).get("host")
        encap = Encap(vni=int(r.get("id", 0)), dst=_addr(r["dst_2"])) if "dst_2" in r else None
        found.add(
            Route(
                table=_table(r.get("table")), dst=_net(str(r["dst"]), version), dev=str(r.get("dev", "")),
                via=_addr(str(via)) if via else None, encap=encap,
            )
        )
    return frozenset(found)


def parse_rules(rules: Iterable[Mapping[str, Any]], version: int) -> frozenset[Rule]:
    """Our rules (protocol OWN_PROTO) from `ip -j -4|-6 rule show`; everyone else's are left out.

    A rule with a mark but no mask has the full mask; `not`, `goto` and `nop` appear as keys.
    """
    found: set[Rule] = set()
    for r in rules:
        if str(r.get("protocol", "")) != str(OWN_PROTO):
            continue
        has_mark = "fwmark" in r
        found.add(
            Rule(
                family=version, priority=int(r["priority"]), fwmark=int(str(r.get("fwmark", "0")), 16),
                mask=int(str(r.get("fwmask", "0xffffffff" if has_mark else "0")), 16),
                table=_table(r["table"]) if "table" in r else 0, iif=str(r.get("iif", "")),
                invert="not" in r, goto=int(r.get("goto", 0)), nop="nop" in r,
            )
        )
    return frozenset(found)


def parse_sysctls(text: str) -> frozenset[Sysctl]:
    """`sysctl -e KEY...` output (`key = value` lines); keys the kernel does not have are simply absent."""
    found = set()
    for line in text.splitlines():
        k, sep, v = line.partition(" = ")
        if sep:
            found.add(Sysctl(key=k.strip(), value=v.strip()))
    return frozenset(found)


def parse_interface_addresses(addresses: Iterable[Mapping[str, Any]]) -> dict[str, tuple[IPv4Interface | IPv6Interface,
                                                                                           ...]]:
    """Per link name, its IPv4 and IPv6 addresses with prefix length, from `ip -j addr show`."""
    return {
        str(d["ifname"]): tuple(ip_interface(f"{a['local']}/{a['prefixlen']}") for a in d.get("addr_info", [])
                                if a.get("family") in ("inet", "inet6"))
        for d in addresses
    }


def parse_device_routes(routes: Iterable[Mapping[str, Any]], version: int) -> set[tuple[str, str]]:
    """(destination prefix, device) of each route in `ip -j -4|-6 route show ...`; a bare address is a host route."""
    host = 32 if version == 4 else 128
    found: set[tuple[str, str]] = set()
    for r in routes:
        dst = str(r["dst"])
        found.add((str(ip_network(dst if "/" in dst else f"{dst}/{host}")), str(r["dev"])))
    return found


# ----- nft -json -----

_COMMENT = re.compile(r'^\s*comment "(?P<c>[^"]*)"', re.M)


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedTable:
    """Our nft table as listed: its comment (the structure fingerprint), elements, rule counts and counters."""

    comment: str
    contents: Contents
    #: chain name -> number of rules
    rule_counts: dict[str, int]
    #: counter name -> (packets, bytes)
    counter_values: dict[str, tuple[int, int]]
    #: the COMPAT variant's companion tables (`ip`/`ip6 egressgw`, its NAT chains) by family, when they exist
    companions: Mapping[str, ObservedTable] = field(default_factory=dict)


def table_comment(text: str) -> str:
    """The table comment from `nft -t list table` text (nft 1.0.6's JSON omits it); empty when there is none."""
    m = _COMMENT.search(text)
    return m.group("c") if m else ""


def _canon_part(part: Any, typ: str = "") -> str:
    """nft JSON -> our canonical element text, without parsing addresses (nft prints them canonically already:
    dotted quad / RFC 5952, which is also what Python's ipaddress prints); this runs for every element."""
    if typ == "mark":
        return f"{int(part):#010x}"
    if isinstance(part, dict):
        if "prefix" in part:
            a, n = part["prefix"]["addr"], int(part["prefix"]["len"])
            return str(a) if n == (128 if ":" in a else 32) else f"{a}/{n}"
        if "range" in part:
            return "-".join(str(x) for x in part["range"])
    return str(part)


def _canon_key(key: Any, types: list[str]) -> str:
    if isinstance(key, dict) and "concat" in key:
        return " . ".join(_canon_part(p, t) for p, t in zip(key["concat"], types, strict=False))
    return _canon_part(key, types[0] if types else "")


def _canon_value(data_type: str | None, value: Any) -> str | None:
    if data_type is None:
        return None
    if data_type == "mark":
        return f"{int(value):#010x}"
    if data_type == "verdict" and isinstance(value, dict) and len(value) == 1:
        # a verdict map's `jump NAME` / `goto NAME` / `accept` ({"jump": {"target": NAME}})
        ((kind, arg),) = value.items()
        target = arg.get("target") if isinstance(arg, dict) else None
        return f"{kind} {target}" if target else str(kind)
    return _canon_part(value)


def _counter(c: Mapping[str, Any]) -> tuple[int, int]:
    return int(c.get("packets", 0)), int(c.get("bytes", 0))


def parse_nft_table(json_text: str, *, comment: str) -> ObservedTable:
    """`nft -j list table FAMILY NAME` output as an `ObservedTable` (`comment` from `table_comment`).

    Set and map elements become the canonical text the renderer produces (`addr . addr`, `a/n`, `a-b`, marks as
    0x%08x), so observed and desired contents compare directly.
    """
    elements: dict[str, frozenset[Element]] = {}
    counters: dict[str, tuple[int, int]] = {}
    rules: dict[str, int] = {}
    for item in json.loads(json_text).get("nftables", []):
        if "counter" in item:
            c = item["counter"]
            counters[c["name"]] = _counter(c)
        elif "chain" in item:
            rules.setdefault(item["chain"]["name"], 0)
        elif "rule" in item:
            name = item["rule"]["chain"]
            rules[name] = rules.get(name, 0) + 1
        else:
            s = item.get("set") or item.get("map")
            if s is None:
                continue
            data_type = s.get("map")
            types = s.get("type", [])
            types = [types] if isinstance(types, str) else list(types)
            elems = set()
            for e in s.get("elem", []):
                if isinstance(e, list):
                    elems.add((_canon_key(e[0], types), _canon_value(data_type, e[1])))
                else:
                    elems.add((_canon_key(e, types), None))
            elements[s["name"]] = frozenset(elems)
    if not comment:
        comment = marker_comment(rules)
    return ObservedTable(
        comment=comment,
        contents=Contents(elements=elements, counters=frozenset(counters)),
        rule_counts=rules,
        counter_values=counters,
    )


def marker_comment(chains: Iterable[str]) -> str:
    """The comment a COMPAT table would have had, from its marker chain `structure_<fingerprint>_<role>`
    (`NftTable.marker_name`: table comments need Linux 5.10); empty when there is none."""
    for name in chains:
        if name.startswith(MARKER_PREFIX):
            fingerprint, _, role = name.removeprefix(MARKER_PREFIX).partition("_")
            return f"egressgw {role} structure={fingerprint}"
    return ""


def parse_nft_counters(json_text: str) -> dict[str, tuple[int, int]]:
    """Named counters (name -> (packets, bytes)) from `nft -j list counters table FAMILY NAME`."""
    return {
        item["counter"]["name"]: _counter(item["counter"])
        for item in json.loads(json_text).get("nftables", [])
        if "counter" in item
    }
