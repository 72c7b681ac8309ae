"""The gateway member's status document (`<state_dir>/status.json`): health and checks, announcements desired vs
acknowledged, peers, BFD, reconcile and drain progress, the planners' skips. A pure function of a `MemberView`;
rendering for humans is `appliance.gateway.member_state.render_status`."""

from __future__ import annotations

from typing import Any

from appliance.gateway.view import MemberView, StateSyncView
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


def state_sync_entry(s: StateSyncView) -> dict[str, Any]:
    """The state-sync part of the status document: readiness, the last resync, one entry per peer."""
    return {
        "ready": s.ready,
        "peers_up": s.peers_up,
        "last_resync_s": None if s.last_resync_s is None else round(s.last_resync_s, 3),
        "peers": [
            {"peer": p.peer, "address": p.address, "port": p.port, "running": p.running, "up": p.up,
             "resync": p.resync, "sent": p.sent, "received": p.received, "lost": p.lost, "problem": p.problem}
            for p in s.peers
        ],
        "skipped": [{"peer": peer, "reason": reason} for peer, reason in s.skipped],
    }


def state_sync_line(doc: dict[str, Any] | None) -> str:
    """One line of state sync for humans: `3/3 peers up (gw2 up, ...), last resync 0.41s` or `off`."""
    if not doc:
        return "off"
    peers = doc.get("peers") or []
    if not peers:
        return "on, no peers" + ("" if doc.get("ready", True) else " (waiting for the first resync)")
    each = ", ".join(f"{p['peer']} {'up' if p.get('up') else 'DOWN'}" for p in peers)
    line = f"{doc.get('peers_up', 0)}/{len(peers)} peers up ({each})"
    if doc.get("last_resync_s") is not None:
        line += f", last resync {doc['last_resync_s']}s"
    if not doc.get("ready", True):
        line += ", waiting for the first resync (not announcing yet)"
    return line


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
    doc["state_sync"] = state_sync_entry(view.state_sync) if view.state_sync is not None else None
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
