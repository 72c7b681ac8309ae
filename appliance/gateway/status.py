"""The gateway member's status document (`<state_dir>/status.json`): health and checks, announcements desired vs
acknowledged, peers, BFD, reconcile and drain progress. Rendering for humans is `appliance.gateway.member_state`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from bgp.announcing import Announcement

if TYPE_CHECKING:
    from appliance.gateway.service import GatewayService


def render_announcement(a: Announcement) -> str:
    parts = [str(a.prefix)]
    if a.med is not None:
        parts.append(f"med={a.med}")
    if a.as_path_prepends:
        parts.append(f"prepends={a.as_path_prepends}")
    return " ".join(parts)


def status_document(svc: GatewayService) -> dict[str, Any]:
    """The member's state for `<state_dir>/status.json` (what `egressgw gateway status` prints)."""
    now = svc.deps.clock()
    sp = svc.deps.speaker
    acked = sorted(render_announcement(a) for a in sp.acknowledged()) if sp is not None else []
    peers = sp.peer_states() if sp is not None else {}
    bfd = svc.bfd_states() or {}
    r = svc.reconciler.last_report
    with svc.lock:
        h = svc.health
        doc: dict[str, Any] = {
            "node": svc.cfg.node_name,
            "pid": os.getpid(),
            "phase": svc.phase,
            "health": {
                "status": h.status,
                "reason": h.reason,
                "failing": [str(c) for c in h.failing],
                "checks": {str(k): v for k, v in sorted(svc.last_checks.items())},
                "hold_down_remaining_s": round(max(0.0, h.hold_until - now), 1) if h.in_hold_down(now) else 0,
                "transitions": h.transitions,
            },
            "announcements": {
                "mode": svc.mode,
                "desired": sorted(render_announcement(a) for a in svc.desired),
                "acknowledged": acked,
            },
            "eips_in_place": sorted(str(e) for e in svc.eips_in_place),
            "peers": peers,
            "bfd": bfd,
            "drain": dict(svc.drain_state),
        }
    if r is not None:
        doc["reconcile"] = {
            "result": "ok" if r.outcome.ok else "failed",
            "duration_ms": round(r.duration_s * 1000, 1),
            "passes": svc.reconciler.passes,
            "failed_passes": svc.reconciler.failed_passes,
            "failures": list(r.outcome.failures[:5]),
        }
    return doc
