"""nftables applier for our one table `inet egressgw`: observe -> diff -> one atomic transaction.

Two ways to converge, chosen by comparing the observed table with the desired one:
- the table is missing, or its structure differs (fingerprint in the table comment, set names, rule count per
  chain - someone flushed a chain or an upgrade changed the rules): replace the whole table in one `nft -f`
  transaction (create-if-missing + delete + create), so no packet ever sees a half-built ruleset;
- otherwise: only element and named-counter differences, in one transaction (`delete element` / `add element`):
  counters keep counting and one added pod costs one small transaction.
Nothing outside our table is read or written: the host firewall and the CNI's tables are never touched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from appliance.datapath.apply.netlink import ApplyResult, Shell
from appliance.datapath.plan.nft_rendering import FAMILY, TABLE, Contents, Element, NftTable, render_delta, render_full

_COMMENT = re.compile(r'^\s*comment "(?P<c>[^"]*)"', re.M)


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedTable:
    comment: str
    contents: Contents
    #: chain name -> number of rules
    rule_counts: dict[str, int]
    #: counter name -> (packets, bytes)
    counter_values: dict[str, tuple[int, int]]


def _canon_part(part: Any, typ: str = "") -> str:
    """nft JSON -> our canonical element text, without parsing addresses (nft prints them canonically already:
    dotted quad / RFC 5952, which is also what Python's ipaddress prints); this runs for every element."""
    if typ == "mark":
        return f"{int(part):#010x}"
    if isinstance(part, dict):
        if "prefix" in part:
            a, n = part["prefix"]["addr"], int(part["prefix"]["len"])
            return a if n == (128 if ":" in a else 32) else f"{a}/{n}"
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
    return _canon_part(value)


def expected_rule_counts(table: NftTable) -> dict[str, int]:
    counts: dict[str, int] = {}
    current = ""
    for line in table.chains.splitlines():
        s = line.strip()
        if s.startswith("chain "):
            current = s.split()[1]
            counts[current] = 0
        elif s and s != "}" and not s.startswith("type ") and current:
            counts[current] += 1
    return counts


class NftApplier:
    def __init__(self, shell: Shell | None = None) -> None:
        self.shell = shell or Shell()

    def observe(self) -> ObservedTable | None:
        rc, text, _ = self.shell.run(["nft", "-t", "list", "table", FAMILY, TABLE], check=False)
        if rc != 0:
            return None
        m = _COMMENT.search(text)
        _, out, _ = self.shell.run(["nft", "-j", "list", "table", FAMILY, TABLE])
        elements: dict[str, frozenset[Element]] = {}
        counters: dict[str, tuple[int, int]] = {}
        rules: dict[str, int] = {}
        for item in json.loads(out).get("nftables", []):
            if "counter" in item:
                c = item["counter"]
                counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
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
        return ObservedTable(
            comment=m.group("c") if m else "",
            contents=Contents(elements=elements, counters=frozenset(counters)),
            rule_counts=rules,
            counter_values=counters,
        )

    def plan(self, table: NftTable, observed: ObservedTable | None) -> tuple[str, int, bool]:
        """(nft -f text, number of changes, full replacement?) for converging `observed` to `table`."""
        if (
            observed is None
            or observed.comment != table.comment
            or observed.rule_counts != expected_rule_counts(table)
            or set(observed.contents.elements) != {s.name for s in table.sets}
        ):
            return render_full(table), 1, True
        text, n = render_delta(observed.contents, table)
        return text, n, False

    def apply(self, table: NftTable, *, assume: ObservedTable | None = None) -> ApplyResult:
        """Converge to `table`; `assume` = trust this as the current state instead of listing the table."""
        observed = assume if assume is not None else self.observe()
        text, n, full = self.plan(table, observed)
        if not text:
            return ApplyResult()
        rc, _, err = self.shell.run(["nft", "-f", "-"], input=text, check=False)
        if rc != 0 and not full:
            # an element we believed present vanished in between (or an odd listing): fall back to a full replace
            text, full = render_full(table), True
            rc, _, err = self.shell.run(["nft", "-f", "-"], input=text, check=False)
        what = "nft table replaced" if full else f"nft {n} element/counter changes"
        if rc != 0:
            return ApplyResult(failures=(f"nft: {err.strip()[:2000]}",))
        return ApplyResult(changes=(what,))

    def counters(self) -> dict[str, tuple[int, int]]:
        rc, out, _ = self.shell.run(["nft", "-j", "list", "counters", "table", FAMILY, TABLE], check=False)
        if rc != 0:
            return {}
        found = {}
        for item in json.loads(out).get("nftables", []):
            if "counter" in item:
                c = item["counter"]
                found[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        return found

    def exists(self) -> bool:
        return self.shell.run(["nft", "list", "table", FAMILY, TABLE], check=False)[0] == 0

    def remove_all(self) -> ApplyResult:
        if not self.exists():
            return ApplyResult()
        rc, _, err = self.shell.run(["nft", "delete", "table", FAMILY, TABLE], check=False)
        if rc != 0:
            return ApplyResult(failures=(f"nft delete table: {err.strip()}",))
        return ApplyResult(changes=("nft table deleted",))


def as_observed(table: NftTable) -> ObservedTable:
    """What listing the table would show right after `table` was applied (for passes that trust the cache)."""
    return ObservedTable(
        comment=table.comment,
        contents=Contents(elements={s.name: s.elements for s in table.sets}, counters=table.counters),
        rule_counts=expected_rule_counts(table),
        counter_values={},
    )
