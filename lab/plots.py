"""Pictures of the lab's measurements, as small SVG files: a probe timeline per fault, latency distributions.

- `plot_timeline(Timeline, path)`: the probes of one window over time (answered runs green, lost runs red, drawn as
  spans, not one mark per probe, so a minute of 10 ms probes stays a few kB) and the window's events on lanes above
  them (the fault, the router's route changes, BGP/BFD events, the drain's phases), each with a dashed line down
  through the probes. Every event is one SVG element with the id `event-<n>` (its label `event-<n>-label`).
- `plot_distributions({name: samples}, path, title=, unit=)`: one empirical CDF per series, p50/p99 in the legend.

Times in a `Timeline` are seconds from the start of the window. The builders (`timeline_from_probe`,
`route_timeline_events`, `log_timeline_events`, `system_timeline`) turn what the lab already records into one: the raw
probe run (`lab.bench.probes.RawRun`), the router's route monitor (`lab.bench.harness.RouteEvent`) and the services'
key=value logs. matplotlib (Agg backend) is imported only when a plot is drawn; text stays text in the SVG (no embedded
fonts) and the output is deterministic (no date, fixed hash salt).
"""

from __future__ import annotations

import datetime
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lab.system import System


class ProbeStream(Protocol):
    @property
    def sent(self) -> Mapping[int, float]: ...  # seq -> send time (wall clock)

    @property
    def answers(self) -> Mapping[int, object]: ...  # seq -> answer


class ProbeRun(Protocol):
    """What a timeline needs of a probe run (`lab.bench.probes.RawRun`; not imported: lab.bench draws with us)."""

    @property
    def interval(self) -> float: ...

    @property
    def udp(self) -> ProbeStream: ...


class RouteChange(Protocol):
    """A change of the router's route for an EIP (`lab.bench.harness.RouteEvent`)."""

    @property
    def at(self) -> float: ...

    @property
    def deleted(self) -> bool: ...

    @property
    def via(self) -> str: ...


KINDS = ("fault", "route", "bgp", "bfd", "drain", "other")
_KIND_COLOURS = {"fault": "#d62728", "route": "#1f77b4", "bgp": "#9467bd", "bfd": "#ff7f0e", "drain": "#2ca02c",
                 "other": "#7f7f7f"}
_ANSWERED, _LOST = "#4daf4a", "#e41a1c"


@dataclass(frozen=True)
class TimelineEvent:
    t_s: float  # seconds from the start of the window
    label: str
    kind: str  # one of KINDS


@dataclass(frozen=True)
class Timeline:
    title: str
    interval_s: float
    #: send time of every probe in the window (seconds from its start), in sending order
    sent_at: tuple[float, ...]
    #: whether each probe was answered (same length as `sent_at`)
    answered: tuple[bool, ...]
    events: tuple[TimelineEvent, ...]

    def __post_init__(self) -> None:
        if len(self.sent_at) != len(self.answered):
            raise ValueError(f"timeline {self.title!r}: sent_at and answered differ in length "
                             f"({len(self.sent_at)} != {len(self.answered)})")
        for e in self.events:
            if e.kind not in KINDS:
                raise ValueError(f"timeline {self.title!r}: event kind {e.kind!r} is not one of {', '.join(KINDS)}")

    @property
    def lost(self) -> int:
        return sum(1 for a in self.answered if not a)


def runs(sent_at: Sequence[float], answered: Sequence[bool], interval_s: float) -> list[tuple[bool, float, float]]:
    """Consecutive probes with the same fate as (answered, start, width) spans; a span ends one interval after its
    last probe (pure)."""
    out: list[tuple[bool, float, float]] = []
    for t, ok in zip(sent_at, answered, strict=True):
        if out and out[-1][0] == ok:
            fate, start, _ = out[-1]
            out[-1] = (fate, start, t + interval_s - start)
        else:
            out.append((ok, t, interval_s))
    return out


# ----- builders from what the lab records -----

def timeline_from_probe(raw: ProbeRun, t0: float, t1: float, *, title: str,
                        events: Iterable[TimelineEvent] = ()) -> Timeline:
    """The UDP probes of `raw` sent in [t0, t1) (wall clock) and `events` (already relative to t0)."""
    sent = sorted((t, seq) for seq, t in raw.udp.sent.items() if t0 <= t < t1)
    return Timeline(title=title, interval_s=raw.interval, sent_at=tuple(t - t0 for t, _ in sent),
                    answered=tuple(seq in raw.udp.answers for _, seq in sent),
                    events=tuple(sorted(events, key=lambda e: e.t_s)))


