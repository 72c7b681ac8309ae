"""Pure nftables rendering shared by the worker and gateway tables (`worker_nft`, `gateway_nft`): `inet egressgw`.

A table is split into its *structure* (chains, rules, set declarations: changes only with a software upgrade or a
mark-range setting) and its *contents* (set/map elements and named counters: change with pods and policies). The
structure is fingerprinted (sha256, kept in the table's comment) so the applier can tell "same structure, update
elements in place" (counters keep counting, one small transaction) from "replace the whole table atomically".

Elements are kept in one canonical text form (`100.64.1.10 . 0.0.0.0/0` -> `0x0e6e0001`) that the applier also
produces from `nft -j` output, so observed and desired contents compare as plain sets of strings.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.core.model import IPAddress, IPNetwork

FAMILY = "inet"
TABLE = "egressgw"
#: the name prefix of a compat table's structure marker chain (`NftTable.marker`)
MARKER_PREFIX = "structure_"

Element = tuple[str, str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class NftSet:
    name: str
    key_type: str
    data_type: str | None = None
    interval: bool = False
    elements: frozenset[Element] = frozenset()
    #: > 0: a set the ruleset fills itself (`update @set { ... }`, e.g. a per-source rate meter) whose entries expire
    #: after this many seconds; it has no desired elements and the applier never touches its contents
    dynamic_timeout: int = 0
    #: maximum number of entries of a dynamic set
    size: int = 65535
    #: key_type/data_type are expressions (`typeof ip saddr . @th,96,24 : meta mark`), for keys no named type has
    typeof: bool = False

    @property
    def kind(self) -> str:
        return "map" if self.data_type else "set"

    def declaration(self) -> str:
        typ = f"{self.key_type} : {self.data_type}" if self.data_type else self.key_type
        flags = " flags interval;" if self.interval else ""
        if self.dynamic_timeout:
            flags = f" size {self.size}; flags dynamic,timeout; timeout {self.dynamic_timeout}s;"
        return f"{self.kind} {self.name} {{ {'typeof' if self.typeof else 'type'} {typ};{flags} }}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NftTable:
    role: str
    chains: str
    sets: tuple[NftSet, ...]
    counters: frozenset[str]
    #: the nft family of the table (the compat variant adds per-family `ip`/`ip6` tables for its NAT chains)
    family: str = FAMILY
    #: compat variant: the structure fingerprint and role are kept as the name of an empty chain (`marker_name`)
    #: instead of the table comment (table comments need Linux 5.10 and nft 0.9.7)
    marker: bool = False
    #: compat variant: the per-family tables holding the NAT chains (NAT chains in an inet table need Linux 5.2),
    #: converged together with this table
    companions: tuple[NftTable, ...] = ()

    @property
    def structure(self) -> str:
        return "\n".join([s.declaration() for s in self.sets] + [self.chains])

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.role}\n{self.structure}".encode()).hexdigest()[:16]

    @property
    def comment(self) -> str:
        return f"egressgw {self.role} structure={self.fingerprint}"

    @property
    def marker_name(self) -> str:
        """The empty chain naming the structure fingerprint and role of a `marker` table ("" otherwise); listing
        the table gives back `comment` from it (`kernel_parsing.parse_nft_table`)."""
        return f"{MARKER_PREFIX}{self.fingerprint}_{self.role}" if self.marker else ""

    def set(self, name: str) -> NftSet:
        return next(s for s in self.sets if s.name == name)


# ----- canonical element text -----


@functools.lru_cache(maxsize=65536)
def addr(ip: IPAddress) -> str:
    return str(ip)


@functools.lru_cache(maxsize=65536)
def net(n: IPNetwork) -> str:
    """Canonical interval text: a host prefix is written as the address (that is how nft lists it)."""
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def mark(value: int) -> str:
    return f"{value:#010x}"


def _quote_value(data_type: str | None, value: str) -> str:
    return f'"{value}"' if data_type == "counter" else value


def key_text(s: NftSet, key: str) -> str:
    return f'"{key}"' if s.key_type == "ifname" else key


def element_text(s: NftSet, e: Element) -> str:
    key, value = e
    key = key_text(s, key)
    return key if value is None or s.data_type is None else f"{key} : {_quote_value(s.data_type, value)}"


def _elements_block(s: NftSet, elements: Iterable[Element]) -> str:
    return ", ".join(element_text(s, e) for e in sorted(elements))


# ----- whole table and deltas -----


def render_full(table: NftTable) -> str:
    """One `nft -f` transaction replacing our table (create-if-missing, delete, create): atomic."""
    head = f"{table.family} {TABLE}"
    out = [f"table {head}", f"delete table {head}", f"table {head} {{"]
    if table.marker:
        out.append(f"\tchain {table.marker_name} {{\n\t}}")
    else:
        out.append(f'\tcomment "{table.comment}"')
    out += [f"\tcounter {c} {{ }}" for c in sorted(table.counters)]
    for s in table.sets:
        decl = s.declaration()[:-1]
        body = f" elements = {{ {_elements_block(s, s.elements)} }}" if s.elements else ""
        out.append(f"\t{decl}{body} }}")
    out.append(table.chains)
    out.append("}")
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Contents:
    """What the applier observed (or wants) inside an existing table with the right structure."""

    elements: dict[str, frozenset[Element]]
    counters: frozenset[str]


def render_delta(observed: Contents, table: NftTable) -> tuple[str, int]:
    """The `nft -f` transaction turning observed contents into the table's (elements + counters); (text, #changes)."""
    lines: list[str] = []
    changes = 0
    new_counters = table.counters - observed.counters
    head = f"{table.family} {TABLE}"
    lines += [f"add counter {head} {c}" for c in sorted(new_counters)]
    changes += len(new_counters)
    for s in table.sets:
        if s.dynamic_timeout:
            continue
        have = observed.elements.get(s.name, frozenset())
        have_keys = {k: v for k, v in have}
        want_keys = {k: v for k, v in s.elements}
        remove = [(k, v) for k, v in have if want_keys.get(k, "\0") != v]
        add = [(k, v) for k, v in s.elements if have_keys.get(k, "\0") != v]
        if remove:
            keys = ", ".join(sorted(key_text(s, k) for k, _ in remove))
            lines.append(f"delete element {head} {s.name} {{ {keys} }}")
        if add:
            lines.append(f"add element {head} {s.name} {{ {_elements_block(s, add)} }}")
        changes += len(remove) + len(add)
    old_counters = observed.counters - table.counters
    lines += [f"delete counter {head} {c}" for c in sorted(old_counters)]
    changes += len(old_counters)
    return ("\n".join(lines) + "\n" if lines else "", changes)


# ----- worker -----


def split_families(items: Iterable[IPNetwork]) -> tuple[list[IPNetwork], list[IPNetwork]]:
    items = list(items)
    return [n for n in items if n.version == 4], [n for n in items if n.version == 6]
