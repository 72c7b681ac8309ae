"""nftables applier for our one table `inet egressgw`: observe -> diff -> one atomic transaction.

Two ways to converge, chosen by comparing the observed table with the desired one:
- the table is missing, or its structure differs (fingerprint in the table comment, set names, rule count per
  chain - someone flushed a chain or an upgrade changed the rules): replace the whole table in one `nft -f`
  transaction (create-if-missing + delete + create), so no packet ever sees a half-built ruleset;
- otherwise: only element and named-counter differences, in one transaction (`delete element` / `add element`):
  counters keep counting and one added pod costs one small transaction.
Nothing outside our table is read or written: the host firewall and the CNI's tables are never touched.

The COMPAT ruleset variant (`plan.nft_variant`) adds per-family companion tables `ip`/`ip6 egressgw` (its NAT
chains): they are observed, replaced and diffed together with the inet table, in the same transactions; a full
replace of the MODERN table deletes companions left by an earlier COMPAT run.
"""

from __future__ import annotations

from dataclasses import replace

from appliance.datapath.apply.kernel_fingerprint import table_comment, table_exists
from appliance.datapath.apply.netlink import ApplyResult, CommandError, Shell
from appliance.datapath.apply.nft_exec import list_json, run_nft
from appliance.datapath.plan.kernel_parsing import ObservedTable, parse_nft_counters, parse_nft_table
from appliance.datapath.plan.nft_rendering import FAMILY, TABLE, Contents, NftTable, render_delta, render_full
from appliance.datapath.plan.nft_variant import RulesetVariant

#: the families of the compat variant's companion tables (NAT chains)
COMPANION_FAMILIES = ("ip", "ip6")


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
    if table.marker:
        counts[table.marker_name] = 0
    return counts


def _same_structure(table: NftTable, observed: ObservedTable | None) -> bool:
    return (
        observed is not None
        and observed.comment == table.comment
        and observed.rule_counts == expected_rule_counts(table)
        and set(observed.contents.elements) == {s.name for s in table.sets}
    )


def render_replace(table: NftTable) -> str:
    """The full-replace transaction: the table and its companions; a table without companions (MODERN) also
    deletes any companion table a COMPAT run left behind (create-if-missing + delete: valid whether or not it
    exists)."""
    text = render_full(table) + "".join(render_full(c) for c in table.companions)
    if not table.companions:
        text += "".join(f"table {f} {TABLE}\ndelete table {f} {TABLE}\n" for f in COMPANION_FAMILIES)
    return text


class NftApplier:
    def __init__(self, shell: Shell | None = None, variant: RulesetVariant = RulesetVariant.MODERN) -> None:
        self.shell = shell or Shell()
        self.variant = variant

    @property
    def companion_families(self) -> tuple[str, ...]:
        return COMPANION_FAMILIES if self.variant is RulesetVariant.COMPAT else ()

    def _observe(self, family: str) -> ObservedTable | None:
        # the comment over netlink (nft 1.0.6's JSON omits it; a second listing would cost as much as the first)
        comment = table_comment(family, TABLE, self.shell.netns)
        if comment is None:
            return None
        rc, out, err = list_json(("list", "table", family, TABLE), netns=self.shell.netns)
        if rc != 0:
            raise CommandError(f"nft -j list table {family} {TABLE}: {err.strip()[:2000]}")
        return parse_nft_table(out, comment=comment)

    def observe(self) -> ObservedTable | None:
        """Our table as listed now (COMPAT: with its companion tables), or None when it does not exist (parsing:
        `kernel_parsing.parse_nft_table`)."""
        main = self._observe(FAMILY)
        if main is None or not self.companion_families:
            return main
        found = {f: o for f in self.companion_families if (o := self._observe(f)) is not None}
        return replace(main, companions=found)

    def plan(self, table: NftTable, observed: ObservedTable | None) -> tuple[str, int, bool]:
        """(nft -f text, number of changes, full replacement?) for converging `observed` to `table`."""
        if observed is None or not _same_structure(table, observed) or not all(
            _same_structure(c, observed.companions.get(c.family)) for c in table.companions
        ):
            return render_replace(table), 1, True
        text, n = render_delta(observed.contents, table)
        for c in table.companions:
            more, k = render_delta(observed.companions[c.family].contents, c)
            text, n = text + more, n + k
        return text, n, False

    def apply(self, table: NftTable, *, assume: ObservedTable | None = None) -> ApplyResult:
        """Converge to `table`; `assume` = trust this as the current state instead of listing the table."""
        observed = assume if assume is not None else self.observe()
        text, n, full = self.plan(table, observed)
        if not text:
            return ApplyResult()
        rc, _, err = run_nft(text, netns=self.shell.netns)
        if rc != 0 and not full:
            # an element we believed present vanished in between (or an odd listing): fall back to a full replace
            text, full = render_replace(table), True
            rc, _, err = run_nft(text, netns=self.shell.netns)
        what = "nft table replaced" if full else f"nft {n} element/counter changes"
        if rc != 0:
            return ApplyResult(failures=(f"nft: {err.strip()[:2000]}",))
        return ApplyResult(changes=(what,))

    def counters(self) -> dict[str, tuple[int, int]]:
        """Named counters by name; COMPAT: a counter of the same name in a companion table is added in."""
        rc, out, _ = list_json(("list", "counters", "table", FAMILY, TABLE), netns=self.shell.netns)
        if rc != 0:
            return {}
        total = parse_nft_counters(out)
        for family in self.companion_families:
            rc, out, _ = list_json(("list", "counters", "table", family, TABLE), netns=self.shell.netns)
            for name, (packets, octets) in (parse_nft_counters(out) if rc == 0 else {}).items():
                p, b = total.get(name, (0, 0))
                total[name] = (p + packets, b + octets)
        return total

    def exists(self) -> bool:
        return table_exists(FAMILY, TABLE, self.shell.netns)

    def remove_all(self) -> ApplyResult:
        """Delete our inet table and any companion table (either variant's), whichever exist."""
        result = ApplyResult()
        for family in (FAMILY, *COMPANION_FAMILIES):
            if run_nft(f"list table {family} {TABLE}\n", netns=self.shell.netns, terse=True)[0] != 0:
                continue
            rc, _, err = run_nft(f"delete table {family} {TABLE}\n", netns=self.shell.netns)
            if rc != 0:
                result += ApplyResult(failures=(f"nft delete table {family}: {err.strip()}",))
            else:
                result += ApplyResult(changes=("nft table deleted" if family == FAMILY
                                               else f"nft table {family} {TABLE} deleted",))
        return result


def as_observed(table: NftTable) -> ObservedTable:
    """What listing the table would show right after `table` was applied (for passes that trust the cache)."""
    return ObservedTable(
        comment=table.comment,
        contents=Contents(elements={s.name: s.elements for s in table.sets}, counters=table.counters),
        rule_counts=expected_rule_counts(table),
        counter_values={},
        companions={c.family: as_observed(c) for c in table.companions},
    )
