"""The gateway member's status document (`<state_dir>/status.json`): health and checks, announcements desired vs
acknowledged, peers, BFD, reconcile and drain progress, the planners' skips. A pure function of a `MemberView`;
rendering for humans is `appliance.gateway.member_state.render_status`."""

from __future__ import annotations

from typing import Any

from appliance.gateway.view import MemberView
from appliance.runtime.skips import SkipNote
from bgp.announcing import Announcement


def render_announcement(a: Announcement) -> str:
    parts = [str(a.prefix)]
    if a.med is not None:
        parts.append(f"med={a.med}")
    if a.as_path_prepends:
        parts.append(f"prepends={a.as_path_prepends}")
    return " ".join(parts)


def skip_entry(s: SkipNote) -> dict[str, str]:
    """One skip in the status document (the same fields `plan.skipped` logs)."""
    return s.fields()


def status_document(view: MemberView) -> dict[str, Any]:
    """The member's state for `<state_dir>/status.json` (what `egressgw gateway status` prints)."""
    h, now = view.health, view.taken_at
    doc: dict[str, Any] = {
        "node": view.node,
        "pid": view.pid,
        "phase": view.phase,
        "health": {
            "status": h.status,
            "reason": h.reason,
            "failing": [str(c) for c in h.failing],
            "checks": {str(k): v for k, v in view.checks},
            "hold_down_remaining_s": round(max(0.0, h.hold_until - now), 1) if h.in_hold_down(now) else 0,
            "transitions": h.transitions,
        },
        "announcements": {
            "mode": view.mode,
            "desired": sorted(render_announcement(a) for a in view.desired),
            "acknowledged": sorted(render_announcement(a) for a in view.acknowledged),
        },
        "eips_in_place": sorted(str(e) for e in view.eips_in_place),
        "peers": dict(view.peers),
        "bfd": dict(view.bfd),
        "drain": {},
        "skipped": [skip_entry(s) for s in sorted(view.skipped)],
        "conditions": [
            {"type": c.type, "status": "True" if c.status else "False", "reason": c.reason, "message": c.message,
             "subjects": list(c.subjects)}
            for c in view.conditions
        ],
    }
    if view.drain is not None:
        drain: dict[str, Any] = {"state": view.drain.state, "reason": view.drain.reason}
        if view.drain.acknowledged is not None:
            drain["acknowledged"] = view.drain.acknowledged
        doc["drain"] = drain
    r = view.reconcile
    if r is not None:
        doc["reconcile"] = {
            "result": "ok" if r.ok else "failed",
            "duration_ms": round(r.duration_s * 1000, 1),
            "passes": r.passes,
            "failed_passes": r.failed_passes,
            "failures": list(r.failures[:5]),
        }
    return doc
