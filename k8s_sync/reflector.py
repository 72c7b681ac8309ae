"""A reflector per kind: list, then watch from the list's resourceVersion; relist on 410; reconnect with backoff.

This is client-go's reflector, in a thread (the official client is blocking):

1. **List** (paginated, `limit` + `continue`) and hand the whole set to the sink (`replace`): objects that vanished
   while we were away are dropped there, not guessed at.
2. **Watch** from the list's resourceVersion with `allowWatchBookmarks` and a randomised `timeoutSeconds` (so the
   watch renews itself and a silently dead connection is noticed); each ADDED/MODIFIED/DELETED goes to the sink
   (`apply`) in the order the server sent it; bookmarks only move our resourceVersion forward.
3. **410 Gone** (an HTTP 410, or an ERROR event with code 410 - our resourceVersion is older than the server's
   watch window, e.g. after an apiserver restart): relist (`watch.relisted`).
4. **Errors the API server answers (5xx, 429, ...)**: keep the last good state (the sink is never cleared), wait an
   exponential backoff with jitter, and watch again from the last resourceVersion (`watch.reconnecting`).
5. **Network-level failures** (refused, reset, timed out, a connection cut short): same, but retried after a short
   bounded interval (`network_retry_s`, with jitter) instead of the back-off: the server did not say it is
   overloaded, the network was away, and a member must learn within ~2 s of the API server becoming reachable again.
   Each attempt is cheap (one TCP connect with a 2 s timeout, `k8s_sync.kubeapi`).
6. **A watch must not sit on a dead connection**: the client sockets have short TCP keepalive (a silent partition
   breaks the watch within seconds), and when any call of the same client gets an answer again after a network
   failure (`KubeApi.connectivity` recovers: a lease renewal, another reflector), every watch that has delivered
   nothing since the failures began is restarted at once from its resourceVersion (`watch.restarted`) instead of
   waiting for the server's TCP retransmissions.

Server-side filtering is expressed by `WatchSpec.label_selector` / `field_selector`; `WatchSpec.trim` drops fields
nobody reads before objects are stored (pods: only metadata, nodeName, hostNetwork, IPs, phase).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.core.backoff import Backoff, BackoffPolicy
from appliance.core.events import EventLogger, error_text
from k8s_sync.kubeapi import JSON, ApiError, KubeApi, Resource, is_network_error, iter_json_lines

log = EventLogger(logging.getLogger(__name__))


class ReflectorSink(Protocol):
    """Where a reflector delivers what it sees (the store, or a recorder in tests)."""

    def replace(self, key: str, objects: list[JSON], resource_version: str) -> None:
        """The complete current set of objects (after a list or relist)."""
        ...

    def apply(self, key: str, event_type: str, obj: JSON) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchSpec:
    """What one reflector lists and watches. `key` names it in the store (usually the kind)."""

    key: str
    resource: Resource
    #: restrict to one namespace (None = all namespaces, or cluster-scoped)
    namespace: str | None = None
    label_selector: str = ""
    field_selector: str = ""
    #: drop unused fields before storing (memory); must keep metadata.name/namespace/resourceVersion
    trim: Callable[[JSON], JSON] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReflectorSettings:
    #: server-side watch timeout: a random value in [t, 2t) so watches of many clients do not renew together
    watch_timeout_seconds: int = 300
    #: page size of lists: bounded memory per request for 10k pods, still few round trips
    page_size: int = 500
    backoff_initial: float = 0.2
    #: the API server may be away for minutes (upgrade); do not hammer it, but come back within half a minute
    backoff_max: float = 30.0
    #: seconds without any byte on a watch (bookmarks come about every minute) before the connection is presumed dead
    #: (a silently dead connection is noticed much earlier by TCP keepalive, `k8s_sync.kubeapi.KEEPALIVE`)
    read_timeout_slack: float = 30.0
    #: retry interval after a network-level failure (jitter: uniform in [r/2, r]); bounded and short on purpose:
    #: with the 2 s connect timeout a member notices the API server's return within ~2.5 s
    network_retry_s: float = 0.5


class Gone(Exception):
    """Our resourceVersion is too old: relist."""


def reconnect_backoff(settings: ReflectorSettings) -> BackoffPolicy:
    """The reconnect back-off of `settings`: doubling, jitter 0.5 (uniform in [delay/2, delay]) so that the
    reflectors of many clients that lost the API server together do not come back in lock-step."""
    return BackoffPolicy(initial=settings.backoff_initial, maximum=settings.backoff_max, jitter=0.5)


class Reflector:
    """Keeps `sink` in step with one kind. `start()` runs it in a daemon thread; `stop()` ends it promptly."""

    def __init__(self, api: KubeApi, spec: WatchSpec, sink: ReflectorSink, *,
                 settings: ReflectorSettings | None = None, rng: random.Random | None = None,
                 resource_version: str = "") -> None:
        """`resource_version`: resume watching from there instead of listing first (state kept across a restart)."""
        self.api = api
        self.spec = spec
        self.sink = sink
        self.settings = settings or ReflectorSettings()
        self._rng = rng or random.Random()
        self._backoff = Backoff(reconnect_backoff(self.settings), self._rng)
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._lock = threading.Lock()
        #: monotonic time of the last event (or the watch's opening) on the current stream
        self._last_event = 0.0
        #: set when the stream was shut down on purpose (connectivity came back): reconnect at once, no pause
        self._restart = False
        #: set by `relist()`: list again before the next watch
        self._relist = False
        self._connectivity = getattr(api, "connectivity", None)
        self.resource_version = resource_version
        self.stats: dict[str, int] = {"lists": 0, "watches": 0, "events": 0, "relists": 0, "errors": 0,
                                      "restarts": 0}

    @property
    def has_synced(self) -> bool:
        """True once the first list has been handed to the sink."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def start(self) -> None:
        if self._connectivity is not None:
            self._connectivity.on_recovered(self.connectivity_recovered)
        self._thread = threading.Thread(target=self.run, name=f"reflector-{self.spec.key}", daemon=True)
        self._thread.start()

    def connectivity_recovered(self, since: float) -> None:
        """The client reached the API server again after network failures that began at `since` (monotonic): a
        watch that delivered nothing since then may sit on a dead connection - restart it now (thread-safe)."""
        with self._lock:
            stream = self._stream
            if stream is None or self._last_event >= since:
                return
            self._restart = True
        with contextlib.suppress(Exception):
            stream.shutdown()

    def relist(self) -> None:
        """List again, now (thread-safe): the sink needs the whole current set (it filtered objects away at ingest
        under rules that changed since). The open watch is shut down; the next iteration lists."""
        with self._lock:
            self._relist = True
            stream = self._stream
            if stream is not None:
                self._restart = True
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.shutdown()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._connectivity is not None:
            self._connectivity.remove_callback(self.connectivity_recovered)
        with self._lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):  # already closed: nothing to unblock
                stream.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ----- the loop -----

    def run(self) -> None:
        rv = self.resource_version
        while not self._stop.is_set():
            with self._lock:
                if self._relist:
                    self._relist, rv = False, ""
            try:
                if not rv:
                    rv = self._list()
                rv = self._watch(rv)
                self._backoff.reset()
            except Gone:
                self.stats["relists"] += 1
                log.info("watch.relisted", kind=self.spec.key, resource_version=rv)
                rv = ""
            except ApiError as e:
                if e.status == 410:
                    self.stats["relists"] += 1
                    log.info("watch.relisted", kind=self.spec.key, resource_version=rv)
                    rv = ""
                    continue
                if is_network_error(e):  # status 0: no answer (TLS failure, cut short)
                    self._pause("network_error", e, delay=self._network_delay())
                else:
                    self._pause("api_error", e)
            except Exception as e:  # connection refused/reset, protocol errors, bad JSON: keep state, retry
                if self._stop.is_set():
                    break
                with self._lock:
                    restart, self._restart = self._restart, False
                if restart:
                    self.stats["restarts"] += 1
                    log.info("watch.restarted", kind=self.spec.key, cause="connectivity_recovered",
                             resource_version=rv)
                    continue
                if is_network_error(e):
                    if self._connectivity is not None:
                        self._connectivity.failed(e)
                    self._pause("network_error", e, delay=self._network_delay())
                else:
                    self._pause("connection_error", e)

    def _network_delay(self) -> float:
        r = self.settings.network_retry_s
        return self._rng.uniform(r / 2, r)

    def _pause(self, what: str, error: BaseException, *, delay: float | None = None) -> None:
        self.stats["errors"] += 1
        disconnected = getattr(self.sink, "disconnected", None)
        if disconnected is not None:  # optional sink hook: the store freezes lease liveness while blind
            disconnected(self.spec.key)
        if delay is None:
            delay = self._backoff.next()
        log.warning("watch.reconnecting", kind=self.spec.key, cause=what, error=error_text(error),
                    delay_s=round(delay, 3))
        self._stop.wait(delay)

    def _query(self) -> dict[str, Any]:
        return {"labelSelector": self.spec.label_selector, "fieldSelector": self.spec.field_selector}

    def _list(self) -> str:
        spec = self.spec
        path = spec.resource.path(spec.namespace)
        items: list[JSON] = []
        token = ""
        while True:
            query = {**self._query(), "limit": self.settings.page_size, "continue": token}
            try:
                page = self.api.get(path, query)
            except ApiError as e:
                if e.status == 410 and token:  # the continue token expired: start the list again
                    items, token = [], ""
                    continue
                raise
            trim = spec.trim
            for obj in page.get("items") or []:
                items.append(trim(obj) if trim else obj)
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                rv = str(meta.get("resourceVersion") or "")
                break
        self.sink.replace(spec.key, items, rv)
        self.stats["lists"] += 1
        self.resource_version = rv
        first = not self._synced.is_set()
        self._synced.set()
        log.info("watch.listed", kind=spec.key, objects=len(items), resource_version=rv, first=first)
        return rv

    def _watch(self, rv: str) -> str:
        spec = self.spec
        timeout = self.settings.watch_timeout_seconds
        timeout = int(timeout + self._rng.uniform(0, timeout))
        query = {**self._query(), "watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true",
                 "timeoutSeconds": timeout}
        stream = self.api.open_stream(spec.resource.path(spec.namespace), query,
                                      read_timeout=timeout + self.settings.read_timeout_slack)
        watching = getattr(self.sink, "watching", None)
        if watching is not None:  # optional sink hook: the watch is back, the store's view is current again
            watching(spec.key)
        with self._lock:
            self._stream = stream
            self._last_event = time.monotonic()
            self._restart = False
        self.stats["watches"] += 1
        read_to_end = False
        try:
            if self._stop.is_set():
                return rv
            for event in iter_json_lines(stream):
                self._last_event = time.monotonic()
                rv = self._handle(event, rv)
                if self._stop.is_set():
                    break
            else:
                read_to_end = True
        finally:
            with self._lock:
                self._stream = None
                # shut down on purpose, a stream may still end "normally": its connection is not reusable either
                read_to_end = read_to_end and not self._restart
            if not read_to_end:
                # A watch cut short (error, stop, shut down) still has a response attached to its connection: handed
                # back to the shared pool as is, the next request on it (a lease renewal, a status patch) would fail
                # with ResponseNotReady. Close the connection; the pool opens a new one.
                stream.close()
            stream.release_conn()
        return rv

    def _handle(self, event: JSON, rv: str) -> str:
        etype = event.get("type")
        obj = event.get("object") or {}
        if etype == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise Gone(obj.get("message", ""))
            raise ApiError(code, str(obj.get("reason") or "WatchError"), obj)
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if etype == "BOOKMARK":
            self.resource_version = new_rv
            return new_rv
        if etype in ("ADDED", "MODIFIED", "DELETED"):
            trim = self.spec.trim
            self.sink.apply(self.spec.key, etype, trim(obj) if trim else obj)
            self.stats["events"] += 1
            self.resource_version = new_rv
            return new_rv
        log.warning("watch.unknown_event", kind=self.spec.key, type=etype)
        return rv


