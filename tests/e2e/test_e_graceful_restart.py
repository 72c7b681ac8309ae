"""BGP graceful restart in the whole system: a gateway instance with ONE member, with BIRD 2 and with FRR.

G01 the member's gateway service restarted (SIGTERM, then started again) and G02 its ExaBGP alone SIGKILLed (the
service respawns it): the EIP stays routed and forwarding, 0 probes lost. The only member has nobody to drain to, so
SIGTERM there is a restart stop (kernel state kept, ExaBGP closes without a NOTIFICATION, BFD says AdminDown); the
routers keep its routes as stale, and the next start sends End-of-RIB only after it re-announced them.
G03 a real failure (the member's uplink cut) is still a hard down: BFD notices and the router's route for the EIP is
gone well within the graceful-restart time (30 s), i.e. not held stale.

The single-member gateway selects one gateway node by its hostname label (taken from the System); its EIP comes from
a pool of its own, so the lab's default gateway (two members) is untouched. One continuous probe (UDP every 10 ms
from a selected pod) runs across G01 and G02; each window also becomes a timeline SVG through the same hook the
failover benchmark and the demo use (`lab.plots.write_event_plots`), checked to be written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.core.waiting import wait_until
from lab import netns
from lab.bench.harness import RouteMonitor, member_ranked, member_status, router_of, router_paths
from lab.bench.probes import RawProbe, window
from lab.plots import system_timeline, write_event_plots
from lab.scenarios import gateway_manifest, policy_manifest
from lab.system import TOPOLOGIES, System
from tests.e2e.conftest import Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

GATEWAY = "egw-single"
EIP = "203.0.113.210"
POOL = "203.0.113.210-203.0.113.214"
#: well below the graceful-restart time the members advertise (30 s): a route held stale would outlive this
HARD_DOWN_BOUND_S = 15.0


@pytest.fixture(scope="module")
def frr_system() -> Iterator[System]:
    s = System.up(TOPOLOGIES / "default-frr.clab.yml", prefix="egt-e2g-")
    try:
        yield s
    finally:
        s.down()


@pytest.fixture(params=["bird", "frr"])
def lab_system(request: pytest.FixtureRequest) -> System:
    """BIRD: the package's shared lab; FRR: a lab of this module."""
    name = "system" if request.param == "bird" else "frr_system"
    got: System = request.getfixturevalue(name)
    return got


def router_route(system: System, eip: str) -> str:
    """The router's kernel route for the EIP's host route ("" when it has none)."""
    res = system.lab.exec(router_of(system), ["ip", "-4", "route", "show", f"{eip}/32"], check=False)
    return str(res.stdout).strip()


