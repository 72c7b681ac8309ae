"""The store: raw objects per kind from the reflectors, and one frozen, typed `Snapshot` built from them on demand.

- **Synced gate**: `synced()` is True only when every expected kind has delivered its first list. Nothing may be
  planned before that (an empty store must never mean "withdraw every EIP").
- **Typed once, at the edge**: nodes, pods and namespaces are parsed (`appliance.api.manifests`) when their reflector
  delivers them, so a snapshot of 10k pods only assembles already-parsed objects; per-kind sorted tuples are cached
  until that kind changes (kept in key order per event: no sort or Python loop over every pod). Of a pod the store
  keeps the typed object (its repeated strings interned, `parsing.compact_pod`) and its resourceVersion, not the
  raw dict (memory at 100k pods). The egressgw objects are validated together
  (`appliance.api.validation.validate_all`), with `accepted=` the policies accepted before, so an edit of an
  immutable field is refused and the old version kept.
- **Snapshots** are cached by revision (a counter bumped on every change) and rebuilt only when something changed
  or a member lease expired since (liveness is a function of time, not only of events).
- **Notifications**: every change calls the subscribers with a reason (`"Pod/MODIFIED"`); callers coalesce.
- **Remote strays** (agent role, key `RemotePod`): a cluster-wide pod watch whose objects are kept only when the pod
  has an IP outside the detected cluster-internal ranges (`appliance.policy.cluster_cidrs.stray_ips`); every other
  event is dropped at ingest with no revision bump and no notification, so memory is bounded by the strays and a
  covered pod elsewhere causes no pass. When the detected ranges change, kept pods now covered are dropped, and
  when they shrink (something covered before no longer is) the `RemotePod` watch is asked to relist
  (`on_relist_needed`): pods dropped earlier may be strays now.

Implements `appliance.core.snapshot.SnapshotSource` and `k8s_sync.reflector.ReflectorSink`.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from appliance.api.validation import policy_object_ref, validate_all
from appliance.core.events import EventLogger, error_text
from appliance.core.intent import Intent
from appliance.core.model import Appliance, EgressClusterInfo, EgressPolicy, IPNetwork
from appliance.core.snapshot import ObjectRef, Snapshot
from appliance.policy.cluster_cidrs import DetectedRanges, detected_ranges, stray_ips
from k8s_sync.kubeapi import JSON
from k8s_sync.leases import lease_alive, member_name_of_lease
from k8s_sync.parsing import parse_appliance, parse_calico_pool, parse_namespace_obj, parse_node_obj, parse_pod_obj
from k8s_sync.status_planning import intent_from_status

log = EventLogger(logging.getLogger(__name__))

EGRESS_KINDS = ("EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo")
#: the agent's cluster-wide pod watch, of which only the pods with a stray IP are kept (`Snapshot.remote_strays`)
REMOTE_PODS = "RemotePod"
TYPED_KINDS = ("Node", "Pod", "Namespace", REMOTE_PODS)
#: the kinds the detected cluster-internal ranges are computed from
DETECTION_KINDS = ("Node", "EgressClusterInfo", "IPPool", "ServiceCIDR")
Key = tuple[str, str]  # (namespace, name)
#: the cluster info of a cluster without an EgressClusterInfo object: one shared instance, so the caches keyed by the
#: identity of a snapshot's inputs (`cluster_cidrs.detected_ranges`) still hit when only pods changed
NO_CLUSTER_INFO = EgressClusterInfo()


def _key(obj: JSON) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _stub(key: Key, rv: str, pod: Any) -> JSON:
    """The raw object a tool reads of a stubbed kind (`raw_objects`, `get_raw`): key, resourceVersion and
    `status.podIP`, made on demand from what the store keeps (the typed pod and the resourceVersion)."""
    meta = {"name": key[1], "resourceVersion": rv} | ({"namespace": key[0]} if key[0] else {})
    stub: JSON = {"metadata": meta}
    if pod is not None and pod.ips:
        stub["status"] = {"podIP": str(pod.ips[0])}
    return stub


#: kinds of which the store keeps no raw object, only its resourceVersion (memory: at 100k pods the raw dicts were
#: the largest item; the typed object holds everything the planners read); `raw_objects`/`get_raw` return `_stub`s
STUBBED_KINDS = frozenset({"Pod", REMOTE_PODS})


def _same_ips(a: Any, b: Any) -> bool:
    return a is not None and b is not None and (a.ips, a.host_network) == (b.ips, b.host_network)


def _rv(obj: JSON | str) -> str:
    if isinstance(obj, str):  # a stubbed kind's entry is its resourceVersion
        return obj
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Store:
    """Thread-safe: reflector threads write, reconcile loops read snapshots."""

    def __init__(self, expected: Iterable[str], *, clock: Callable[[], float] = time.time,
                 service_cidrs: tuple[IPNetwork, ...] = ()) -> None:
        self._expected = frozenset(expected)
        self._clock = clock
        self._lock = threading.RLock()
        #: kind -> key -> raw object (for STUBBED_KINDS: its resourceVersion)
        self._raw: dict[str, dict[Key, Any]] = {k: {} for k in self._expected}
        self._typed: dict[str, dict[Key, Any]] = {k: {} for k in TYPED_KINDS}
        self._sorted: dict[str, tuple[Any, ...]] = {}
        #: keys of each typed kind in sorted order, and the typed objects in the same order, maintained
        #: incrementally: a pod event costs a bisect and a C-speed tuple copy, no Python loop over every pod
        self._order: dict[str, list[Key]] = {k: [] for k in TYPED_KINDS}
        self._values: dict[str, list[Any]] = {k: [] for k in TYPED_KINDS}
        self._listed: set[str] = set()
        self._revision = 0
        self._kind_revision: dict[str, int] = {}
        self._subscribers: list[Callable[[str], None]] = []
        self._service_cidrs = service_cidrs
        self._accepted: dict[ObjectRef, EgressPolicy] = {}
        self._validated: tuple[int, Any] | None = None
        self._cached: Snapshot | None = None
        #: kind -> when its watch last failed, while it is failing (cleared by the next list or event)
        self._disconnected_at: dict[str, float] = {}
        #: (watch failed, watch back) of the last Lease watch outage: leases not renewed since it ended get the
        #: blind time added, so their holders keep the rest of their lease to renew after the API server returns
        self._lease_blind: tuple[float, float] | None = None
        #: since when the view has been incomplete, for `view_age` before the first full list
        self._created = clock()
        #: the detected ranges the kept remote pods were filtered with, and (revisions of DETECTION_KINDS, ranges)
        self._remote_filter: DetectedRanges | None = None
        self._detection: tuple[tuple[int, ...], DetectedRanges] | None = None
        self._pools: tuple[int, tuple[IPNetwork, ...]] | None = None
        self._relist_callbacks: list[Callable[[str], None]] = []
        #: remote pod events seen and kept (for the benchmark and logs)
        self.remote_stats = {"events": 0, "kept": 0, "relists": 0}

    # ----- ReflectorSink -----

    def replace(self, key: str, objects: list[JSON], resource_version: str) -> None:
        relist = False
        with self._lock:
            self._reconnected(key)
            if key == REMOTE_PODS:
                found = self._detected()
                objects = [o for o in objects if self._remote_stray(found, o)]
                self._remote_filter = found
            fresh = {_key(o): o for o in objects}
            old = self._raw.setdefault(key, {})
            changed = fresh.keys() != old.keys() or any(_rv(o) != _rv(old[k]) for k, o in fresh.items())
            self._raw[key] = fresh
            if key in TYPED_KINDS:
                typed = self._typed[key]
                kept = {k: v for k, v in typed.items() if k in fresh and _rv(fresh[k]) == v[0]}
                for k, o in fresh.items():
                    if k not in kept:
                        kept[k] = (_rv(o), self._parse(key, o))
                self._typed[key] = kept
                self._reorder(key)
                if key in STUBBED_KINDS:
                    self._raw[key] = {k: _rv(o) for k, o in fresh.items()}
            first = key not in self._listed
            self._listed.add(key)
            if changed or first:
                self._bump(key)
                relist = key in DETECTION_KINDS and self._recheck_remote()
        if changed or first:
            self._notify(f"{key}/LISTED")
        if relist:
            self._request_relist()

    def apply(self, key: str, event_type: str, obj: JSON) -> None:
        k = _key(obj)
        with self._lock:
            if key == REMOTE_PODS and event_type != "DELETED":
                self.remote_stats["events"] += 1
                found = self._detected()
                if self._remote_filter is None:
                    self._remote_filter = found
                if not self._remote_stray(found, obj):
                    event_type = "DELETED"  # covered: forget it if it was a stray, else nothing happened
            raw = self._raw.setdefault(key, {})
            if event_type == "DELETED":
                if raw.pop(k, None) is None:
                    return
                if key in TYPED_KINDS:
                    self._typed[key].pop(k, None)
                    order = self._order[key]
                    i = bisect.bisect_left(order, k)
                    if i < len(order) and order[i] == k:
                        order.pop(i)
                        self._values[key].pop(i)
            else:
                old = raw.get(k)
                if old is not None and _rv(old) == _rv(obj):
                    return
                raw[k] = _rv(obj) if key in STUBBED_KINDS else obj
                if key in TYPED_KINDS:
                    parsed = self._parse(key, obj)
                    before = self._typed[key].get(k)
                    self._typed[key][k] = (_rv(obj), parsed)
                    order = self._order[key]
                    i = bisect.bisect_left(order, k)
                    if i < len(order) and order[i] == k:
                        self._values[key][i] = parsed
                    else:
                        order.insert(i, k)
                        self._values[key].insert(i, parsed)
                    if old is not None and key == REMOTE_PODS and before is not None and _same_ips(before[1], parsed):
                        return  # a remote stray changed in a way nobody reads (phase, status conditions)
            self._bump(key)
            relist = key in DETECTION_KINDS and self._recheck_remote()
        self._notify(f"{key}/{event_type}")
        if relist:
            self._request_relist()

    # ----- SnapshotSource -----

    def synced(self) -> bool:
        with self._lock:
            return self._expected <= self._listed

    def missing(self) -> frozenset[str]:
        """The kinds whose first list has not arrived yet (for logs and readiness)."""
        with self._lock:
            return self._expected - self._listed

    def view_age(self) -> float:
        """Seconds this view has possibly been out of date: 0 while every kind is listed and no watch is down; else
        the time since the first watch that is still down failed (or since the store was created, before the first
        full list). The gateway's stale-member step-back (`bgp.freshness`) compares it with its grace."""
        now = self._clock()
        with self._lock:
            if not self._expected <= self._listed:
                since = self._created
            elif self._disconnected_at:
                since = min(self._disconnected_at.values())
            else:
                return 0.0
        return max(0.0, now - since)

    def disconnected(self, key: str) -> None:
        """The reflector of `key` lost its watch. While member Leases cannot be watched, their liveness is judged
        at the moment the watch failed: an API server that is away must not make every member look dead (workers
        would fail closed and drop all selected traffic); renewals we cannot see are not expiries."""
        with self._lock:
            self._disconnected_at.setdefault(key, self._clock())

    def watching(self, key: str) -> None:
        """The reflector of `key` has its watch open again (it resumes from its resourceVersion, or relists)."""
        with self._lock:
            self._reconnected(key)

    def _reconnected(self, key: str) -> None:
        failed = self._disconnected_at.pop(key, None)
        if failed is not None and key == "Lease":
            self._lease_blind = (failed, self._clock())

    def _lease_expiry(self, obj: JSON) -> float | None:
        expiry = lease_alive(obj)
        if expiry is None or self._lease_blind is None:
            return expiry
        failed, back = self._lease_blind
        duration = (obj.get("spec") or {}).get("leaseDurationSeconds") or 0
        if expiry > failed and expiry - duration < back:  # alive when we went blind, not renewed since we see again
            return expiry + (back - failed)
        return expiry

    def _lease_clock(self, now: float) -> float:
        frozen = self._disconnected_at.get("Lease")
        return now if frozen is None else min(now, frozen)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def snapshot(self) -> Snapshot:
        """The current typed view. Callers must check `synced()` first; building one earlier is allowed (tools)."""
        with self._lock:
            now = self._lease_clock(self._clock())
            alive = self._alive_members(now)
            cached = self._cached
            if cached is not None and cached.revision == self._revision:
                if cached.alive_members == alive:
                    return cached
                self._cached = dataclasses.replace(cached, alive_members=alive, appliances=self._appliances(now))
                return self._cached
            snap = self._build(now, alive)
            self._cached = snap
            return snap

    # ----- other inputs -----

    def set_service_cidrs(self, cidrs: tuple[IPNetwork, ...]) -> None:
        with self._lock:
            if cidrs == self._service_cidrs:
                return
            self._service_cidrs = cidrs
            self._bump("ServiceCIDR")
            relist = self._recheck_remote()
        self._notify("ServiceCIDR/DETECTED")
        if relist:
            self._request_relist()

    def on_relist_needed(self, callback: Callable[[str], None]) -> None:
        """`callback(key)` when the reflector of `key` must list again (the `RemotePod` watch, after the detected
        ranges shrank: pods dropped at ingest may have stray IPs now)."""
        with self._lock:
            self._relist_callbacks.append(callback)

    def next_lease_expiry(self) -> float | None:
        """The earliest future time at which a member lease that is alive now expires (None: none alive)."""
        with self._lock:
            now = self._lease_clock(self._clock())
            times = [t for o in self._raw.get("Lease", {}).values()
                     if (t := self._lease_expiry(o)) is not None and t > now]
            return min(times) if times else None

    def written_intent(self) -> Intent:
        """The gateway and EIPs the status writer recorded on Ready policies: the `previous` every resolver should
        pass to `resolve` (shared state, so agents and gateways with different histories agree on `rr` EIPs)."""
        return intent_from_status(self.raw_objects("EgressPolicy") + self.raw_objects("EgressClusterPolicy"))

    def raw_objects(self, key: str) -> list[JSON]:
        with self._lock:
            if key in STUBBED_KINDS:
                typed = self._typed[key]
                return [_stub(k, rv, typed[k][1]) for k, rv in self._raw.get(key, {}).items()]
            return list(self._raw.get(key, {}).values())

    def typed_objects(self, key: str) -> list[Any]:
        """The parsed objects of a typed kind (Pod, Node, Namespace, RemotePod) in no particular order; cheap (no
        snapshot, no stubs): for tools and benchmarks polling for a state."""
        with self._lock:
            return [v[1] for v in self._typed.get(key, {}).values() if v[1] is not None]

    def typed_object(self, key: str, namespace: str, name: str) -> Any:
        """The parsed object of a typed kind by key (None when absent or unparsable)."""
        with self._lock:
            found = self._typed.get(key, {}).get((namespace, name))
            return None if found is None else found[1]

    def get_raw(self, key: str, namespace: str, name: str) -> JSON | None:
        with self._lock:
            found = self._raw.get(key, {}).get((namespace, name))
            if found is not None and key in STUBBED_KINDS:
                return _stub((namespace, name), found, self._typed[key][(namespace, name)][1])
            return found

    @property
    def revision(self) -> int:
        return self._revision

    def clock(self) -> float:
        return self._clock()

    def alive_now(self) -> frozenset[str] | None:
        """The member names whose lease is fresh now (cheap: no snapshot is built)."""
        with self._lock:
            return self._alive_members(self._lease_clock(self._clock()))

    def notify(self, reason: str) -> None:
        """Tell subscribers the snapshot may have changed for a reason no watch event carries (lease expiry)."""
        self._notify(reason)

    # ----- internals -----

    def _bump(self, key: str) -> None:
        self._revision += 1
        self._kind_revision[key] = self._revision
        self._sorted.pop(key, None)

    def _notify(self, reason: str) -> None:
        for cb in list(self._subscribers):
            try:
                cb(reason)
            except Exception:
                log.exception("store.subscriber_failed", reason=reason)

    # ----- remote strays -----

    def _detected(self) -> DetectedRanges:
        """The detected cluster-internal ranges of the current Node/EgressClusterInfo/IPPool/ServiceCIDR state,
        cached by those kinds' revisions."""
        revs = tuple(self._kind_revision.get(k, 0) for k in DETECTION_KINDS)
        if self._detection is not None and self._detection[0] == revs:
            return self._detection[1]
        view = Snapshot(nodes=self._typed_sorted("Node"), service_cidrs=self._service_cidrs,
                        cluster_info=self._validate().cluster_info or NO_CLUSTER_INFO,
                        calico_pools=self._calico_pools())
        found = detected_ranges(view)
        self._detection = (revs, found)
        return found

    def _remote_stray(self, found: DetectedRanges, obj: JSON) -> bool:
        pod = self._parse(REMOTE_PODS, obj)
        kept = pod is not None and bool(stray_ips(found, pod))
        self.remote_stats["kept"] += kept
        return kept

    def _recheck_remote(self) -> bool:
        """After a detection kind changed (under the lock): drop the kept remote pods now covered; True when the
        ranges shrank and the remote pod watch must relist."""
        old = self._remote_filter
        if old is None or REMOTE_PODS not in self._expected:
            return False
        found = self._detected()
        if found.same(old):
            return False
        self._remote_filter = found
        typed = self._typed[REMOTE_PODS]
        covered = [k for k, (_, pod) in typed.items() if pod is None or not stray_ips(found, pod)]
        for k in covered:
            del typed[k]
            self._raw[REMOTE_PODS].pop(k, None)
        if covered:
            self._reorder(REMOTE_PODS)
            self._bump(REMOTE_PODS)
        return not old.within(found)

    def _request_relist(self) -> None:
        self.remote_stats["relists"] += 1
        log.info("store.remote_pods_relist", cause="detected_ranges_shrank")
        for cb in list(self._relist_callbacks):
            try:
                cb(REMOTE_PODS)
            except Exception:
                log.exception("store.relist_callback_failed", key=REMOTE_PODS)

    def _calico_pools(self) -> tuple[IPNetwork, ...]:
        rev = self._kind_revision.get("IPPool", 0)
        if self._pools is None or self._pools[0] != rev:
            pools: list[IPNetwork] = []
            for obj in self._raw.get("IPPool", {}).values():
                pools.extend(parse_calico_pool(obj))
            self._pools = (rev, tuple(sorted(set(pools), key=lambda n: (n.version, n))))
        return self._pools[1]

    @staticmethod
    def _parse(key: str, obj: JSON) -> Any:
        try:
            if key in ("Pod", REMOTE_PODS):
                return parse_pod_obj(obj)
            if key == "Node":
                return parse_node_obj(obj)
            return parse_namespace_obj(obj)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("store.parse_failed", kind=key, object="/".join(_key(obj)), error=error_text(e))
            return None

    def _reorder(self, key: str) -> None:
        typed = self._typed[key]
        self._order[key] = sorted(typed)
        self._values[key] = [typed[k][1] for k in self._order[key]]

    def _typed_sorted(self, key: str) -> tuple[Any, ...]:
        cached = self._sorted.get(key)
        if cached is None:
            cached = tuple(filter(None, self._values[key]))  # None: a parse failure (typed objects are truthy)
            self._sorted[key] = cached
        return cached

    def _alive_members(self, now: float) -> frozenset[str] | None:
        if "Lease" not in self._expected:
            return None
        alive = set()
        for obj in self._raw.get("Lease", {}).values():
            name = member_name_of_lease(obj)
            expiry = self._lease_expiry(obj)
            if name and expiry is not None and expiry > now:
                alive.add(name)
        return frozenset(alive)

    def _appliances(self, now: float) -> tuple[Appliance, ...]:
        out = [a for o in self._raw.get("Lease", {}).values() if (a := parse_appliance(o, now)) is not None]
        return tuple(sorted(out, key=lambda a: (a.gateway, a.name)))

    def _validate(self) -> Any:
        egress_rev = max((self._kind_revision.get(k, 0) for k in EGRESS_KINDS), default=0)
        if self._validated is not None and self._validated[0] == egress_rev:
            return self._validated[1]
        objects: list[JSON] = []
        for kind in EGRESS_KINDS:
            objects.extend(o for _, o in sorted(self._raw.get(kind, {}).items()))
        result = validate_all(objects, accepted=self._accepted, gateways_complete=True)  # the whole cluster
        self._accepted = {policy_object_ref(p): p for p in result.policies}
        self._validated = (egress_rev, result)
        return result

    def _build(self, now: float, alive: frozenset[str] | None) -> Snapshot:
        result = self._validate()
        return Snapshot(
            gateways=tuple(result.gateways),
            policies=tuple(result.policies),
            problems=tuple(result.problems),
            cluster_info=result.cluster_info or NO_CLUSTER_INFO,
            namespaces=self._typed_sorted("Namespace"),
            nodes=self._typed_sorted("Node"),
            pods=self._typed_sorted("Pod"),
            remote_strays=self._typed_sorted(REMOTE_PODS),
            appliances=self._appliances(now),
            service_cidrs=self._service_cidrs,
            calico_pools=self._calico_pools(),
            alive_members=alive,
            revision=self._revision,
        )

