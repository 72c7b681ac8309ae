"""lab.plots: the SVG files are produced, parse as XML, and carry one element per event / per series."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.bench.harness import RouteEvent
from lab.bench.probes import RawRun, Stream
from lab.plots import (
    Timeline,
    TimelineEvent,
    log_timeline_events,
    plot_distributions,
    plot_timeline,
    route_timeline_events,
    runs,
    timeline_from_probe,
)

SVG = "{http://www.w3.org/2000/svg}"


def ids(path: Path) -> list[str]:
    root = ET.parse(path).getroot()  # raises on invalid XML
    assert root.tag == f"{SVG}svg"
    return [el.get("id", "") for el in root.iter()]


def test_runs_group_probes_by_fate() -> None:
    assert runs([0.0, 0.01, 0.02, 0.03], [True, False, False, True], 0.01) == [
        (True, 0.0, 0.01), (False, 0.01, pytest.approx(0.02)), (True, 0.03, 0.01)]


def test_timeline_svg_has_one_element_per_event(tmp_path: Path) -> None:
    sent = tuple(i * 0.01 for i in range(500))
    answered = tuple(not 200 <= i < 230 for i in range(500))
    events = (TimelineEvent(1.99, "uplink of gw1 cut", "fault"), TimelineEvent(2.15, "route via gw2", "route"),
              TimelineEvent(2.1, "gw1: bfd.session_changed state=Down", "bfd"),
              TimelineEvent(3.0, "drain.started", "drain"))
    path = plot_timeline(Timeline(title="uplink cut", interval_s=0.01, sent_at=sent, answered=answered,
                                  events=events), tmp_path / "sub" / "t.svg")
    assert path.stat().st_size > 1000
    found = ids(path)
    assert sorted(i for i in found if re.fullmatch(r"event-\d+", i)) == ["event-0", "event-1", "event-2", "event-3"]
    text = path.read_text()
    assert "30 lost" in text and "uplink of gw1 cut" in text  # text stays text (svg.fonttype none)
    assert "<image" not in text and path.stat().st_size < 150_000


def test_timeline_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        Timeline(title="x", interval_s=0.01, sent_at=(0.0,), answered=(), events=())
    with pytest.raises(ValueError, match="kind 'nope'"):
        Timeline(title="x", interval_s=0.01, sent_at=(), answered=(), events=(TimelineEvent(0, "a", "nope"),))


def test_distributions_svg_has_one_line_per_series(tmp_path: Path) -> None:
    path = plot_distributions({"pod IP -> EIP": [float(v) for v in range(100, 200)], "policy": [120.0, 130.0],
                               "empty": []}, tmp_path / "d.svg", title="convergence", unit="ms")
    found = ids(path)
    assert {"series-0", "series-1"} <= set(found) and "series-2" not in found
    assert "p99" in path.read_text()


def test_builders_from_probe_route_monitor_and_logs() -> None:
    raw = RawRun(server="s", interval=0.01,
                 udp=Stream(sent={0: 100.0, 1: 100.01, 2: 100.02, 3: 105.0}, answers={0: (100.001, "e"), 2: (1, "e")}),
                 tcp=Stream(sent={}, answers={}))
    tl = timeline_from_probe(raw, 100.0, 101.0, title="w", events=[TimelineEvent(0.5, "x", "other")])
    assert tl.sent_at == pytest.approx((0.0, 0.01, 0.02)) and tl.answered == (True, False, True) and tl.lost == 1
    routes = route_timeline_events([RouteEvent(at=100.2, deleted=True, via=""),
                                    RouteEvent(at=100.3, deleted=False, via="10.0.0.2"),
                                    RouteEvent(at=200.0, deleted=False, via="10.0.0.2")], 100.0, 101.0,
                                   names={"10.0.0.2": "gw2"})
    assert [(round(e.t_s, 3), e.label, e.kind) for e in routes] == [(0.2, "route deleted", "route"),
                                                                    (0.3, "route via gw2", "route")]
    lines = ['ts=1970-01-01T00:01:40.500Z level=info logger=egressgw.gateway event=bgp.peer_changed '
             'peer=198.51.100.1 state=down reason="hold timer expired"',
             'ts=1970-01-01T00:01:40.600Z level=info logger=egressgw.gateway event=reconcile.pass ok=true',
             'ts=1970-01-01T00:03:00.000Z level=info logger=egressgw.gateway event=drain.started',
             'not a log line']
    got = log_timeline_events(lines, 100.0, 101.0, who="gw1")
    assert [(round(e.t_s, 3), e.kind) for e in got] == [(0.5, "bgp")]
    assert got[0].label == "gw1: bgp.peer_changed down 198.51.100.1 hold timer expired"