def exabgp_pids(system: System, gw: str) -> list[int]:
    out = []
    for pid in netns.pids(system.lab.netns(gw)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"exabgp" in cmdline and b"appliance.cli" not in cmdline:
            out.append(pid)
    return out


def why(system: System, gw: str) -> object:
    doc = member_status(system, gw)
    keep = ("phase", "health", "announcements", "peers", "bfd", "state_sync")
    router = router_of(system)
    if system.lab.daemon(router, "bird") is not None:
        argv = system.lab.expand(router, "birdc -s {nodedir}/bird.ctl show bfd sessions").split()
    else:
        argv = ["vtysh", "-N", system.lab.netns(router), "-c", "show bfd peers brief"]
    bfd = str(system.lab.exec(router, argv, check=False, timeout=10).stdout)
    return {"status": {k: doc.get(k) for k in keep}, "router paths": router_paths(system, EIP), "router bfd": bfd}


def member_up(system: System, gw: str) -> bool:
    """The member's service runs with its BGP sessions and BFD up (it may have nothing to announce)."""
    doc = member_status(system, gw)
    sessions = [*(doc.get("peers") or {}).values(), *(doc.get("bfd") or {}).values()]
    return doc.get("phase") == "running" and bool(sessions) and all(v in ("up", "Up") for v in sessions)


def carried(system: System, gw: str) -> bool:
    """The member announces with its ranked preference, sessions and BFD up, and the router holds its path."""
    return member_ranked(system, gw) and gw in router_paths(system, EIP)


def test_single_member_restarts_keep_the_eip_and_a_hard_failure_still_withdraws(
        lab_system: System, tmp_path: Path) -> None:
    system = lab_system
    gw = system.gateways[0]
    pod = system.pods[0]
    sc = Scenario(system, "graceful-restart")
    monitor: RouteMonitor | None = None
    probe: RawProbe | None = None
    try:
        sc.apply(gateway_manifest(GATEWAY, pools_v4=(POOL,), default_v4=EIP, pools_v6=(), default_v6=None,
                                  cluster_default=False, node_selector={"kubernetes.io/hostname": gw}))
        sc.pod("web", pod, {"app": "single"})
        sc.apply(policy_manifest(sc.namespace, "p", match_labels={"app": "single"}, gateway=GATEWAY))
        assert system.wait_source(pod, EIP, timeout=90) == EIP
        wait_until(lambda: carried(system, gw), timeout=60, interval=0.2, what=f"{gw} carrying {EIP} alone",
                   describe=lambda: why(system, gw))
        assert router_paths(system, EIP) == {gw}  # the instance really has one member
        monitor = RouteMonitor(system, EIP).start()
        probe = RawProbe(system.lab, pod, server=system.external_address(4), port=system.ext_port).start()
        time.sleep(1.0)  # normal traffic before the first event

        # G01: the service restarted
        t_restart = time.time()
        system.stop_service(gw, sig=signal.SIGTERM, grace=30.0)
        system.start_gateway(gw)
        wait_until(lambda: carried(system, gw), timeout=60, interval=0.2, what=f"{gw} re-announcing after restart",
                   describe=lambda: why(system, gw))
        time.sleep(1.0)
        t_kill = time.time()

        # G02: ExaBGP alone killed
        before = exabgp_pids(system, gw)
        assert before, f"no ExaBGP process in {gw}'s namespace"
        for pid in before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: (p := exabgp_pids(system, gw)) and not set(p) & set(before) and carried(system, gw),
                   timeout=60, interval=0.2, what=f"{gw}'s ExaBGP respawned and its routes re-announced",
                   describe=lambda: why(system, gw))
        time.sleep(1.0)
        t_end = time.time()
        raw = probe.stop()
        probe = None

        windows = [(f"{gw} alone: service restart (SIGTERM, start)", t_restart, t_kill),
                   (f"{gw} alone: ExaBGP SIGKILLed", t_kill, t_end)]
        # the benchmarks' and the demo's plot hook, on this run: one timeline SVG per window
        plots = write_event_plots(system, raw, windows, tmp_path, route_events=monitor.since(0))
        assert len(plots) == 2 and all(p.stat().st_size > 0 for p in plots)
        for (label, t0, t1), plot in zip(windows, plots, strict=True):
            w = window(raw, t0 - 0.2, t1)
            tl = system_timeline(system, raw, t0 - 0.2, t1, title=label, route_events=monitor.since(0))
            lost_at = [round(t, 3) for t, ok in zip(tl.sent_at, tl.answered, strict=True) if not ok]
            story = "\n".join(f"  {e.t_s:7.3f} {e.kind:5} {e.label}" for e in tl.events)
            story += f"\n  lost from {lost_at[0]} to {lost_at[-1]}" if lost_at else ""
            print(f"\n{label}: sent={w.udp.sent} lost={w.udp.lost} outage={w.outage_ms:.0f} ms, router route "
                  f"changes={len(monitor.since(t0))} ({plot})")
            assert w.udp.sent > 50 and w.sources == (EIP,)
            assert w.udp.lost == 0, f"{label}: {w.udp.lost} probes lost on a single-member gateway:\n{story}"

        # G03: a real failure is a hard down, not a graceful restart
        assert router_route(system, EIP)
        system.lab.cut_link(gw, "eth1")
        wait_until(lambda: router_route(system, EIP) == "", timeout=HARD_DOWN_BOUND_S, interval=0.05,
                   what=f"the router to drop {EIP} after {gw}'s uplink cut (BFD down, not held stale)",
                   describe=lambda: router_route(system, EIP))
    finally:
        if probe is not None:
            probe.kill()
        if monitor is not None:
            monitor.stop()
        system.lab.restore_link(gw, "eth1")
        sc.cleanup()
        if system.lab.daemon(gw, "egressgw-gateway") is None:
            system.start_gateway(gw)
        wait_until(lambda: member_up(system, gw), timeout=90, interval=0.5, what=f"{gw} back for later tests",
                   describe=lambda: why(system, gw))
