"""coordination.k8s.io Leases: member liveness (`egressgw-member-<name>`) and the status-writer leader election.

- **Member leases**: every gateway member (cluster node or appliance outside the cluster) renews its own Lease every
  `renew_every` seconds with `leaseDurationSeconds`; a member is *alive* while `renewTime + leaseDurationSeconds` is
  in the future. A member that is not healthy (starting, failed checks, draining) does not renew: it writes its Lease
  once as already expired (`renewTime` two durations in the past) and leaves it so, so every reader of `alive`
  (EIP ranking and primaries, status `members[].healthy`, fail-open/fail-closed, useNodeIP placement, the endpoint
  prober's Lease fallback) counts it out at once instead of after the expiry, and an appliance stays registered
  (label, addresses, key) while it is out. Appliances add the label `egressgw.io/gateway=<gateway>` and the
  annotations with their underlay addresses and WireGuard key, which is how they become members at all. Liveness
  feeds EIP ranking and status only: failover itself never waits for the API server (BGP/BFD do that).
- **Leader election** (`egressgw-status-writer`): a Lease held by one member; others take it over only after it
  expired. Every write carries the resourceVersion read, so two candidates cannot both win (409 = lost the race).
  Only the leader writes status, so members never fight over it.
- **Failing fast and saying so**: every lease call uses `LEASE_TIMEOUT` (2 s connect, 5 s read; no urllib3 retries,
  see `k8s_sync.kubeapi`), so a renewal toward an unreachable API server fails within the renewal period instead of
  hanging in connect retries; failures are logged as `lease.renew_failed` (the first at once, then at most one line
  per `FAILURE_LOG_EVERY_S` with the count and the time since the last success) and the first success after them as
  `lease.renew_recovered`.

The pure helpers (`lease_alive`, `member_name_of_lease`, `micro_time`) are what the store uses.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance.core.events import EventLogger, error_text
from appliance.core.model import (
    APPLIANCE_ADDRESS_ANNOTATION,
    APPLIANCE_LEASE_LABEL,
    DRAIN_ANNOTATION,
    WIREGUARD_KEY_ANNOTATION,
)
from k8s_sync.kubeapi import CONNECT_TIMEOUT_S, JSON, ApiError, KubeApi, Resource, is_network_error

log = EventLogger(logging.getLogger(__name__))

LEASES = Resource(kind="Lease", group="coordination.k8s.io", version="v1", plural="leases", namespaced=True)
MEMBER_PREFIX = "egressgw-member-"
LEADER_LEASE = "egressgw-status-writer"
DEFAULT_NAMESPACE = "egressgw-system"
#: (connect, read) timeout of every lease call: a renewal must fail well within the lease duration, not hang
LEASE_TIMEOUT = (CONNECT_TIMEOUT_S, 5.0)
#: while renewals keep failing, one `lease.renew_failed` line per this many seconds (the first one at once)
FAILURE_LOG_EVERY_S = 30.0


def micro_time(t: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def lease_alive(obj: JSON) -> float | None:
    """When the lease expires (renewTime + leaseDurationSeconds, epoch seconds); None when it was never renewed."""
    spec = obj.get("spec") or {}
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    if renewed is None or not isinstance(duration, int):
        return None
    return renewed + duration


def member_name_of_lease(obj: JSON) -> str | None:
    name = str((obj.get("metadata") or {}).get("name") or "")
    return name[len(MEMBER_PREFIX):] if name.startswith(MEMBER_PREFIX) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberIdentity:
    """Who renews a member lease. `gateway`/`address` set = an appliance outside the cluster; `address` is its
    underlay (uplink) addresses, comma-separated (the instance's `spec.tunnel.family` picks one)."""

    name: str
    gateway: str | None = None
    address: str | None = None
    wireguard_public_key: str | None = None


#: an unhealthy member's Lease says so with a renewTime this many durations in the past (beyond clock skew)
EXPIRED_DURATIONS = 2


def member_lease_body(me: MemberIdentity, *, namespace: str, duration: int, now: float,
                      expired: bool = False) -> JSON:
    """The member Lease; `expired` = the member is not healthy: a renewTime every reader sees as expired."""
    renewed = now - EXPIRED_DURATIONS * duration if expired else now
    labels = {APPLIANCE_LEASE_LABEL: me.gateway} if me.gateway else {}
    annotations = {}
    if me.address:
        annotations[APPLIANCE_ADDRESS_ANNOTATION] = me.address
    if me.wireguard_public_key:
        annotations[WIREGUARD_KEY_ANNOTATION] = me.wireguard_public_key
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": MEMBER_PREFIX + me.name, "namespace": namespace, "labels": labels,
                     "annotations": annotations},
        "spec": {"holderIdentity": me.name, "leaseDurationSeconds": duration, "renewTime": micro_time(renewed)},
    }


