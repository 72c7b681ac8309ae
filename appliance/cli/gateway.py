"""`egressgw gateway --config FILE` runs a gateway member; `drain` and `status` control and inspect it.

- run: cluster sync -> resolve -> plan_gateway -> apply kernel state FIRST, then announce (only EIPs in place);
  health checks feed the rise/fall machine; member lease renewal; status writing when leader (lease election);
  metrics on the configured address; BGP through ExaBGP and BFD through the BIRD sidecar when `bgp:` is configured.
  See `appliance.gateway.service` for the order of things. Logs to stderr; runs in the current network namespace
  (`ip netns exec gw1 egressgw gateway --config gw1.yaml` in the lab).
- drain: writes `<state_dir>/drain.request` and sends SIGUSR1 to the service, then follows its progress
  (withdrawn, acknowledged, settled) until it exits. SIGTERM does the same drain (systemd `stop`), except on the
  only live member of an instance, where it is a restart stop that keeps the kernel state and the routes
  (graceful restart; see `appliance.gateway.service`).
- status: prints the member's state from `<state_dir>/status.json` (health and checks, announcements desired vs
  acknowledged, BGP peers, BFD, drain progress); `--json` prints the document.

Exit codes: 0 ok, 1 runtime failure / not running / drain timed out, 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from appliance.core.events import EventLogger, setup_logging
from appliance.datapath.apply import health_checks
from appliance.datapath.apply.wireguard_keyfiles import publish_public_key
from appliance.datapath.plan.wireguard_keys import PublicKey
from appliance.gateway.datapath import make_gateway_datapath
from appliance.gateway.member_state import AlreadyRunning, StateDir, render_status
from appliance.gateway.seams import GatewayDataPath, GatewayDeps, Lifecycle
from appliance.gateway.service import GatewayService
from appliance.gateway.state_sync import GatewayStateSync
from appliance.gateway.status import state_sync_entry, state_sync_line
from appliance.gateway.view import MemberView, Phase
from appliance.runtime.config import GatewayConfig, load_gateway_config, load_or_exit_code
from appliance.runtime.datapath_common import DataPathUnavailable, register_datapath_metrics
from appliance.runtime.metrics import LoopMetrics, SkipMetrics, serve_metrics
from appliance.runtime.skips import count_by_reason
from appliance.runtime.underlay import Underlay, UnderlayError, detect_underlay
from appliance.runtime.wireguard_common import KubeNodeAnnotator
from bgp.bfd_sidecar import BfdSidecar
from bgp.health import Check
from bgp.heartbeat import MemberHeartbeat
from bgp.metrics import BgpMetrics, eip_announcements
from bgp.speaker import BgpSpeaker
from k8s_sync.cluster import ClusterSync
from k8s_sync.kubeapi import KubeApi, make_api_client
from k8s_sync.leases import STATE_SYNC_ANNOTATION, LeaderElection, MemberIdentity, MemberLease
from k8s_sync.resources import Role
from k8s_sync.status_metrics import register_status_metrics
from k8s_sync.status_writer import StatusWriter


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="gateway config file (YAML; see docs/operations.md)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    drain = sub.add_parser(
        "drain",
        help="withdraw this member's announcements, wait for the routers, then stop the service",
        description="Drain the running gateway service: withdraw, wait for the acks and the settle time, stop.",
    )
    _state_args(drain)
    drain.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the service to exit")
    drain.add_argument("--no-wait", action="store_true", help="return once the drain was requested")
    status = sub.add_parser("status", help="print the local member state", description="Print the member state.")
    _state_args(status)
    status.add_argument("--json", action="store_true", help="print the raw status document")
    parser.set_defaults(func=run)


def _state_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--config", dest="sub_config", metavar="FILE", default=argparse.SUPPRESS)
    group.add_argument("--state-dir", metavar="DIR", default=None)


def _load(path: str) -> GatewayConfig | int:
    return load_or_exit_code(load_gateway_config, path)


def _state_dir(args: argparse.Namespace) -> StateDir | int:
    if args.state_dir:
        return StateDir(Path(args.state_dir))
    path = getattr(args, "sub_config", None) or args.config
    if not path:
        print("egressgw gateway: give --config FILE or --state-dir DIR", file=sys.stderr)
        return 2
    cfg = _load(path)
    return cfg if isinstance(cfg, int) else StateDir(cfg.state_dir)


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action in ("drain", "status"):
        state = _state_dir(args)
        if isinstance(state, int):
            return state
        if action == "drain":
            return drain_command(state, timeout_s=args.timeout, wait=not args.no_wait)
        return status_command(state, as_json=args.json)
    if not args.config:
        print("egressgw gateway: --config FILE is required", file=sys.stderr)
        return 2
    cfg = _load(args.config)
    if isinstance(cfg, int):
        return cfg
    return run_gateway(cfg)


# ----- status and drain (the command side) -----


def status_command(state: StateDir, *, as_json: bool) -> int:
    doc = state.read_status()
    pid = state.running_pid()
    if as_json:
        print(json.dumps({**(doc or {}), "running": pid is not None}, indent=1, sort_keys=True))
    else:
        sys.stdout.write(render_status(doc, running_pid=pid, now=time.time()))
    return 0 if pid is not None else 1


def drain_command(state: StateDir, *, timeout_s: float, wait: bool) -> int:
    pid = state.running_pid()
    if pid is None:
        print(f"egressgw gateway drain: no running gateway service in {state.path}", file=sys.stderr)
        return 1
    state.request_drain()
    os.kill(pid, signal.SIGUSR1)
    print(f"drain requested (pid {pid})", flush=True)
    if not wait:
        return 0
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        doc = state.read_status() or {}
        drain: dict[str, Any] = doc.get("drain") or {}
        line = f"phase {doc.get('phase', '?')}, drain {drain.get('state', 'pending')}"
        if "acknowledged" in drain:
            line += f" (withdrawal acknowledged: {'yes' if drain['acknowledged'] else 'no, timed out'})"
        if line != last:
            print(line, flush=True)
            last = line
        if state.running_pid() is None:
            print("gateway service stopped", flush=True)
            return 0
        time.sleep(0.1)
    print(f"egressgw gateway drain: the service did not stop within {timeout_s:.0f}s", file=sys.stderr)
    return 1


# ----- the service (wiring the real pieces) -----


class _Releasing:
    """A lease loop as a start/stop helper whose stop *releases* it: a stopped member's lease is deleted, a stopped
    leader gives up leadership at once (nobody waits for an expiry)."""

    def __init__(self, lease: Any) -> None:
        self._lease = lease

    def start(self) -> None:
        self._lease.start()

    def stop(self) -> None:
        self._lease.release()


def _state_sync_annotation(view: MemberView | None) -> dict[str, str]:
    """The member Lease's state-sync summary (`egressgw status` shows it per member); none while sync is off."""
    if view is None or view.state_sync is None:
        return {}
    return {STATE_SYNC_ANNOTATION: state_sync_line(state_sync_entry(view.state_sync))}


