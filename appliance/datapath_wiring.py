"""Adapters between the service shell and the data path (planners + kernel appliers) of each role.

Why a separate module: the commands and the reconcile loop speak small Protocols (`WorkerDataPath`,
`appliance.gateway_service.GatewayDataPath`); the data path speaks plans and kernel steps. This is the one place
that knows both, so either side can change its internals without touching the other.
"""

from __future__ import annotations

from typing import Protocol

from appliance.config import AgentConfig, GatewayConfig
from appliance.gateway_service import GatewayDataPath
from appliance.intent import Intent
from appliance.reconciling import PassOutcome
from appliance.snapshot import Snapshot
from appliance.underlay import Underlay


class DataPathUnavailable(Exception):
    """The data path modules are missing or cannot run here (no nft binary, no netlink)."""


class WorkerDataPath(Protocol):
    def converge(self, snapshot: Snapshot, intent: Intent) -> PassOutcome: ...

    def remove_all(self) -> tuple[str, ...]: ...


def make_worker_datapath(cfg: AgentConfig, underlay: Underlay) -> WorkerDataPath:
    raise DataPathUnavailable("the worker data path (appliance.planning_worker, appliers) is not available yet")


def make_gateway_datapath(cfg: GatewayConfig, uplink: Underlay) -> GatewayDataPath:
    raise DataPathUnavailable("the gateway data path (appliance.planning_gateway, appliers) is not available yet")


def remove_worker_state(cfg: AgentConfig | None) -> tuple[str, ...]:
    raise DataPathUnavailable("the worker data path is not available yet")


def remove_gateway_state(cfg: GatewayConfig | None) -> tuple[str, ...]:
    raise DataPathUnavailable("the gateway data path is not available yet")
