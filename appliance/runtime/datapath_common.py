"""What the agent's and the gateway's data-path wiring share: the binaries check, our nft table's presence, the
data-path metrics, and removing everything ours from the kernel (`egressgw agent cleanup`, a drained gateway).

Why here: the worker side lives in `appliance.agent.datapath`, the gateway side in `appliance.gateway.datapath`, and
the two services must not import each other; these helpers are the part both need.
"""

from __future__ import annotations

import os
import shutil

from prometheus_client import CollectorRegistry

from appliance.datapath.apply import health_checks
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.metrics import register
from appliance.datapath.apply.wireguard import WireguardApplier
from appliance.datapath.apply.worker_guards import BridgeBindingApplier
from appliance.datapath.plan.nft_rendering import FAMILY, TABLE
from appliance.datapath.plan.nft_variant import RulesetVariant, choose_variant
from appliance.datapath.plan.wireguard import WgSettings
from appliance.runtime.config import AgentConfig, GatewayConfig


class DataPathUnavailable(Exception):
    """The data path cannot run here (no `ip` or `nft` binary)."""


def require_binaries() -> None:
    """Raise `DataPathUnavailable` unless `ip` and `nft` are installed (the appliers run them)."""
    missing = [b for b in ("ip", "nft") if shutil.which(b) is None]
    if missing:
        raise DataPathUnavailable(f"missing {' and '.join(missing)} (install iproute2 and nftables)")


def ruleset_variant(cfg: AgentConfig | GatewayConfig) -> RulesetVariant:
    """The nftables ruleset this node renders: `datapath.ruleset`, or from the running kernel when `auto`."""
    return choose_variant(os.uname().release, cfg.datapath.ruleset)


def table_present() -> bool:
    """Our nft table exists (one netlink request: no listing of 40k set elements every tick)."""
    return health_checks.nft_table_present(FAMILY, TABLE)


def register_datapath_metrics(datapath: object, registry: CollectorRegistry, *, role: str) -> bool:
    """Export the data path's nft counters (read at scrape time) when the data path has them."""
    counters = getattr(datapath, "counters", None)
    if counters is None:
        return False
    register(registry, counters, role=role, policies=getattr(datapath, "policy_counters", None),
             policy_drops=getattr(datapath, "policy_drop_counters", None), snat=getattr(datapath, "snat_ports", None))
    return True


def remove_state(cfg: AgentConfig | GatewayConfig | None) -> tuple[str, ...]:
    """Everything ours in the current namespace: our nft tables (`inet`, the worker's `bridge`), rules, routes,
    neighbours, EIPs, VXLAN links, and our WireGuard interfaces when WireGuard exists here (the configured
    `wireguard.interface_prefix`: a node whose services name them differently must get them removed too; the default
    prefix without a config)."""
    require_binaries()
    result = BridgeBindingApplier().remove() + DataPathApplier().remove_all()
    out = result.changes + tuple(f"FAILED {f}" for f in result.failures)
    return out + _remove_wireguard(cfg.wireguard.interface_prefix if cfg is not None else None)


def _remove_wireguard(prefix: str | None) -> tuple[str, ...]:
    try:
        applier = WireguardApplier(prefix=prefix or WgSettings().interface_prefix)
    except RuntimeError:  # neither the kernel module nor wireguard-go: nothing of ours can exist
        return ()
    names = sorted(applier.our_links())
    applier.remove_all()
    return tuple(f"wireguard interface {n} deleted" for n in names)


def remove_worker_state(cfg: AgentConfig | GatewayConfig | None) -> tuple[str, ...]:
    """`remove_state` under the name `egressgw agent cleanup` uses."""
    return remove_state(cfg)


def remove_gateway_state(cfg: GatewayConfig | None) -> tuple[str, ...]:
    """`remove_state` for a gateway member (the same objects: one table, one prefix)."""
    return remove_state(cfg)
