"""`egressgw status [--kubeconfig F] [--context C] [-n NS] [-o table|wide|json|yaml] [-w]`: gateways, members
(health), EIPs -> primary/backups, policies.

Reads the API directly (one list of every kind), builds the Snapshot and resolves it, then renders what the status
writer would write (the same `status_planning` functions) - so it works without a running egressgw service and shows
the same truth. Exit code 0; 1 when the API server cannot be read.

- `-o wide` adds what the API knows beyond that: per member its kind, address and when it last renewed its member
  Lease; per gateway the tunnel type; per policy the state the status writer last *wrote* on the object (a
  difference from the computed state = the writer is behind or down) and the message; the status-writer Lease.
  What only the member itself knows (BGP/BFD sessions, reconcile passes, skips) is `egressgw gateway status` on it.
- `-n NS` keeps the policies of namespace NS (EgressClusterPolicies stay: they may select pods there).
- `--watch` keeps the cluster view current with watches (the same reflectors the services use, `ClusterSync`) and
  prints the status again whenever it changes (a member lease expiring counts), until Ctrl-C. json prints one
  document per line; yaml separates documents with `---`; tables start with a `# <time>` line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml

from appliance.core.intent import PolicyState
from appliance.core.maintenance import drained_by_annotation
from appliance.policy.resolution import resolve
from k8s_sync.cluster import ClusterSync
from k8s_sync.leases import LEADER_LEASE, MEMBER_PREFIX, STATE_SYNC_ANNOTATION, parse_time
from k8s_sync.oneshot import ClusterView, add_kube_arguments, api_from_args, read_cluster_for
from k8s_sync.resources import Role
from k8s_sync.status_planning import gateway_status, policy_status

JSON = dict[str, Any]

OUTPUTS = ("table", "wide", "json", "yaml")
#: store events within this window share one re-render (a burst of pod events prints once)
WATCH_DEBOUNCE_S = 0.2
#: document keys that change on every lease renewal: not a change worth printing again in --watch
VOLATILE_KEYS = frozenset({"leaseRenewTime", "renewTime"})


def configure(parser: argparse.ArgumentParser) -> None:
    add_kube_arguments(parser, outputs=OUTPUTS)
    parser.add_argument("-n", "--namespace", default=None,
                        help="only the policies of this namespace (and the cluster policies); default: all")
    parser.add_argument("-w", "--watch", action="store_true",
                        help="keep watching and print the status again on every change, until Ctrl-C")
    parser.set_defaults(func=run)


# ----- the document -----

def _lease_of(view: ClusterView, name: str) -> JSON:
    return next((o for o in view.store.raw_objects("Lease") if (o.get("metadata") or {}).get("name") == name), {})


def _written_state(raw: JSON | None) -> str:
    """The state the status writer recorded on the object (its True condition among Invalid, Pending, Ready)."""
    true = {c.get("type") for c in ((raw or {}).get("status") or {}).get("conditions") or ()
            if c.get("status") == "True"}
    return next((str(s) for s in (PolicyState.INVALID, PolicyState.PENDING, PolicyState.READY) if str(s) in true), "")


def status_document(view: ClusterView, *, namespace: str | None = None) -> JSON:
    """The JSON/YAML form: gateways, policies, cluster-internal CIDRs, problems and the status writer."""
    snap, intent = view.snapshot, view.intent
    kw: Any = {"generation": 0, "now": "", "previous": ()}
    gateways = []
    for gw in sorted(snap.gateways, key=lambda g: g.name):
        problems = [p for p in snap.problems if p.ref.kind == "EgressGateway" and p.ref.name == gw.name]
        inst = intent.instance(gw.name)
        st = gateway_status(inst, problems, snap, intent.outcomes, name=gw.name, **kw)
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        addresses = {m.name: str(m.address) for m in inst.members} if inst is not None else {}
        members = [{**m, "address": addresses.get(m["name"], ""),
                    "leaseRenewTime": (_lease_of(view, MEMBER_PREFIX + m["name"]).get("spec") or {})
                    .get("renewTime") or "",
                    "stateSync": ((_lease_of(view, MEMBER_PREFIX + m["name"]).get("metadata") or {})
                                  .get("annotations") or {}).get(STATE_SYNC_ANNOTATION, ""),
                    # the egressgw.io/drain annotation's reason (None: not in maintenance)
                    "maintenance": drained_by_annotation(snap, m["name"])} for m in st["members"]]
        gateways.append({"name": gw.name, "clusterDefault": gw.cluster_default, "ready": ready["status"] == "True",
                         "reason": ready["reason"], "message": ready["message"], "tunnel": str(gw.tunnel.type),
                         "members": members, "eips": st["eips"], "ipUsage": st["ipUsage"]})
    policies = []
    for outcome in intent.outcomes:
        ref = outcome.policy
        if namespace is not None and ref.namespace and ref.namespace != namespace:
            continue
        st = policy_status(outcome, [], intent, **kw)
        raw = view.store.get_raw(str(ref.kind), ref.namespace, ref.name)
        policies.append({
            "kind": str(ref.kind), "namespace": ref.namespace, "name": ref.name, "state": str(outcome.state),
            "reason": str(outcome.reason) if outcome.reason else "", "message": outcome.message,
            "gateway": outcome.gateway, "eip": st.get("eip") or {}, "primary": st.get("primary", ""),
            "useNodeIP": outcome.use_node_ip, "selectedIPs": outcome.selected_ips,
            "writtenState": _written_state(raw),
        })
    writer = _lease_of(view, LEADER_LEASE).get("spec") or {}
    return {
        "gateways": gateways,
        "policies": policies,
        "clusterCidrs": [str(n) for n in intent.cluster_cidrs],
        "problems": [{"object": str(p.ref), "field": p.field, "reason": str(p.reason), "message": p.message}
                     for p in snap.problems if namespace is None or p.ref.namespace in ("", namespace)],
        "statusWriter": {"holder": writer.get("holderIdentity") or "", "renewTime": writer.get("renewTime") or ""},
    }


def stable_part(doc: Any) -> Any:
    """`doc` without the fields that change on every lease renewal (what --watch compares)."""
    if isinstance(doc, dict):
        return {k: stable_part(v) for k, v in doc.items() if k not in VOLATILE_KEYS}
    if isinstance(doc, list):
        return [stable_part(v) for v in doc]
    return doc


# ----- rendering -----

def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def _usage(u: JSON, v: int) -> str:
    total = u.get(f"ipv{v}Total", 0)
    return f"{u.get(f'ipv{v}Free', 0)}/{total}" if total else "-"


def _ago(stamp: str, now: float, *, suffix: str = "") -> str:
    """`12s`, `3m4s`, `2h5m` (+ `suffix`) since an RFC 3339 time; `-` when there is none."""
    t = parse_time(stamp)
    if t is None:
        return "-"
    s = max(0, int(now - t))
    if s < 60:
        text = f"{s}s"
    elif s < 3600:
        text = f"{s // 60}m{s % 60}s"
    else:
        text = f"{s // 3600}h{s % 3600 // 60}m"
    return text + suffix


def gateway_lines(doc: JSON, *, wide: bool = False) -> list[str]:
    rows = []
    for g in doc["gateways"]:
        members = ", ".join(f"{m['name']}{_member_note(m)}" for m in g["members"]) or "-"
        row = [g["name"] + (" (default)" if g["clusterDefault"] else ""), "yes" if g["ready"] else "no",
               members, _usage(g["ipUsage"], 4), _usage(g["ipUsage"], 6)]
        if wide:
            row += [g.get("tunnel") or "-", g.get("message") or "-"]
        rows.append(row)
    headers = ["NAME", "READY", "MEMBERS", "IPV4 FREE", "IPV6 FREE"] + (["TUNNEL", "MESSAGE"] if wide else [])
    return ["GATEWAYS", *_table(headers, rows)]


def _member_note(m: JSON) -> str:
    """` (maintenance: REASON)` for a member drained by annotation, ` (down)` for another one not alive."""
    if m.get("maintenance") is not None:
        return f" (maintenance: {m['maintenance'] or '-'})"
    return "" if m["healthy"] else " (down)"


def member_lines(doc: JSON, *, now: float) -> list[str]:
    """Wide only: one row per member of each gateway."""
    rows = [[g["name"], m["name"], m["kind"], m.get("address") or "-",
             ("yes" if m["healthy"] else "no") + (" (maintenance)" if m.get("maintenance") is not None else ""),
             _ago(m.get("leaseRenewTime") or "", now, suffix=" ago"), ", ".join(m.get("eips") or ()) or "-"]
            for g in doc["gateways"] for m in g["members"]]
    return ["MEMBERS", *_table(["GATEWAY", "MEMBER", "KIND", "ADDRESS", "ALIVE", "LEASE RENEWED", "PRIMARY FOR"],
                               rows)]


def state_sync_lines(doc: JSON) -> list[str]:
    """One line per member that reports conntrack state sync (from its member Lease); nothing when none does."""
    lines = [f"{g['name']}/{m['name']}: {m['stateSync']}" for g in doc["gateways"] for m in g["members"]
             if m.get("stateSync")]
    return ["STATE SYNC", *lines] if lines else []


def eip_lines(doc: JSON) -> list[str]:
    rows = [[g["name"], e["ip"], e.get("primary") or "none alive", ", ".join(e.get("backups") or ()) or "-"]
            for g in doc["gateways"] for e in g["eips"]]
    return ["EIPS", *_table(["GATEWAY", "EIP", "PRIMARY", "BACKUPS"], rows)]


def policy_lines(doc: JSON, *, wide: bool = False) -> list[str]:
    rows = []
    for p in doc["policies"]:
        eips = "node IP" if p["useNodeIP"] else ", ".join(p["eip"].get(k, "") for k in ("ipv4", "ipv6")
                                                         if p["eip"].get(k)) or "-"
        state = p["state"] + (f" ({p['reason']})" if p["reason"] and p["state"] != str(PolicyState.READY) else "")
        row = [p["kind"], p["namespace"] or "-", p["name"], state, p["gateway"] or "-", eips,
               p["primary"] or "-", str(p["selectedIPs"])]
        if wide:
            row += [p.get("writtenState") or "-", p.get("message") or "-"]
        rows.append(row)
    headers = ["KIND", "NAMESPACE", "NAME", "STATE", "GATEWAY", "EIPS", "PRIMARY", "SELECTED"]
    return ["POLICIES", *_table(headers + (["WRITTEN", "MESSAGE"] if wide else []), rows)]


def problem_lines(doc: JSON) -> list[str]:
    if not doc["problems"]:
        return []
    return ["PROBLEMS", *(f"{p['object']}: {p['field']}: {p['reason']}: {p['message']}" for p in doc["problems"])]


def writer_lines(doc: JSON, *, now: float) -> list[str]:
    """Wide only: who writes status (the elected member) and when it last renewed that Lease."""
    w = doc.get("statusWriter") or {}
    if not w.get("holder"):
        return ["STATUS WRITER: none elected (status on the objects is not being updated)"]
    return [f"STATUS WRITER: {w['holder']} (lease renewed {_ago(w.get('renewTime') or '', now)} ago)"]


def render_table(doc: JSON, *, wide: bool = False, now: float | None = None) -> str:
    """The table (`-o table`) or, with `wide`, the same with more columns and the MEMBERS section (`-o wide`)."""
    t = time.time() if now is None else now
    sections = [gateway_lines(doc, wide=wide)]
    if wide:
        sections.append(member_lines(doc, now=t))
    sections += [state_sync_lines(doc), eip_lines(doc), policy_lines(doc, wide=wide), problem_lines(doc)]
    if wide:
        sections.append(writer_lines(doc, now=t))
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


def render(doc: JSON, output: str, *, now: float | None = None, stream: bool = False) -> str:
    """`doc` in the format of `-o OUTPUT`. `stream` (--watch): json on one line, yaml as a `---` document."""
    if output == "json":
        return json.dumps(doc, separators=(",", ":")) + "\n" if stream else json.dumps(doc, indent=2) + "\n"
    if output == "yaml":
        return ("---\n" if stream else "") + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    return render_table(doc, wide=output == "wide", now=now)


# ----- the command -----

def run(args: argparse.Namespace) -> int:
    if args.watch:
        return watch(args)
    view = read_cluster_for(args, "status")
    if view is None:
        return 1
    sys.stdout.write(render(status_document(view, namespace=args.namespace), args.output))
    return 0


def _header(now: float, stale_s: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    note = f" (a watch has been down for {stale_s:.0f}s: this view may be out of date)" if stale_s > 0 else ""
    return f"# {stamp}{note}\n"


def watch(args: argparse.Namespace, out: TextIO | None = None,
          stop: threading.Event | None = None, clock: Callable[[], float] = time.time) -> int:
    """`--watch`: print on every change of the status (or of the view's freshness) until Ctrl-C or `stop`."""
    stream = out or sys.stdout
    stop = stop or threading.Event()
    try:
        api = api_from_args(args)
    except Exception as e:
        print(f"egressgw status: cannot read the cluster: {e}", file=sys.stderr)
        return 1
    sync = ClusterSync(api, role=Role.READER, lease_namespace=args.lease_namespace)
    changed = threading.Event()
    sync.store.subscribe(lambda reason: changed.set())
    sync.start()
    last: Any = None
    try:
        while not stop.is_set():
            if not changed.wait(1.0) and last is not None and (sync.store.view_age() > 0) == last[1]:
                continue
            stop.wait(WATCH_DEBOUNCE_S)
            changed.clear()
            if not sync.store.synced():
                continue
            snap = sync.store.snapshot()
            view = ClusterView(store=sync.store, snapshot=snap,
                               intent=resolve(snap, previous=sync.store.written_intent()))
            doc = status_document(view, namespace=args.namespace)
            stale = sync.store.view_age()
            key = (stable_part(doc), stale > 0)
            if key == last:
                continue
            last = key
            now = clock()
            text = render(doc, args.output, now=now, stream=True)
            stream.write(text if args.output in ("json", "yaml") else _header(now, stale) + text)
            stream.flush()
    except KeyboardInterrupt:
        pass
    finally:
        sync.stop()
    return 0