def trim_pod(obj: JSON) -> JSON:
    """Keep only what the planners read from a Pod (memory: a full pod is ~5-10 kB of JSON, this is ~0.5 kB)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": obj.get("kind", "Pod"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "labels",
                                          "deletionTimestamp") if k in meta},
        "spec": {k: spec[k] for k in ("nodeName", "hostNetwork") if k in spec},
        "status": {k: status[k] for k in ("phase", "podIP", "podIPs") if k in status},
    }


def trim_pod_ips(obj: JSON) -> JSON:
    """Keep only what decides whether a pod is a stray (the agent's cluster-wide pod watch): its key, uid and
    resourceVersion, hostNetwork, phase and IPs (~250 bytes kept of a pod's several kB)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta},
        "spec": {"hostNetwork": True} if spec.get("hostNetwork") else {},
        "status": {k: status[k] for k in ("phase", "podIP", "podIPs") if k in status},
    }


def trim_metadata_only(keep_spec: tuple[str, ...] = (), keep_status: tuple[str, ...] = ()) -> Callable[[JSON], JSON]:
    """A trimmer that keeps metadata (minus managedFields) and the named spec/status fields."""

    def trim(obj: JSON) -> JSON:
        meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
        out: JSON = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta}
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if keep_spec:
            out["spec"] = {k: spec[k] for k in keep_spec if k in spec}
        if keep_status:
            out["status"] = {k: status[k] for k in keep_status if k in status}
        return out

    return trim
