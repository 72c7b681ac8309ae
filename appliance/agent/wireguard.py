"""WireGuard in the worker agent: run the WireGuard part of a pass and hand the route devices to the data path.

Nothing is created until an intent contains a WireGuard instance (`appliance.runtime.wireguard_common`): keys in
`<state_dir>/wireguard` (created on first use, 0600), public keys published on the own Node annotation
(`egressgw.io/wireguard-public-key`; needs RBAC `patch` on nodes), plan + apply
(`appliance.datapath.apply.wireguard_node.WorkerWireguard`), the liveness prober in a thread (fast re-handshake after
a failover), key rotation advanced after each pass.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.core.intent import Intent
from appliance.core.model import Node
from appliance.core.snapshot import Snapshot
from appliance.datapath.apply.wireguard import WireguardApplier
from appliance.datapath.apply.wireguard_liveness import LivenessProber
from appliance.datapath.apply.wireguard_node import WorkerWireguard
from appliance.runtime.skips import SkipNote, wireguard_skips
from appliance.runtime.underlay import Underlay
from appliance.runtime.wireguard_common import uses_wireguard, wireguard_settings


class WorkerWireguardHook:
    """The worker's WireGuard, started lazily by the first intent that uses it; `devices` runs once per pass."""

    def __init__(
        self, *, node: str, state_dir: Path, underlay: Underlay, prefix: str | None, annotator: Any | None
    ) -> None:
        self.node, self.state_dir, self.underlay = node, state_dir, underlay
        self.prefix, self.annotator = prefix, annotator
        self.worker: WorkerWireguard | None = None
        self._prober: LivenessProber | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: the last WireGuard plan's skips (empty while WireGuard is not used)
        self.skipped: frozenset[SkipNote] = frozenset()

    def _start(self) -> WorkerWireguard:
        settings = wireguard_settings(mtu=self.underlay.mtu, prefix=self.prefix)
        applier = WireguardApplier(prefix=settings.interface_prefix)  # raises when WireGuard is unavailable here
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._prober = LivenessProber(applier.reset_peer)
        self.worker = WorkerWireguard(
            node=self.node,
            state_dir=self.state_dir,
            settings=settings,
            applier=applier,
            prober=self._prober,
            annotator=self.annotator,
        )
        self._thread = threading.Thread(target=self._prober.run, args=(self._stop,), name="wg-prober", daemon=True)
        self._thread.start()
        return self.worker

    def devices(self, snapshot: Snapshot, intent: Intent) -> Mapping[str, str]:
        """Plan and apply this pass's WireGuard part; returns instance -> device for `plan_worker`."""
        worker = self.worker
        if worker is None:
            if not uses_wireguard(intent):
                return {}
            worker = self._start()
        node = next((n for n in snapshot.nodes if n.name == self.node), None)
        if node is None:
            node = Node(name=self.node, addresses=self.underlay.addresses)
        plan = worker.reconcile(intent, node)
        worker.advance_rotation()
        self.skipped = wireguard_skips(plan.skipped)
        return dict(plan.route_devices)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._prober is not None:
            self._prober.close()
