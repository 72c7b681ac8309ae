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

from appliance.datapath.apply.netlink import ApplyResult, Shell
from appliance.datapath.plan.kernel_parsing import ObservedTable, parse_nft_counters, parse_nft_table, table_comment
from appliance.datapath.plan.nft_rendering import FAMILY, TABLE, Contents, NftTable, render_delta, render_full


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
        """Our table as listed now, or None when it does not exist (parsing: `kernel_parsing.parse_nft_table`)."""
        rc, text, _ = self.shell.run(["nft", "-t", "list", "table", FAMILY, TABLE], check=False)
        if rc != 0:
            return None
        _, out, _ = self.shell.run(["nft", "-j", "list", "table", FAMILY, TABLE])
        return parse_nft_table(out, comment=table_comment(text))

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
        return parse_nft_counters(out)

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
