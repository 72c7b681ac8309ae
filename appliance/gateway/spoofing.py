"""Surfacing the workers whose tunnel traffic the gateway drops as spoofed (`drop_spoofed`, issue: never silent).

Why: when a foreign NAT chain on a worker masquerades a steered packet inside the tunnel (or a worker pushes
traffic of pods it does not host), the gateway drops it as spoofed and the pod's traffic is blackholed. The drop is
right, but someone must learn about it: the gateway counts spoofed drops per worker (nft counter
`spoofed_<node>`, looked up by the worker's mark), and this watch turns the readings into a log line naming the
worker when its count rises, and a member condition (`WorkerTrafficSpoofed`) while it rose recently.

Pure: readings and the clock come in, a report and the log lines to write come out; the data path reads the
counters and logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance.datapath.plan.gateway_nft import SPOOFED_PREFIX
from appliance.gateway.view import MemberCondition

#: a worker stays reported this long after its spoofed count last rose (a condition that flaps with every packet
#: would be useless; 5 minutes covers a few resyncs and scrapes)
RECENT_S = 300.0
#: while a worker keeps sending spoofed traffic, the warning is repeated at most this often
LOG_EVERY_S = 60.0

CONDITION = "WorkerTrafficSpoofed"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class SpoofedWorker:
    """A worker whose tunnel traffic was dropped as spoofed recently."""

    node: str
    #: spoofed packets counted since this gateway process started (kernel counters kept monotonic)
    total: int
    #: packets counted in the last observation that saw a rise
    last_rise: int
    #: the watch clock at that observation
    last_rise_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoofAlert:
    """One log line to write: `worker.spoofed_traffic` naming the worker."""

    node: str
    new_packets: int
    total: int


@dataclass(slots=True)
class _Seen:
    last: int
    total: int = 0
    rise: int = 0
    rise_at: float | None = None
    logged_at: float | None = None


@dataclass(slots=True)
class SpoofWatch:
    """Per-worker spoofed-drop counters -> recent offenders and log lines. Feed it raw kernel readings."""

    recent_s: float = RECENT_S
    log_every_s: float = LOG_EVERY_S
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(self, readings: Mapping[str, tuple[int, int]], now: float) -> tuple[SpoofAlert, ...]:
        """Take one reading of every counter (name -> (packets, bytes)); the alerts to log for workers that rose.

        The first reading of a counter is the baseline (a restarted gateway does not re-report old drops); a
        reading below the previous one is a counter restart (table replaced): its value counts as new.
        """
        alerts: list[SpoofAlert] = []
        for name, (packets, _) in sorted(readings.items()):
            if not name.startswith(SPOOFED_PREFIX):
                continue
            node = name.removeprefix(SPOOFED_PREFIX)
            seen = self._seen.get(node)
            if seen is None:
                self._seen[node] = _Seen(last=packets)
                continue
            new = packets - seen.last if packets >= seen.last else packets
            seen.last = packets
            if new <= 0:
                continue
            seen.total += new
            seen.rise, seen.rise_at = new, now
            if seen.logged_at is None or now - seen.logged_at >= self.log_every_s:
                seen.logged_at = now
                alerts.append(SpoofAlert(node=node, new_packets=new, total=seen.total))
        for node in [n for n in self._seen if SPOOFED_PREFIX + n not in readings]:
            del self._seen[node]  # the worker is no longer known: bounded by the current workers
        return tuple(alerts)

    def recent(self, now: float) -> tuple[SpoofedWorker, ...]:
        """Workers whose spoofed count rose within `recent_s`, by name."""
        return tuple(
            SpoofedWorker(node=n, total=s.total, last_rise=s.rise, last_rise_at=s.rise_at)
            for n, s in sorted(self._seen.items())
            if s.rise_at is not None and now - s.rise_at <= self.recent_s
        )


def spoof_condition(workers: tuple[SpoofedWorker, ...], *, recent_s: float = RECENT_S) -> MemberCondition:
    """The member's `WorkerTrafficSpoofed` condition for its status document."""
    if not workers:
        return MemberCondition(type=CONDITION, status=False, reason="NoSpoofedTraffic")
    names = ", ".join(f"{w.node} ({w.total} packets)" for w in workers)
    return MemberCondition(
        type=CONDITION,
        status=True,
        reason="SpoofedTunnelTrafficDropped",
        message=f"tunnel traffic dropped as spoofed within the last {int(recent_s)} s from: {names}; the inner "
                "source is not a pod of that worker (a NAT chain on the worker masquerading steered packets? "
                "see docs/security.md)",
        subjects=tuple(w.node for w in workers),
    )