def lease_healthy(view: MemberView) -> bool:
    """Whether the member Lease is renewed now: the member is healthy (past Starting, checks within `fall`, not
    disabled) and not draining. Otherwise the Lease says expired (`k8s_sync.leases.MemberLease`)."""
    return view.phase is not Phase.DRAINING and view.health.healthy


class StartError(Exception):
    """A reason the service cannot start (logged as `gateway.start_failed`, exit 1)."""


def with_router_id(cfg: GatewayConfig, uplink: Underlay) -> GatewayConfig:
    """Fill in the BGP router id from the uplink's IPv4 address when the config left it out."""
    if cfg.bgp is None or not cfg.router_id_from_uplink:
        return cfg
    v4 = uplink.address(4)
    if not isinstance(v4, IPv4Address):
        raise StartError("bgp.router_id: required (an IPv4 address): the uplink has no IPv4 address to take it from")
    return replace(cfg, bgp=replace(cfg.bgp, router_id=v4))


def run_gateway(cfg: GatewayConfig) -> int:
    setup_logging(cfg.log)
    log = EventLogger("egressgw.gateway", node=cfg.node_name)
    state = StateDir(cfg.state_dir)
    try:
        state.acquire()
    except (AlreadyRunning, OSError) as e:
        log.error("gateway.start_failed", error=str(e))
        return 1
    try:
        try:
            service = build_gateway_service(cfg, state=state, log=log)
        except StartError as e:
            log.error("gateway.start_failed", error=str(e))
            return 1

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if signum == signal.SIGUSR1:
                service.request_drain("drain command")
            else:
                service.request_drain(name, hurry_if_repeated=True, restart_if_sole=True)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, on_signal)
        return service.run()
    finally:
        state.release()