class FailureLog:
    """Rate-limited logging of a loop's consecutive failures: the first at once, then one line per `every` seconds
    (with how many failed and since when), and one `recovered` line at the first success after them."""

    def __init__(self, event: str, *, every: float = FAILURE_LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, **context: Any) -> None:
        self.event, self.every, self._clock, self.context = event, every, clock, context
        self.failures = 0
        self._first: float | None = None
        self._last_logged: float | None = None

    def failed(self, error: BaseException) -> bool:
        """Count a failure; returns True when it was logged."""
        now = self._clock()
        self.failures += 1
        if self._first is None:
            self._first = now
        if self._last_logged is not None and now - self._last_logged < self.every:
            return False
        self._last_logged = now
        log.warning(self.event, failures=self.failures, failing_for_s=round(now - self._first, 1),
                    network=is_network_error(error), error=error_text(error), **self.context)
        return True

    def succeeded(self) -> None:
        if self.failures:
            log.info(self.event.replace("_failed", "_recovered"), failures=self.failures,
                     failed_for_s=round(self._clock() - (self._first or self._clock()), 1), **self.context)
        self.failures, self._first, self._last_logged = 0, None, None


class _Loop:
    """A daemon thread calling `step()` every `period` seconds until stopped; failures go to `FailureLog`."""

    def __init__(self, name: str, period: float) -> None:
        self._name, self._period = name, period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = FailureLog("lease.renew_failed", loop=name)

    def step(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:  # API away: try again next period
                self.failures.failed(e)
            else:
                self.failures.succeeded()
            self._stop.wait(self._period)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)


#: a member's one-line conntrack state-sync summary on its Lease (`egressgw status` shows it per member)
STATE_SYNC_ANNOTATION = "egressgw.io/state-sync"


class MemberLease(_Loop):
    """Create/renew `egressgw-member-<name>`. While `healthy()` is False the Lease is written once as expired
    (`member_lease_body(expired=True)`) and then not renewed; the next healthy step renews it.
    `annotations()`: more annotations written with each renewal (the state-sync summary)."""

    def __init__(self, api: KubeApi, me: MemberIdentity, *, namespace: str = DEFAULT_NAMESPACE, duration: int = 10,
                 renew_every: float = 3.0, healthy: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.time,
                 annotations: Callable[[], dict[str, str]] | None = None) -> None:
        super().__init__(f"member-lease-{me.name}", renew_every)
        self.api, self.me, self.namespace, self.duration = api, me, namespace, duration
        self._annotations = annotations
        self._healthy = healthy
        self._clock = clock
        #: the Lease currently says "expired" because we wrote it so (written once per unhealthy spell)
        self._marked_unhealthy = False

    @property
    def path(self) -> str:
        return LEASES.path(self.namespace, MEMBER_PREFIX + self.me.name)

    def step(self) -> None:
        if self._healthy is not None and not self._healthy():
            if not self._marked_unhealthy:
                self.renew_once(expired=True)
                self._marked_unhealthy = True
                log.info("lease.not_renewed", member=self.me.name, cause="unhealthy", marked_expired=True)
            return
        self.renew_once()
        self._marked_unhealthy = False

    def renew_once(self, *, expired: bool = False) -> None:
        body = member_lease_body(self.me, namespace=self.namespace, duration=self.duration, now=self._clock(),
                                 expired=expired)
        if self._annotations is not None:
            body["metadata"]["annotations"].update(self._annotations())
        try:
            self.api.merge_patch(self.path, {"metadata": {k: body["metadata"][k] for k in ("labels", "annotations")},
                                             "spec": body["spec"]}, timeout=LEASE_TIMEOUT)
        except ApiError as e:
            if e.status != 404:
                raise
            self.api.create(LEASES.path(self.namespace), body, timeout=LEASE_TIMEOUT)
            log.info("lease.created", member=self.me.name, namespace=self.namespace)

    def release(self) -> None:
        """Stop renewing and delete the lease (planned drain: the member is gone at once, not after expiry). A Lease
        carrying an operator's drain annotation (an appliance in maintenance) is written expired instead: deleting it
        would drop the annotation, and the restarted appliance would announce again."""
        self.stop()
        with contextlib.suppress(ApiError):
            if self._drain_annotated():
                self.renew_once(expired=True)
                log.info("lease.kept_for_maintenance", member=self.me.name)
                return
        with contextlib.suppress(ApiError):
            self.api.delete(self.path, timeout=LEASE_TIMEOUT)

    def _drain_annotated(self) -> bool:
        """Our Lease carries the drain annotation (False when it cannot be read: then it is deleted as before)."""
        try:
            current = self.api.get(self.path, timeout=LEASE_TIMEOUT)
        except ApiError:
            return False
        return DRAIN_ANNOTATION in ((current.get("metadata") or {}).get("annotations") or {})


