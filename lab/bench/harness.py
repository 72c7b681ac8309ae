"""Lab plumbing shared by the failover and convergence benchmarks: bring the system to a steady state, watch the
router's kernel route for an EIP, wait for the members' status documents.

Why a route *monitor* rather than polling `ip route get`: one `ip -ts monitor route` process in the router's
namespace timestamps every kernel route change as it happens (BIRD's kernel protocol and FRR's zebra both install the
best path there), so the router's convergence time is exact to the microsecond and costs no CPU between changes;
polling through `ip netns exec` every 5 ms would cost a process start per sample on a 2-core machine that also runs
the lab.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.core.waiting import wait_until
from lab.scenarios import demo_pods, policy_manifest, scenario_gateway
from lab.system import System


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteEvent:
    at: float  # wall clock (seconds)
    deleted: bool
    via: str  # next-hop address ("" for a deletion without one)


def parse_route_line(line: str, eip: str) -> RouteEvent | None:
    """One line of `ip -ts monitor route` -> an event for `eip`'s host route (None for other routes)."""
    if not line.startswith("[") or "]" not in line:
        return None
    stamp, _, rest = line[1:].partition("]")
    words = rest.split()
    deleted = bool(words) and words[0] == "Deleted"
    if deleted:
        words = words[1:]
    if not words or words[0] not in (eip, f"{eip}/32", f"{eip}/128"):
        return None
    via = words[words.index("via") + 1] if "via" in words[:-1] else ""
    try:
        at = datetime.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
    return RouteEvent(at=at, deleted=deleted, via=via)


class RouteMonitor:
    """`ip -ts monitor route` in the router namespace; records the changes of one EIP's route."""

    def __init__(self, system: System, eip: str | None = None) -> None:
        self.system, self.eip = system, eip or system.scenario.default_eip_v4
        self.events: list[RouteEvent] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> RouteMonitor:
        version = "-6" if ":" in self.eip else "-4"
        self._proc = self.system.lab.popen(router_of(self.system), ["ip", version, "-ts", "monitor", "route"],
                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.05)
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            ev = parse_route_line(line.strip(), self.eip)
            if ev is not None:
                with self._lock:
                    self.events.append(ev)

    def since(self, t: float) -> list[RouteEvent]:
        with self._lock:
            return [e for e in self.events if e.at >= t]

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=2)
            if self._proc.poll() is None:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(2)


def router_of(system: System) -> str:
    return next(n for n, v in system.nodes.items() if v.role == "router")


def member_status(system: System, gw: str) -> dict[str, Any]:
    path = system.lab.node_dir(gw) / "egressgw" / "status.json"
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def member_ranked(system: System, gw: str) -> bool:
    """The member runs, its BFD sessions (if any) are up, it is past its hold-down and ExaBGP acknowledged everything
    it wants announced."""
    doc = member_status(system, gw)
    pid, updated = doc.get("pid"), doc.get("updated_at")
    if not isinstance(pid, int) or not Path(f"/proc/{pid}").exists():
        return False  # a status file left behind by a killed member
    if not isinstance(updated, int | float) or time.time() - updated > 2.0:
        return False
    bfd = doc.get("bfd") or {}
    if any(state != "Up" for state in bfd.values()):
        return False  # a hard failure right now would wait for the BGP hold time
    if any(state != "up" for state in (doc.get("peers") or {}).values()):
        return False
    ann = doc.get("announcements") or {}
    desired = ann.get("desired") or []
    return (doc.get("phase") == "running" and ann.get("mode") == "ranked" and bool(desired)
            and sorted(desired) == sorted(ann.get("acknowledged") or []))


def router_paths(system: System, eip: str | None = None) -> set[str]:
    """The gateway members the router holds a BGP path from for `eip` (default: the scenario's default IPv4 EIP; best
    and backups), from BIRD or FRR."""
    eip = eip or system.scenario.default_eip_v4
    router = router_of(system)
    if system.router_kind == "bird":
        argv = system.lab.expand(router, "birdc -s {nodedir}/bird.ctl show route for " + eip + " all").split()
    else:
        family = "ipv6" if ":" in eip else "ipv4"
        argv = ["vtysh", "-N", system.lab.netns(router), "-c", f"show bgp {family} unicast {eip}"]
    res = system.lab.exec(router, argv, check=False, timeout=10)
    return paths_in(str(res.stdout), {gw: system.gateway_address(gw) for gw in system.gateways})


def paths_in(text: str, members: dict[str, str]) -> set[str]:
    """Members whose uplink address appears as a next hop / neighbour in a router's route output (pure)."""
    words = set(text.replace(",", " ").replace("(", " ").replace(")", " ").split())
    return {gw for gw, addr in members.items() if addr in words}


def wait_steady(system: System, *, timeout: float = 90.0) -> None:
    """Every gateway member announces with its ranked preference, its BGP and BFD sessions are up, and the router
    holds a path from every member (member status alone is not enough: ExaBGP acknowledges an announcement it
    queued while the router still refuses the new session, e.g. BIRD's `error wait time` after a killed peer)."""
    wait_until(lambda: all(member_ranked(system, g) for g in system.gateways), timeout=timeout, interval=0.2,
               what="every gateway member announcing with its ranked preference")
    wait_until(lambda: router_paths(system) == set(system.gateways), timeout=timeout, interval=0.2,
               what="the router holding a path from every member")
    time.sleep(0.5)  # the last UPDATE reaching the router's kernel table


def next_hop_member(system: System, via: str) -> str:
    for gw in system.gateways:
        if any(str(ifc.ip) == via for _, ifc in system.nodes[gw].addresses):
            return gw
    return ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """The pod the benchmarks probe from, selected by a policy toward the default gateway's default EIP."""

    lab_pod: str
    eip: str


def set_up_workload(system: System, *, failback_hold_s: float | None = None, timeout: float = 120.0) -> Workload:
    """The demo's objects: an EgressGateway, the shop/web-egress policy, the four lab pods as Pod objects."""
    system.ensure_namespace("shop")
    system.ensure_namespace("blog")
    system.apply([scenario_gateway(system.scenario, failback_hold_s=failback_hold_s),
                  policy_manifest("shop", "web-egress", match_labels={"app": "web"})])
    pods = demo_pods(system)
    for p in pods:
        system.create_pod(p.namespace, p.name, p.lab_pod, dict(p.labels))
    first = next(p for p in pods if p.selected)
    eip = system.scenario.default_eip_v4
    wait_until(lambda: system.seen_source(first.lab_pod, timeout=1.0) == eip, timeout=timeout,
               what="the EIP at the external server", interval=0.2)
    return Workload(lab_pod=first.lab_pod, eip=eip)


def timed(fn: Callable[[], object]) -> float:
    """Run fn; return the wall-clock time at which it was started."""
    t = time.time()
    fn()
    return t
