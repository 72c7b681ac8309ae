"""The data path of one node, applied: netlink state + our nftables table, converged together in a safe order.

Order of a pass (make before break): links, addresses, neighbours, routes and rules are added or replaced first,
then the nft table is converged (marks now point at routes that exist; SNAT maps name EIPs that are held), then
sysctls are set (conntrack's exist once the table uses conntrack), then stale rules, routes, neighbours, addresses
and links are removed. Re-running a pass that has nothing to do changes
nothing (observe -> diff -> empty). A restarted process adopts what it finds: nothing is flushed at start.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.datapath.apply.netlink import ApplyResult, NetlinkApplier, Shell
from appliance.datapath.apply.nft import NftApplier, as_observed
from appliance.datapath.plan.gateway import GatewayPlan
from appliance.datapath.plan.gateway_nft import gateway_table
from appliance.datapath.plan.kernel_model import Change, KernelState, Sysctl, diff_phases
from appliance.datapath.plan.kernel_parsing import ObservedTable
from appliance.datapath.plan.nft_rendering import NftTable
from appliance.datapath.plan.worker import WorkerPlan
from appliance.datapath.plan.worker_nft import worker_table


@dataclass(frozen=True, slots=True, kw_only=True)
class Pending:
    """What a pass would change (from `diff`): kernel changes in two phases and the nft transaction."""

    make: tuple[Change, ...]
    brk: tuple[Change, ...]
    nft_text: str
    nft_changes: int
    nft_full: bool

    @property
    def empty(self) -> bool:
        return not self.make and not self.brk and not self.nft_text


def _parts(plan: WorkerPlan | GatewayPlan) -> tuple[KernelState, NftTable]:
    if isinstance(plan, WorkerPlan):
        return plan.kernel, worker_table(plan)
    return plan.kernel, gateway_table(plan)


class DataPathApplier:
    """observe() / diff(plan) / apply(plan) / remove_all() for a worker or gateway plan, in one namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self.shell = Shell(netns)
        self.netlink = NetlinkApplier(self.shell)
        self.nft = NftApplier(self.shell)
        #: what the last successful apply left in the kernel (for passes that trust it instead of observing)
        self._last: tuple[KernelState, NftTable] | None = None

    def observe(self, sysctl_keys: tuple[str, ...] = ()) -> tuple[KernelState, ObservedTable | None]:
        return self.netlink.observe(sysctl_keys), self.nft.observe()

    def diff(self, plan: WorkerPlan | GatewayPlan) -> Pending:
        kernel, table = _parts(plan)
        observed_kernel, observed_table = self.observe(tuple(s.key for s in kernel.sysctls))
        make, brk = diff_phases(observed_kernel, kernel)
        text, n, full = self.nft.plan(table, observed_table)
        return Pending(make=make, brk=brk, nft_text=text, nft_changes=n if text else 0, nft_full=full and bool(text))

    def apply(self, plan: WorkerPlan | GatewayPlan, *, observe: bool = True) -> ApplyResult:
        """Converge to `plan`; returns the changes made (empty when the kernel already matched) and failures.

        observe=True (default; use it for resync passes) lists our kernel state and diffs against it, repairing any
        drift. observe=False diffs against what the previous successful apply of this object left (an event-driven
        pass at 10k pods then skips listing 10k routes and 40k set elements); it falls back to observing when
        there is no such state or the previous pass failed.
        """
        kernel, table = _parts(plan)
        last = self._last if not observe else None
        self._last = None
        if last is not None:
            observed_kernel, assume = last[0], as_observed(last[1])
        else:
            observed_kernel, assume = self.netlink.observe(tuple(s.key for s in kernel.sysctls)), None
        make, brk = diff_phases(observed_kernel, kernel)
        # sysctls after the nft table: conntrack's sysctls exist only once conntrack is in use in this namespace
        result = self.netlink.execute([c for c in make if not isinstance(c.item, Sysctl)])
        result += self.nft.apply(table, assume=assume)
        result += self.netlink.execute([c for c in make if isinstance(c.item, Sysctl)])
        result += self.netlink.execute(brk)
        if not result.failures:
            self._last = (kernel, table)
        return result

    def forget(self) -> None:
        """Drop the cached state (someone changed the kernel behind the cache: the next pass observes)."""
        self._last = None

    def remove_all(self) -> ApplyResult:
        """Remove our nft table first (stop steering/SNAT), then our routes, rules, neighbours, EIPs and links."""
        self._last = None
        return self.nft.remove_all() + self.netlink.remove_all()

    def checks(self) -> dict[str, bool]:
        """Health inputs: our tunnel devices exist and are up; our nft table exists."""
        links = self.netlink.observe().links
        return {
            "tunnel_device": bool(links) and all(link.mtu > 0 for link in links),
            "nft_table": self.nft.exists(),
        }

    def counters(self) -> dict[str, tuple[int, int]]:
        return self.nft.counters()