class LeaderElection(_Loop):
    """Hold the `egressgw-status-writer` Lease. `is_leader()` is True while our last renewal is fresh."""

    def __init__(self, api: KubeApi, identity: str, *, namespace: str = DEFAULT_NAMESPACE, name: str = LEADER_LEASE,
                 duration: int = 10, retry_every: float = 2.0, clock: Callable[[], float] = time.time,
                 on_change: Callable[[bool], None] | None = None) -> None:
        super().__init__(f"leader-{identity}", retry_every)
        self.api, self.identity, self.namespace, self.name, self.duration = api, identity, namespace, name, duration
        self._clock = clock
        self._on_change = on_change
        self._held_until = 0.0
        self._was_leader = False

    def is_leader(self) -> bool:
        return self._clock() < self._held_until

    def step(self) -> None:
        self.try_acquire_or_renew()

    def try_acquire_or_renew(self) -> bool:
        now = self._clock()
        path = LEASES.path(self.namespace, self.name)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration, "renewTime": micro_time(now)}
        try:
            current = self.api.get(path, timeout=LEASE_TIMEOUT)
        except ApiError as e:
            if e.status != 404:
                raise
            current = None
        try:
            if current is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": {**spec, "acquireTime": micro_time(now), "leaseTransitions": 0}}
                self.api.create(LEASES.path(self.namespace), body, timeout=LEASE_TIMEOUT)
            else:
                cur = current.get("spec") or {}
                holder = cur.get("holderIdentity")
                expiry = lease_alive(current)
                if holder != self.identity and holder and expiry is not None and expiry > now:
                    self._set(False, 0.0)
                    return False
                if holder != self.identity:
                    spec["acquireTime"] = micro_time(now)
                    spec["leaseTransitions"] = int(cur.get("leaseTransitions") or 0) + 1
                current["spec"] = {**cur, **spec}
                # carries metadata.resourceVersion: 409 if someone else wrote
                self.api.replace(path, current, timeout=LEASE_TIMEOUT)
        except ApiError as e:
            if e.status in (409, 422) or (e.status == 409 and current is None):
                self._set(False, 0.0)
                return False
            raise
        self._set(True, now + self.duration * 0.8)
        return True

    def _set(self, leader: bool, until: float) -> None:
        self._held_until = until
        if leader != self._was_leader:
            self._was_leader = leader
            log.info("leader.acquired" if leader else "leader.lost", identity=self.identity,
                     lease=f"{self.namespace}/{self.name}")
            if self._on_change is not None:
                self._on_change(leader)

    def release(self) -> None:
        """Give up leadership at once (shutdown): let another member take over without waiting for expiry."""
        self.stop()
        if not self.is_leader():
            return
        with contextlib.suppress(ApiError):
            path = LEASES.path(self.namespace, self.name)
            current = self.api.get(path, timeout=LEASE_TIMEOUT)
            if (current.get("spec") or {}).get("holderIdentity") == self.identity:
                current["spec"]["holderIdentity"] = ""
                self.api.replace(path, current, timeout=LEASE_TIMEOUT)
        self._set(False, 0.0)
