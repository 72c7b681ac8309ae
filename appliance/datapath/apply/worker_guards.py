"""The worker's guards outside `inet egressgw`: the bridge-port binding table and the NAT-order check.

- `BridgeBindingApplier` converges `table bridge egressgw` (`worker_nft.worker_bridge_table`): the table is replaced
  atomically when missing or when its structure differs (fingerprint in its comment, rule counts), else only the
  sets whose elements differ are rewritten (flush + add in one transaction, so the drop counter keeps counting and
  no frame sees a half-filled set). The bridge family hooks frames as they enter a bridge port, which is the only
  place the port is still known (the inet hooks see the bridge device).
- `foreign_nat_chains` lists the node's nat postrouting chains that run at or before our identity SNAT
  (`plan.nat_order`), for the agent to report.
"""

from __future__ import annotations

from appliance.datapath.apply.kernel_fingerprint import table_exists
from appliance.datapath.apply.netlink import ApplyResult, Shell
from appliance.datapath.apply.nft import expected_rule_counts
from appliance.datapath.apply.nft_exec import list_json, run_nft
from appliance.datapath.plan.kernel_parsing import parse_nft_counters, parse_nft_table, table_comment
from appliance.datapath.plan.nat_order import NatChain
from appliance.datapath.plan.nat_order import foreign_nat_chains as parse_foreign_nat_chains
from appliance.datapath.plan.nft_rendering import TABLE, NftTable
from appliance.datapath.plan.worker_nft import BRIDGE_FAMILY, render_bridge_elements, render_bridge_full


class BridgeBindingApplier:
    def __init__(self, shell: Shell | None = None) -> None:
        self.shell = shell or Shell()

    def apply(self, table: NftTable) -> ApplyResult:
        """Converge `bridge egressgw` to `table` (observes the kernel every time: the table is small)."""
        rc, text, _ = run_nft(f"list table {BRIDGE_FAMILY} {TABLE}\n", netns=self.shell.netns, terse=True)
        full = rc != 0
        body = ""
        if not full:
            rc, out, err = list_json(("list", "table", BRIDGE_FAMILY, TABLE), netns=self.shell.netns)
            if rc != 0:
                return ApplyResult(failures=(f"nft -j list table {BRIDGE_FAMILY} {TABLE}: {err.strip()[:1000]}",))
            observed = parse_nft_table(out, comment=table_comment(text))
            full = (observed.comment != table.comment or observed.rule_counts != expected_rule_counts(table)
                    or set(observed.contents.elements) != {s.name for s in table.sets}
                    or observed.contents.counters != table.counters)
            if not full:
                body, n = render_bridge_elements(table, observed.contents.elements)
                if not body:
                    return ApplyResult()
                what = f"bridge binding table: {n} sets refreshed"
        if full:
            body, what = render_bridge_full(table), "bridge binding table replaced"
        rc, _, err = run_nft(body, netns=self.shell.netns)
        if rc != 0:
            return ApplyResult(failures=(f"nft bridge table: {err.strip()[:1000]}",))
        return ApplyResult(changes=(what,))

    def remove(self) -> ApplyResult:
        if not self.exists():
            return ApplyResult()
        rc, _, err = run_nft(f"delete table {BRIDGE_FAMILY} {TABLE}\n", netns=self.shell.netns)
        if rc != 0:
            return ApplyResult(failures=(f"nft delete bridge table: {err.strip()[:500]}",))
        return ApplyResult(changes=("bridge binding table deleted",))

    def exists(self) -> bool:
        return table_exists(BRIDGE_FAMILY, TABLE, self.shell.netns)

    def counters(self) -> dict[str, tuple[int, int]]:
        rc, out, _ = list_json(("list", "counters", "table", BRIDGE_FAMILY, TABLE), netns=self.shell.netns)
        return parse_nft_counters(out) if rc == 0 else {}


def foreign_nat_chains(shell: Shell | None = None) -> tuple[NatChain, ...]:
    """Other nat postrouting chains at or before our identity SNAT's priority (any table, any family, iptables-nft
    included; iptables-legacy's nat table hooks at srcnat and is always after us)."""
    rc, out, _ = list_json(("list", "chains"), netns=(shell or Shell()).netns)
    return parse_foreign_nat_chains(out) if rc == 0 else ()
