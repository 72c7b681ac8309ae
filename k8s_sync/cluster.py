"""`ClusterSync`: the reflectors of one role, their store, Service CIDR detection and lease-expiry ticks, wired up.

Usage (agent/gateway reconcile loops)::

    sync = ClusterSync(KubeApi(make_api_client(kubeconfig)), role=Role.GATEWAY)
    sync.start()
    sync.store.subscribe(loop.mark_dirty)        # reason strings like "Pod/MODIFIED", "Lease/EXPIRED"
    ... if sync.store.synced(): snap = sync.store.snapshot() ...
    sync.stop()

Start-up happens in a background thread, so `start()` never blocks on an absent API server: discovery (is Calico's
IPPool served?) and the first Service CIDR detection retry with backoff. Both are part of the synced gate (as
pseudo-kinds "IPPool" and "ServiceCIDR"), so nothing is planned before we know the cluster-internal ranges.

The agent's cluster-wide `RemotePod` watch starts only once every kind the detected ranges come from is listed (so
its first list is filtered against the real ranges: memory bounded by the stray pods from the start), and relists
when the store says the ranges shrank - after a random delay of up to `RELIST_SPREAD`, so that the agents of a
large cluster, which all see the same change, do not list every pod together.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from appliance.core.backoff import Backoff
from appliance.core.events import EventLogger, error_text
from k8s_sync.kubeapi import KubeApi
from k8s_sync.leases import DEFAULT_NAMESPACE
from k8s_sync.reflector import Reflector, ReflectorSettings, reconnect_backoff
from k8s_sync.resources import Role, calico_served, watch_specs
from k8s_sync.service_cidr import detect_service_cidrs
from k8s_sync.store import DETECTION_KINDS, REMOTE_PODS, Store

log = EventLogger(logging.getLogger(__name__))

SERVICE_CIDR_KEY = "ServiceCIDR"
#: how often the Service CIDR is detected again (it changes only when the cluster is reconfigured)
SERVICE_CIDR_REFRESH = 600.0
#: the remote pod watch relists within this many seconds after the detected ranges shrank (spread over agents)
RELIST_SPREAD = 10.0


class ClusterSync:
    def __init__(self, api: KubeApi, *, role: Role = Role.GATEWAY, node_name: str = "",
                 lease_namespace: str = DEFAULT_NAMESPACE, settings: ReflectorSettings | None = None,
                 detect_service_cidr: bool = True, clock: Callable[[], float] = time.time,
                 relist_spread: float = RELIST_SPREAD) -> None:
        self.api = api
        self.role = role
        self.node_name = node_name
        self.lease_namespace = lease_namespace
        self.settings = settings or ReflectorSettings()
        self.detect_service_cidr = detect_service_cidr
        keys = [s.key for s in watch_specs(role, node_name=node_name or "-", lease_namespace=lease_namespace)]
        self.store = Store([*keys, "IPPool", SERVICE_CIDR_KEY], clock=clock)
        self.reflectors: list[Reflector] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.relist_spread = relist_spread
        self._relist_pending = threading.Event()
        self.store.on_relist_needed(self._relist_later)

    def start(self) -> None:
        for target, name in ((self._bootstrap, "sync-bootstrap"), (self._tick_leases, "sync-lease-ticker")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for r in self.reflectors:
            r.stop()
        for t in self._threads:
            t.join(5.0)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.store.synced():
                return True
            time.sleep(0.05)
        return self.store.synced()

    # ----- background -----

    def _retrying(self, what: str, fn: Callable[[], object]) -> object:
        backoff = Backoff(reconnect_backoff(self.settings))
        while not self._stop.is_set():
            try:
                return fn()
            except Exception as e:
                delay = backoff.next()
                log.warning("sync.bootstrap_retry", step=what, error=error_text(e), delay_s=round(delay, 3))
                self._stop.wait(delay)
        return None

    def _bootstrap(self) -> None:
        calico = bool(self._retrying("discovery", lambda: calico_served(self.api)))
        if self._stop.is_set():
            return
        later = []
        for spec in watch_specs(self.role, node_name=self.node_name, lease_namespace=self.lease_namespace,
                                calico=calico):
            reflector = Reflector(self.api, spec, self.store, settings=self.settings)
            self.reflectors.append(reflector)
            if spec.key == REMOTE_PODS:
                later.append(reflector)
            else:
                reflector.start()
        for reflector in later:
            t = threading.Thread(target=self._start_after_detection, args=(reflector,), name="sync-remote-pods",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        if not calico:
            self.store.replace("IPPool", [], "")
        while not self._stop.is_set():
            if self.detect_service_cidr:
                cidrs = self._retrying("service_cidr",
                                       lambda: detect_service_cidrs(self.api, namespace=self.lease_namespace))
                if isinstance(cidrs, tuple):
                    self.store.set_service_cidrs(cidrs)
            self.store.replace(SERVICE_CIDR_KEY, [], "")
            self._stop.wait(SERVICE_CIDR_REFRESH)

    def _start_after_detection(self, reflector: Reflector) -> None:
        while not self._stop.is_set() and self.store.missing() & set(DETECTION_KINDS):
            self._stop.wait(0.05)
        if not self._stop.is_set():
            reflector.start()

    def _relist_later(self, key: str) -> None:
        """The store asks for a relist of `key`: do it after a random delay (coalesced while one is pending)."""
        if self._relist_pending.is_set():
            return
        self._relist_pending.set()
        delay = random.uniform(0.0, self.relist_spread)

        def relist() -> None:
            if self._stop.wait(delay):
                return
            self._relist_pending.clear()
            for r in self.reflectors:
                if r.spec.key == key:
                    r.relist()

        threading.Thread(target=relist, name="sync-relist", daemon=True).start()

    def _tick_leases(self) -> None:
        """Member liveness changes with time: notify subscribers when a lease expires (no event says so)."""
        last = None
        while not self._stop.is_set():
            alive = self.store.alive_now()
            if alive is not None and last is not None and alive != last:
                self.store.notify("Lease/EXPIRED")
            last = alive
            expiry = self.store.next_lease_expiry()
            wait = 1.0 if expiry is None else min(1.0, max(0.05, expiry - self.store.clock() + 0.01))
            self._stop.wait(wait)
