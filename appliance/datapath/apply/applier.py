"""The data path of one node, applied: netlink state + our nftables table, converged together in a safe order.

Order of a pass (make before break): links, addresses, neighbours, routes and rules are added or replaced first,
then the nft table is converged (marks now point at routes that exist; SNAT maps name EIPs that are held), then
sysctls are set (conntrack's exist once the table uses conntrack), then stale rules, routes, neighbours, addresses
and links are removed. Re-running a pass that has nothing to do changes
nothing (observe -> diff -> empty). A restarted process adopts what it finds: nothing is flushed at start.

Resync passes cost what changed (`apply(observe=True)`): after an observing pass succeeded, the applier keeps that
pass's plan and a kernel fingerprint (`kernel_fingerprint`: nft ruleset generation + a hash of our routes, ~15 ms at
10k routes). The next observing pass takes the fingerprint first; when it is unchanged, the big parts (our nft
table's 40k elements, our 10k routes) are taken from that verified state instead of listed and parsed, and only the
small parts (links, addresses, neighbours, rules, sysctls) are listed; an unchanged plan ends the pass there. A full
observation still happens on the first pass, after a failed pass, after event passes that trusted the cache
(observe=False, the pod fast path's `forget()`), when the fingerprint changed (drift, or another program's nft
transaction: the generation is per namespace) and every `full_observe_every`-th observing pass as a safety net
(`shortcut_decision`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from appliance.datapath.apply.kernel_fingerprint import Fingerprint, fingerprint
from appliance.datapath.apply.netlink import ApplyResult, NetlinkApplier, Shell
from appliance.datapath.apply.nft import NftApplier, as_observed
from appliance.datapath.plan.gateway import GatewayPlan
from appliance.datapath.plan.gateway_nft import gateway_table
from appliance.datapath.plan.kernel_model import Change, KernelState, Sysctl, diff_phases
from appliance.datapath.plan.kernel_parsing import ObservedTable
from appliance.datapath.plan.nft_rendering import NftTable
from appliance.datapath.plan.nft_variant import RulesetVariant
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


def _parts(plan: WorkerPlan | GatewayPlan, variant: RulesetVariant) -> tuple[KernelState, NftTable]:
    if isinstance(plan, WorkerPlan):
        return plan.kernel, worker_table(plan, variant)
    return plan.kernel, gateway_table(plan, variant)


#: an observing pass lists the kernel in full at least once every this many observing passes (at the default 30 s
#: resync: every 5 minutes), whatever the fingerprint says: the safety net for a change the fingerprint cannot see
FULL_OBSERVE_EVERY = 10


class Observation(enum.StrEnum):
    """How the last pass learnt the kernel state (`DataPathApplier.last_observation`, for logs and tests)."""

    #: listed and parsed in full
    FULL = "full"
    #: nft table and routes from the verified state (fingerprint unchanged), the small parts listed
    FINGERPRINT = "fingerprint"
    #: no observation: an event pass trusting the previous pass (observe=False)
    CACHED = "cached"


class FullReason(enum.StrEnum):
    """Why an observing pass could not take the fingerprint shortcut."""

    #: the first pass, after a failed pass, after an event pass (observe=False) or `forget()`
    NOT_VERIFIED = "not-verified"
    SAFETY_NET = "safety-net"
    FINGERPRINT_UNAVAILABLE = "fingerprint-unavailable"
    KERNEL_CHANGED = "kernel-changed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verified:
    """The state a successful observing pass left, and the kernel fingerprint that shows it still holds."""

    plan: WorkerPlan | GatewayPlan
    kernel: KernelState
    table: NftTable
    fingerprint: Fingerprint
    #: observing passes answered by the fingerprint since the last full observation
    shortcuts: int = 0


def shortcut_decision(
    verified: Verified | None, now: Fingerprint | None, *, full_every: int = FULL_OBSERVE_EVERY
) -> FullReason | None:
    """None when an observing pass may trust `verified` for the nft table and routes, else why not (pure)."""
    if verified is None:
        return FullReason.NOT_VERIFIED
    if verified.shortcuts + 1 >= full_every:
        return FullReason.SAFETY_NET
    if now is None:
        return FullReason.FINGERPRINT_UNAVAILABLE
    if now != verified.fingerprint:
        return FullReason.KERNEL_CHANGED
    return None


class DataPathApplier:
    """observe() / diff(plan) / apply(plan) / remove_all() for a worker or gateway plan, in one namespace."""

    def __init__(self, netns: str | None = None, variant: RulesetVariant = RulesetVariant.MODERN) -> None:
        """`variant`: the nftables ruleset to render (`plan.nft_variant`; the services pass the chosen one)."""
        self.shell = Shell(netns)
        self.variant = variant
        self.netlink = NetlinkApplier(self.shell)
        self.nft = NftApplier(self.shell, variant)
        #: what the last successful apply left in the kernel (for passes that trust it instead of observing)
        self._last: tuple[KernelState, NftTable] | None = None
        #: observing passes list the kernel in full at least every this many passes (`shortcut_decision`)
        self.full_observe_every = FULL_OBSERVE_EVERY
        #: the last successful observing pass's state + fingerprint (resync shortcut); None = observe in full
        self._verified: Verified | None = None
        self.last_observation: Observation | None = None
        #: why the last observing pass listed everything (None when it took the shortcut)
        self.last_full_reason: FullReason | None = None

    def observe(self, sysctl_keys: tuple[str, ...] = ()) -> tuple[KernelState, ObservedTable | None]:
        return self.netlink.observe(sysctl_keys), self.nft.observe()

    def diff(self, plan: WorkerPlan | GatewayPlan) -> Pending:
        kernel, table = _parts(plan, self.variant)
        observed_kernel, observed_table = self.observe(tuple(s.key for s in kernel.sysctls))
        make, brk = diff_phases(observed_kernel, kernel)
        text, n, full = self.nft.plan(table, observed_table)
        return Pending(make=make, brk=brk, nft_text=text, nft_changes=n if text else 0, nft_full=full and bool(text))

    def apply(self, plan: WorkerPlan | GatewayPlan, *, observe: bool = True) -> ApplyResult:
        """Converge to `plan`; returns the changes made (empty when the kernel already matched) and failures.

        observe=True (default; use it for resync passes) checks our kernel state and diffs against it, repairing any
        drift; it lists the kernel in full unless the fingerprint shortcut applies (module docstring). observe=False
        diffs against what the previous successful apply of this object left (an event-driven pass at 10k pods then
        skips listing 10k routes and 40k set elements); it falls back to observing when there is no such state or
        the previous pass failed.
        """
        verified, self._verified = self._verified, None
        last = self._last if not observe else None
        self._last = None
        before: Fingerprint | None = None
        if observe:
            before = self._fingerprint()
            reason = shortcut_decision(verified, before, full_every=self.full_observe_every)
            self.last_full_reason = reason
            if reason is None and verified is not None:
                return self._apply_verified(plan, verified)
        kernel, table = _parts(plan, self.variant)
        if last is not None:
            self.last_observation = Observation.CACHED
            observed_kernel, assume = last[0], as_observed(last[1])
        else:
            self.last_observation = Observation.FULL
            observed_kernel, assume = self.netlink.observe(tuple(s.key for s in kernel.sysctls)), None
        result = self._converge(kernel, table, observed_kernel, assume)
        if not result.failures:
            self._last = (kernel, table)
            if before is not None:
                self._verify(plan, kernel, table, before, changed=bool(result.changes), shortcuts=0)
        return result

    def _apply_verified(self, plan: WorkerPlan | GatewayPlan, verified: Verified) -> ApplyResult:
        """An observing pass whose fingerprint matched: the nft table and routes are what `verified` left."""
        self.last_observation = Observation.FINGERPRINT
        same_plan = plan is verified.plan or plan == verified.plan
        kernel, table = (verified.kernel, verified.table) if same_plan else _parts(plan, self.variant)
        small = self.netlink.observe(tuple(s.key for s in kernel.sysctls), routes=False)
        if same_plan:
            # only the small parts can differ: no need to diff 10k routes against themselves
            make, brk = diff_phases(small, replace(kernel, routes=frozenset()))
            if not make and not brk:
                self._last = (kernel, table)
                self._verified = replace(verified, shortcuts=verified.shortcuts + 1)
                return ApplyResult()
        observed_kernel = replace(small, routes=verified.kernel.routes)
        result = self._converge(kernel, table, observed_kernel, as_observed(verified.table))
        if not result.failures:
            self._last = (kernel, table)
            self._verify(plan, kernel, table, verified.fingerprint, changed=bool(result.changes),
                         shortcuts=verified.shortcuts + 1)
        return result

    def _converge(self, kernel: KernelState, table: NftTable, observed_kernel: KernelState,
                  assume: ObservedTable | None) -> ApplyResult:
        make, brk = diff_phases(observed_kernel, kernel)
        # sysctls after the nft table: conntrack's sysctls exist only once conntrack is in use in this namespace
        result = self.netlink.execute([c for c in make if not isinstance(c.item, Sysctl)])
        result += self.nft.apply(table, assume=assume)
        result += self.netlink.execute([c for c in make if isinstance(c.item, Sysctl)])
        result += self.netlink.execute(brk)
        return result

    def _verify(self, plan: WorkerPlan | GatewayPlan, kernel: KernelState, table: NftTable, before: Fingerprint,
                *, changed: bool, shortcuts: int) -> None:
        """Record the verified state. After our own writes the fingerprint is read again: a change by someone else
        between our write and that read is not seen by the fingerprint; the safety-net full observation repairs it."""
        now = self._fingerprint() if changed else before
        if now is not None:
            self._verified = Verified(plan=plan, kernel=kernel, table=table, fingerprint=now, shortcuts=shortcuts)

    def _fingerprint(self) -> Fingerprint | None:
        try:
            return fingerprint(self.shell.netns)
        except OSError:
            return None

    def forget(self) -> None:
        """Drop the cached state (someone changed the kernel behind the cache: the next pass observes)."""
        self._last = None
        self._verified = None

    def remove_all(self) -> ApplyResult:
        """Remove our nft table first (stop steering/SNAT), then our routes, rules, neighbours, EIPs and links."""
        self._last = None
        self._verified = None
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