def route_timeline_events(events: Iterable[RouteChange], t0: float, t1: float, *,
                          names: Mapping[str, str] | None = None) -> list[TimelineEvent]:
    """The router's kernel route changes in [t0, t1) as timeline events; `names` maps next hops to member names."""
    names = names or {}
    out = []
    for e in events:
        if t0 <= e.at < t1:
            via = names.get(e.via, e.via)
            label = "route deleted" if e.deleted else f"route via {via}"
            out.append(TimelineEvent(t_s=e.at - t0, label=label, kind="route"))
    return out


#: service log events worth a mark on a timeline -> kind
LOG_EVENT_KINDS: dict[str, str] = {
    "bgp.peer_changed": "bgp", "eip.announced": "bgp", "eip.withdrawn": "bgp", "eip.repreferred": "bgp",
    "bgp.exabgp_exited": "bgp", "bgp.exabgp_started": "bgp",
    "bfd.session_changed": "bfd", "bfd.sidecar_stopped": "bfd", "bfd.sidecar_killed": "bfd",
    "bfd.sidecar_adopted": "bfd", "bfd.sidecar_detached": "bfd", "eip.released": "bgp", "kernel.removed": "drain",
    "drain.started": "drain", "drain.withdrawn": "drain", "drain.done": "drain", "drain.closing_sessions": "drain",
    "gateway.started": "other", "gateway.stopped": "other", "gateway.restart_stop": "other",
    "member.health": "other",
}
_LOG_DETAIL = ("state", "status", "eip", "peer", "reason", "mode")


