"""The planners' skipped reasons, for both services: one shape, change detection, logging and counting.

Why: every planner leaves things out with a reason (a pod with no tunnel device yet, a worker the gateway does not
know, an EIP outside the instance's pools...). A skip is a steady state, not an event: logging it on every pass
would repeat the same line every resync, and never logging it hides why a pod's traffic is not steered. So each
service keeps the current set (`SkipTracker`), logs `plan.skipped` when a skip appears and `plan.skip_cleared`
when it goes away, exports the count per reason (`egressgw_plan_skipped{role,reason}`), and the gateway shows the
set in its status document.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from appliance.core.events import EventLogger
from appliance.datapath.plan.gateway import GatewaySkip
from appliance.datapath.plan.wireguard import WgSkip
from appliance.datapath.plan.worker import Skip
from bgp.announcing import AnnouncementPlan


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class SkipNote:
    """One thing a planner left out and why, in a form every planner's skips fit (hashable, sortable)."""

    #: which planner: `worker`, `gateway`, `wireguard` or `announcements`
    planner: str
    #: the planner's reason (`NoTunnelDevice`, `UnknownWorker`, `NotInPool`...): a bounded set, a metric label
    reason: str
    #: what was skipped: a pod IP, a node, a WireGuard instance, an EIP
    subject: str
    #: what kind of thing `subject` is (the field name it is logged under): pod_ip, node, subject, eip
    subject_kind: str = "subject"
    policy: str = ""
    #: more context (the node of a pod, the instance of an EIP, the WireGuard planner's message)
    detail: str = ""

    def fields(self) -> dict[str, str]:
        """The log fields of this skip (empty ones left out)."""
        out = {"planner": self.planner, self.subject_kind: self.subject, "reason": self.reason}
        if self.policy:
            out["policy"] = self.policy
        if self.detail:
            out["detail"] = self.detail
        return out


def worker_skips(skipped: Iterable[Skip]) -> frozenset[SkipNote]:
    """`WorkerPlan.skipped` as notes."""
    return frozenset(
        SkipNote(planner="worker", reason=str(s.reason), subject=str(s.pod_ip), subject_kind="pod_ip", policy=s.policy)
        for s in skipped
    )


def gateway_skips(skipped: Iterable[GatewaySkip]) -> frozenset[SkipNote]:
    """`GatewayPlan.skipped` as notes (the pod's node as detail)."""
    return frozenset(
        SkipNote(
            planner="gateway",
            reason=str(s.reason),
            subject=str(s.pod_ip),
            subject_kind="pod_ip",
            policy=str(s.policy) if s.policy is not None else "",
            detail=f"node {s.node}" if s.node else "",
        )
        for s in skipped
    )


def wireguard_skips(skipped: Iterable[WgSkip]) -> frozenset[SkipNote]:
    """A WireGuard plan's skips as notes (the planner's message as detail)."""
    return frozenset(
        SkipNote(planner="wireguard", reason=str(s.reason), subject=s.subject, detail=s.message) for s in skipped
    )


def announcement_skips(plan: AnnouncementPlan) -> frozenset[SkipNote]:
    """`AnnouncementPlan.skipped` as notes (the instance as detail)."""
    return frozenset(
        SkipNote(planner="announcements", reason=str(reason), subject=str(eip), subject_kind="eip",
                 detail=f"instance {instance}")
        for instance, eip, reason in plan.skipped
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SkipChange:
    """What changed between two sets of skips (each sorted, for stable logs)."""

    added: tuple[SkipNote, ...] = ()
    cleared: tuple[SkipNote, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.cleared)


def skip_changes(old: frozenset[SkipNote], new: frozenset[SkipNote]) -> SkipChange:
    """The skips that appeared and the ones that went away (pure: the tracker's whole decision)."""
    return SkipChange(added=tuple(sorted(new - old)), cleared=tuple(sorted(old - new)))


def count_by_reason(skips: Iterable[SkipNote]) -> dict[str, int]:
    """How many current skips each reason has (the metric's values)."""
    return dict(Counter(s.reason for s in skips))


class SkipTracker:
    """The current skips of one service: logs and counts only changes, never the same skip twice in a row.

    Not thread-safe by itself: the agent calls it from its loop thread, the gateway under its lock.
    """

    def __init__(self, log: EventLogger, *, on_counts: Callable[[Mapping[str, int]], None] | None = None) -> None:
        self._log = log
        self._on_counts = on_counts
        self.current: frozenset[SkipNote] = frozenset()

    def update(self, skips: frozenset[SkipNote]) -> SkipChange:
        """Replace the current set; log `plan.skipped` for each new skip and `plan.skip_cleared` for each gone one."""
        change = skip_changes(self.current, skips)
        self.current = skips
        for note in change.added:
            self._log.warning("plan.skipped", **note.fields())
        for note in change.cleared:
            self._log.info("plan.skip_cleared", **note.fields())
        if change.changed and self._on_counts is not None:
            self._on_counts(count_by_reason(skips))
        return change
