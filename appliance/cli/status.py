"""`egressgw status [--kubeconfig F] [-o table|json]`: gateways, members (health), EIPs -> primary/backups, policies.

Reads the API directly (one list of every kind, no watch), builds the Snapshot and resolves it, then renders what the
status writer would write (the same `status_planning` functions) - so it works without a running egressgw service
and shows the same truth. Exit code 0; 1 when the API server cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from appliance.core.intent import PolicyState
from k8s_sync.oneshot import ClusterView, add_kube_arguments, read_cluster_for
from k8s_sync.status_planning import gateway_status, policy_status

JSON = dict[str, Any]


def configure(parser: argparse.ArgumentParser) -> None:
    add_kube_arguments(parser)
    parser.set_defaults(func=run)


def status_document(view: ClusterView) -> JSON:
    """The JSON form: gateways, policies, cluster-internal CIDRs and problems."""
    snap, intent = view.snapshot, view.intent
    kw: Any = {"generation": 0, "now": "", "previous": ()}
    gateways = []
    for gw in sorted(snap.gateways, key=lambda g: g.name):
        problems = [p for p in snap.problems if p.ref.kind == "EgressGateway" and p.ref.name == gw.name]
        st = gateway_status(intent.instance(gw.name), problems, snap, intent.outcomes, name=gw.name, **kw)
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        gateways.append({"name": gw.name, "clusterDefault": gw.cluster_default, "ready": ready["status"] == "True",
                         "reason": ready["reason"], "members": st["members"], "eips": st["eips"],
                         "ipUsage": st["ipUsage"]})
    policies = []
    for outcome in intent.outcomes:
        ref = outcome.policy
        st = policy_status(outcome, [], intent, **kw)
        policies.append({
            "kind": str(ref.kind), "namespace": ref.namespace, "name": ref.name, "state": str(outcome.state),
            "reason": str(outcome.reason) if outcome.reason else "", "message": outcome.message,
            "gateway": outcome.gateway, "eip": st.get("eip") or {}, "primary": st.get("primary", ""),
            "useNodeIP": outcome.use_node_ip, "selectedIPs": outcome.selected_ips,
        })
    return {
        "gateways": gateways,
        "policies": policies,
        "clusterCidrs": [str(n) for n in intent.cluster_cidrs],
        "problems": [{"object": str(p.ref), "field": p.field, "reason": str(p.reason), "message": p.message}
                     for p in snap.problems],
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def _usage(u: JSON, v: int) -> str:
    total = u.get(f"ipv{v}Total", 0)
    return f"{u.get(f'ipv{v}Free', 0)}/{total}" if total else "-"


def render_table(doc: JSON) -> str:
    lines = ["GATEWAYS"]
    rows = []
    for g in doc["gateways"]:
        members = ", ".join(f"{m['name']}{'' if m['healthy'] else ' (down)'}" for m in g["members"]) or "-"
        rows.append([g["name"] + (" (default)" if g["clusterDefault"] else ""), "yes" if g["ready"] else "no",
                     members, _usage(g["ipUsage"], 4), _usage(g["ipUsage"], 6)])
    lines += _table(["NAME", "READY", "MEMBERS", "IPV4 FREE", "IPV6 FREE"], rows)
    lines += ["", "EIPS"]
    rows = [[g["name"], e["ip"], e.get("primary") or "none alive", ", ".join(e.get("backups") or ()) or "-"]
            for g in doc["gateways"] for e in g["eips"]]
    lines += _table(["GATEWAY", "EIP", "PRIMARY", "BACKUPS"], rows)
    lines += ["", "POLICIES"]
    rows = []
    for p in doc["policies"]:
        eips = "node IP" if p["useNodeIP"] else ", ".join(p["eip"].get(k, "") for k in ("ipv4", "ipv6")
                                                         if p["eip"].get(k)) or "-"
        state = p["state"] + (f" ({p['reason']})" if p["reason"] and p["state"] != str(PolicyState.READY) else "")
        rows.append([p["kind"], p["namespace"] or "-", p["name"], state, p["gateway"] or "-", eips,
                     p["primary"] or "-", str(p["selectedIPs"])])
    lines += _table(["KIND", "NAMESPACE", "NAME", "STATE", "GATEWAY", "EIPS", "PRIMARY", "SELECTED"], rows)
    if doc["problems"]:
        lines += ["", "PROBLEMS"]
        lines += [f"{p['object']}: {p['field']}: {p['reason']}: {p['message']}" for p in doc["problems"]]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    view = read_cluster_for(args, "status")
    if view is None:
        return 1
    doc = status_document(view)
    sys.stdout.write(json.dumps(doc, indent=2) + "\n" if args.output == "json" else render_table(doc))
    return 0
