"""`egressgw agent --config FILE`: the worker agent; `egressgw agent cleanup`: remove everything it created.

The agent watches the cluster (k8s_sync, agent role: this node's pods plus what resolution needs), and runs the
reconcile loop `resolve -> plan_worker -> apply` so that selected local pods' traffic is steered into the tunnel
toward their EIP. Everything runs in the current network namespace and logs to stderr, so the lab starts it with
`ip netns exec <worker> egressgw agent --config worker1.yaml`.

On SIGTERM/SIGINT the agent exits WITHOUT removing its kernel state: the data path keeps forwarding while the agent
restarts (upgrade, crash loop), and the next start adopts the state (the appliers observe, diff and converge; they
never flush). `egressgw agent cleanup` is the explicit uninstall: it removes our nft table, rules, routes and
tunnel devices, and nothing else.

Exit codes: 0 clean stop, 1 runtime failure (no interface, data path unavailable), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from prometheus_client import REGISTRY

from appliance.agent.datapath import make_worker_datapath, tunnel_source
from appliance.agent.endpoint_liveness import EndpointLiveness, LivenessCollector
from appliance.agent.service import AgentDeps, AgentService
from appliance.core.events import EventLogger, setup_logging
from appliance.datapath.apply.wireguard_keyfiles import begin_rotation
from appliance.runtime.config import AgentConfig, load_agent_config, load_or_exit_code
from appliance.runtime.datapath_common import DataPathUnavailable, register_datapath_metrics, remove_worker_state
from appliance.runtime.metrics import LoopMetrics, SkipMetrics, serve_metrics
from appliance.runtime.underlay import UnderlayError, detect_underlay
from appliance.runtime.wireguard_common import KubeNodeAnnotator
from k8s_sync.cluster import ClusterSync
from k8s_sync.kubeapi import KubeApi, make_api_client
from k8s_sync.resources import Role


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="agent config file (YAML; see docs/operations.md)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    cleanup = sub.add_parser(
        "cleanup",
        help="remove every kernel object the agent created (our nft table, rules, routes, tunnel devices)",
        description="Remove every kernel object the agent created. Run it after stopping the agent for good.",
    )
    cleanup.add_argument("--config", dest="cleanup_config", metavar="FILE", default=argparse.SUPPRESS)
    rotate = sub.add_parser(
        "rotate-key",
        help="start a WireGuard key rotation on this node (the running agent completes it without loss)",
        description="Generate this node's next WireGuard key next to the current one. The running agent publishes "
        "it, moves traffic to it once the gateways know it, and retires the old key (docs/wireguard.md).",
    )
    rotate.add_argument("--config", dest="rotate_config", metavar="FILE", default=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _load(path: str) -> AgentConfig | int:
    return load_or_exit_code(load_agent_config, path)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "cleanup":
        return cleanup(getattr(args, "cleanup_config", None) or args.config)
    if getattr(args, "action", None) == "rotate-key":
        return rotate_key(getattr(args, "rotate_config", None) or args.config)
    if not args.config:
        print("egressgw agent: --config FILE is required (or use `egressgw agent cleanup`)", file=sys.stderr)
        return 2
    cfg = _load(args.config)
    if isinstance(cfg, int):
        return cfg
    return run_agent(cfg)


def rotate_key(config_path: str | None) -> int:
    """Start a rotation: the next key goes into the agent's state dir; the agent's passes do the rest."""
    if not config_path:
        print("egressgw agent rotate-key: --config FILE is required", file=sys.stderr)
        return 2
    cfg = _load(config_path)
    if isinstance(cfg, int):
        return cfg
    key = begin_rotation(cfg.state_dir / "wireguard")
    print(f"next WireGuard public key: {key.public_key}; the running agent publishes it and switches to it on its "
          f"next passes (at the latest after {cfg.reconcile.resync_period_s:g} s)")
    return 0


def cleanup(config_path: str | None) -> int:
    cfg: AgentConfig | None = None
    if config_path:
        loaded = _load(config_path)
        if isinstance(loaded, int):
            return loaded
        cfg = loaded
    setup_logging(cfg.log if cfg is not None else None)
    log = EventLogger("egressgw.agent")
    try:
        removed = remove_worker_state(cfg)
    except DataPathUnavailable as e:
        log.error("agent.cleanup_failed", error=str(e))
        return 1
    log.info("agent.cleanup_done", removed=len(removed), changes=list(removed[:50]))
    return 0


def run_agent(cfg: AgentConfig) -> int:
    """Wire the real pieces (underlay, API client, data path, metrics, cluster sync) into an `AgentService` and run
    it until SIGTERM/SIGINT."""
    setup_logging(cfg.log)
    log = EventLogger("egressgw.agent", node=cfg.node_name)
    try:
        underlay = detect_underlay(cfg.underlay, what="underlay")
        api = KubeApi(make_api_client(str(cfg.kube.kubeconfig) if cfg.kube.kubeconfig else None))
        datapath = make_worker_datapath(cfg, underlay, annotator=KubeNodeAnnotator(api))
    except (UnderlayError, DataPathUnavailable) as e:
        log.error("agent.start_failed", error=str(e))
        return 1
    log.info(
        "agent.starting",
        underlay=underlay.interface,
        addresses=underlay.addresses,
        mtu=underlay.mtu,
        kubeconfig=cfg.kube.kubeconfig or "in-cluster",
    )
    loop_metrics = LoopMetrics("agent")
    skip_metrics = SkipMetrics("agent")
    register_datapath_metrics(datapath, REGISTRY, role="agent")
    try:
        listen = serve_metrics(cfg.metrics)
    except OSError as e:
        log.error("agent.start_failed", error=f"metrics server on {cfg.metrics}: {e}")
        return 1
    if listen:
        log.info("metrics.listening", address=listen)

    sync = ClusterSync(api, role=Role.AGENT, node_name=cfg.node_name, lease_namespace=cfg.lease_namespace)
    # probes go from the underlay address of each endpoint's family (a gateway's spec.tunnel.family picks it)
    liveness = EndpointLiveness(node=cfg.node_name, source=tunnel_source(underlay), settings=cfg.liveness,
                                state_dir=cfg.state_dir, sources=underlay.addresses)
    REGISTRY.register(LivenessCollector(liveness))
    deps = AgentDeps(
        source=sync.store,
        datapath=datapath,
        helpers=[liveness, sync],
        liveness=liveness,
        previous=sync.store.written_intent,
        on_pass=loop_metrics.observe,
        on_skips=skip_metrics.observe,
    )
    service = AgentService(cfg, deps, log=log)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        service.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return service.run()