def parse_log_line(line: str) -> tuple[float, str, dict[str, str]] | None:
    """`ts=... level=... event=... k=v` (the services' key=value format) -> (time, event, fields); None otherwise."""
    if not line.startswith("ts="):
        return None
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    fields = dict(w.split("=", 1) for w in words if "=" in w)
    try:
        at = datetime.datetime.fromisoformat(fields["ts"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None
    return at, fields.get("event", ""), fields


def log_timeline_events(lines: Iterable[str], t0: float, t1: float, *, who: str = "") -> list[TimelineEvent]:
    """The events of `LOG_EVENT_KINDS` logged in [t0, t1), labelled with their main fields and `who` logged them."""
    out = []
    for line in lines:
        parsed = parse_log_line(line)
        if parsed is None:
            continue
        at, event, fields = parsed
        kind = LOG_EVENT_KINDS.get(event)
        if kind is None or not t0 <= at < t1:
            continue
        detail = " ".join(fields[k] for k in _LOG_DETAIL if fields.get(k))
        label = " ".join(p for p in (who + ":" if who else "", event, detail) if p)
        out.append(TimelineEvent(t_s=at - t0, label=label[:60], kind=kind))
    return out


def read_log_events(path: Path, t0: float, t1: float, *, who: str = "") -> list[TimelineEvent]:
    """`log_timeline_events` of a log file (none when it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return log_timeline_events(text.splitlines(), t0, t1, who=who)


def system_timeline(system: System, raw: ProbeRun, t0: float, t1: float, *, title: str,
                    marks: Iterable[tuple[float, str, str]] = (), route_events: Iterable[RouteChange] = ()) -> Timeline:
    """A window [t0, t1) of a lab run: the probes, `marks` ((wall-clock time, label, kind): the fault, the restore),
    the router's route changes (next hops named by member) and every gateway member's logged events."""
    names = {str(ifc.ip): gw for gw in system.gateways for _, ifc in system.nodes[gw].addresses}
    events = [TimelineEvent(t_s=at - t0, label=label, kind=kind) for at, label, kind in marks if t0 <= at < t1]
    events += route_timeline_events(route_events, t0, t1, names=names)
    for gw in system.gateways:
        events += read_log_events(system.lab.state_dir / "logs" / f"{gw}.egressgw-gateway.log", t0, t1, who=gw)
    return timeline_from_probe(raw, t0, t1, title=title, events=events)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "event"


def write_event_plots(system: System, raw: ProbeRun, windows: Sequence[tuple[str, float, float]], directory: Path,
                      *, route_events: Sequence[RouteChange] = (), before_s: float = 0.2,
                      marks: Sequence[tuple[float, str, str]] = ()) -> list[Path]:
    """One timeline SVG per (label, start, end) window (drawn from `before_s` before its start, the start marked as
    the fault) into `directory` as `<n>-<label>.svg`; returns the files."""
    out = []
    for n, (label, start, end) in enumerate(windows, 1):
        t0 = start - before_s
        tl = system_timeline(system, raw, t0, end, title=label, marks=[(start, label, "fault"), *marks],
                             route_events=route_events)
        out.append(plot_timeline(tl, directory / f"{n:02d}-{slug(label)}.svg"))
    return out


# ----- drawing -----

def _pyplot() -> Any:
    import matplotlib  # lazy import: matplotlib is heavy and only needed when a plot is drawn

    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "egressgw", "font.size": 8})
    import matplotlib.pyplot as plt  # lazy import: matplotlib (after the backend is chosen)

    return plt


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format="svg", metadata={"Date": None}, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


#: events listed beside the plot at most (the rest are counted); a timeline is meant to be read, not searched
MAX_LISTED = 40


def plot_timeline(tl: Timeline, path: Path) -> Path:
    """Draw `tl` into the SVG file `path` (directories created); returns `path`. Each event is a numbered mark on
    its kind's lane with a dashed line down through the probes; the numbers are explained in a list on the right."""
    plt = _pyplot()
    lanes = [k for k in KINDS if any(e.kind == k for e in tl.events)]
    listed = tl.events[:MAX_LISTED]
    height = max(1.6 + 0.45 * max(1, len(lanes)), 0.9 + 0.13 * (len(listed) + 1))
    fig, ax = plt.subplots(figsize=(11, height))
    fig.subplots_adjust(left=0.07, right=0.6 if tl.events else 0.97)
    spans = runs(tl.sent_at, tl.answered, tl.interval_s)
    ok = [(s, w) for fate, s, w in spans if fate]
    bad = [(s, max(w, tl.interval_s)) for fate, s, w in spans if not fate]
    if ok:
        ax.broken_barh(ok, (-0.35, 0.7), facecolors=_ANSWERED)
    if bad:
        ax.broken_barh(bad, (-0.35, 0.7), facecolors=_LOST)
    y_of = {k: i + 1 for i, k in enumerate(lanes)}
    end = max([*tl.sent_at, *(e.t_s for e in tl.events), 0.0]) + tl.interval_s
    for i, e in enumerate(tl.events):
        y = y_of[e.kind]
        colour = _KIND_COLOURS[e.kind]
        line = ax.vlines(e.t_s, -0.45, y, colors=colour, linestyles="dashed", linewidth=0.6)
        line.set_gid(f"event-{i}")
        ax.plot([e.t_s], [y], marker="o", markersize=3, color=colour)
        ax.text(e.t_s, y + 0.1 + 0.25 * (i % 2), str(i + 1), fontsize=6, color=colour, ha="center", va="bottom")
    step = 0.9 / max(len(listed) + 1, 8)
    for i, e in enumerate(listed):
        text = fig.text(0.62, 0.95 - (i + 1) * step, f"{i + 1:>2}  +{e.t_s:6.3f} s  {e.label}", fontsize=6.5,
                        color=_KIND_COLOURS[e.kind], family="monospace", va="top")
        text.set_gid(f"event-{i}-label")
    if len(tl.events) > len(listed):
        fig.text(0.62, 0.02, f"... {len(tl.events) - len(listed)} more events", fontsize=6.5, family="monospace")
    ax.set_yticks([0, *y_of.values()], ["probes", *lanes])
    ax.set_ylim(-0.6, len(lanes) + 0.9)
    ax.set_xlim(0, end)
    ax.set_xlabel("seconds (green: answered, red: lost)")
    lost = tl.lost
    longest = max((w for fate, _, w in spans if not fate), default=0.0)
    summary = (f"{len(tl.sent_at)} probes every {tl.interval_s * 1000:.0f} ms, {lost} lost"
               + (f", longest outage {longest * 1000:.0f} ms" if lost else ""))
    ax.set_title(f"{tl.title}\n{summary}", fontsize=9, loc="left")
    ax.grid(axis="x", linewidth=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, plt, path)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    idx = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[idx]


def plot_distributions(samples: Mapping[str, Sequence[float]], path: Path, *, title: str, unit: str) -> Path:
    """One empirical CDF per series of `samples` into the SVG file `path`; empty series are left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    drawn = 0
    for i, (name, values) in enumerate(samples.items()):
        vals = sorted(float(v) for v in values)
        if not vals:
            continue
        ys = [(k + 1) / len(vals) for k in range(len(vals))]
        label = f"{name} (n={len(vals)}, p50 {_quantile(vals, 0.5):.0f}, p99 {_quantile(vals, 0.99):.0f} {unit})"
        (line,) = ax.step(vals, ys, where="post", label=label, linewidth=1.2)
        line.set_gid(f"series-{i}")
        drawn += 1
    ax.set_xlabel(unit)
    ax.set_ylabel("fraction of samples <= x")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(linewidth=0.3)
    if drawn:
        ax.legend(loc="lower right", fontsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, plt, path)