def build_gateway_service(
    cfg: GatewayConfig,
    *,
    state: StateDir | None,
    log: EventLogger | None = None,
    datapath_factory: Callable[[GatewayConfig, Underlay], GatewayDataPath] | None = None,
    registry: CollectorRegistry | None = None,
) -> GatewayService:
    """Wire the real pieces (cluster sync, leases, status writer, ExaBGP, BFD, data path, metrics) into a service.

    `datapath_factory` and `registry` exist for integration tests (a recording data path, a private metrics
    registry); the command uses the real data path and the default registry.
    """
    log = log or EventLogger("egressgw.gateway", node=cfg.node_name)
    registry = registry if registry is not None else REGISTRY
    api = KubeApi(make_api_client(str(cfg.kube.kubeconfig) if cfg.kube.kubeconfig else None))
    lease_holder: list[MemberLease] = []

    def publish_key(public_key: str) -> None:
        """The WireGuard instance public key: on the member Lease (appliance) or the own Node (cluster node)."""
        if cfg.gateway is not None:
            for held in lease_holder:
                held.me = replace(held.me, wireguard_public_key=public_key)
        else:
            publish_public_key(KubeNodeAnnotator(api), cfg.node_name, (PublicKey(public_key),))
        log.info("wireguard.key_published", public_key=public_key, on="lease" if cfg.gateway else "node")

    try:
        uplink = detect_underlay(cfg.uplink, what="uplink")
        cfg = with_router_id(cfg, uplink)
        if datapath_factory is not None:
            datapath = datapath_factory(cfg, uplink)
        else:
            datapath = make_gateway_datapath(cfg, uplink, publish_key=publish_key)
    except (UnderlayError, DataPathUnavailable) as e:
        raise StartError(str(e)) from None
    log.info(
        "gateway.starting",
        uplink=uplink.interface,
        addresses=uplink.addresses,
        appliance_of=cfg.gateway,
        kubeconfig=cfg.kube.kubeconfig or "in-cluster",
    )
    loop_metrics = LoopMetrics("gateway", registry)
    register_datapath_metrics(datapath, registry, role="gateway")
    bgp_metrics = BgpMetrics(registry)
    skip_metrics = SkipMetrics("gateway", registry)
    try:
        listen = serve_metrics(cfg.metrics, registry)
    except OSError as e:
        raise StartError(f"metrics server on {cfg.metrics}: {e}") from None
    if listen:
        log.info("metrics.listening", address=listen)

    sync = ClusterSync(api, role=Role.GATEWAY, node_name=cfg.node_name, lease_namespace=cfg.lease_namespace)
    # every uplink address: the EgressGateway's spec.tunnel.family picks the member address (policy.placement)
    address = ",".join(str(a) for a in uplink.addresses)
    me = MemberIdentity(name=cfg.node_name, gateway=cfg.gateway, address=address if cfg.gateway else None)
    service_ref: list[GatewayService] = []
    lease = MemberLease(
        api,
        me,
        namespace=cfg.lease_namespace,
        # renewed only while healthy (not starting, failing, disabled or draining): the Lease is what every reader
        # of member liveness follows (status, fail-closed/fail-open, useNodeIP placement; k8s_sync.leases)
        healthy=lambda: bool(service_ref) and lease_healthy(service_ref[0].view),
        annotations=lambda: _state_sync_annotation(service_ref[0].view if service_ref else None),
    )
    lease_holder.append(lease)
    leader = LeaderElection(api, cfg.node_name, namespace=cfg.lease_namespace)
    writer = StatusWriter(api, sync.store.raw_objects, is_leader=leader.is_leader, identity=cfg.node_name)
    register_status_metrics(writer, registry)

    speaker: BgpSpeaker | None = None
    bfd: BfdSidecar | None = None
    if cfg.bgp is not None:
        speaker = BgpSpeaker(cfg.bgp, cfg.state_dir / "bgp")
        if cfg.bgp.bfd.enabled:
            bfd = BfdSidecar(cfg.bgp, cfg.state_dir / "bfd")
    probe = cfg.health.upstream_probe

    def host_checks() -> dict[Check, bool]:
        out = {Check.UPLINK: health_checks.link_up(uplink.interface)}
        if probe is not None:
            out[Check.UPSTREAM_PROBE] = health_checks.upstream_probe(
                probe.address, probe.port, probe.timeout_ms / 1000.0
            )
        return out

    def on_tick(view: MemberView) -> None:
        """The metrics from the member's published view (plus the speaker's restart counter)."""
        bgp_metrics.observe(
            peer_states=dict(view.peers),
            bfd_states=dict(view.bfd) if bfd is not None else None,
            desired=len(view.desired),
            acknowledged=len(view.acknowledged),
            health=view.health,
            now=view.taken_at,
            restarts=speaker.restarts if speaker is not None else None,
            eip_announced=eip_announcements(view.eips_in_place, view.acknowledged, view.desired),
        )
        skip_metrics.observe(count_by_reason(view.skipped))

    helpers: list[Lifecycle] = [sync, _Releasing(lease), _Releasing(leader), writer]
    state_sync: GatewayStateSync | None = None
    if cfg.state_sync.enabled:  # conntrack state shared with the instance's other members (gateway.state_sync)
        if shutil.which(cfg.state_sync.binary) is None:
            raise StartError(f"state_sync.binary: {cfg.state_sync.binary} not found (install conntrackd, or set "
                             "state_sync.enabled: false)")
        state_sync = GatewayStateSync(cfg.state_sync, member=cfg.node_name, state_dir=cfg.state_dir,
                                      registry=registry, log=log)
        helpers.append(state_sync)
    heartbeat: MemberHeartbeat | None = None
    if cfg.bgp is not None and cfg.bgp.stale_view.enabled:  # stale members step back (bgp.freshness)
        heartbeat = MemberHeartbeat(me=cfg.node_name, settings=cfg.bgp.stale_view, view_age=sync.store.view_age)
        helpers.append(heartbeat)
    deps = GatewayDeps(
        source=sync.store,
        datapath=datapath,
        speaker=speaker,
        bfd=bfd,
        freshness=heartbeat,
        state_sync=state_sync,
        helpers=helpers,
        host_checks=host_checks,
        publish=writer.submit,
        previous=sync.store.written_intent,
        on_pass=loop_metrics.observe,
        on_tick=on_tick,
    )
    service = GatewayService(cfg, deps, state=state, log=log)
    service_ref.append(service)
    return service
