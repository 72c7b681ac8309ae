"""The reflector loop against a scripted fake API: paginated list, ordered events, bookmarks, relist on 410 (HTTP and
ERROR event), backoff on errors the server answers and a short retry on network failures, with the last good state
kept; a watch restarted when the client's connectivity comes back; Backoff's bounds."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.core.backoff import Backoff
from appliance.core.waiting import wait_until
from k8s_sync.kubeapi import ApiError, Connectivity
from k8s_sync.reflector import Reflector, ReflectorSettings, WatchSpec, reconnect_backoff, trim_pod
from k8s_sync.resources import RESOURCES
from k8s_sync.store import Store

FAST = ReflectorSettings(backoff_initial=0.001, backoff_max=0.002, network_retry_s=0.002)


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "resourceVersion": rv}}


class FakeStream:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.lines = [json.dumps(e).encode() + b"\n" for e in events]
        self.closed = self.released = False

    def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
        # split lines across chunks to exercise the line reassembly
        data = b"".join(self.lines)
        for i in range(0, len(data), 7):
            yield data[i:i + 7]

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.released = True

    def shutdown(self) -> None:
        pass


class FakeApi:
    """Scripted answers: `lists` and `watches` are consumed in order; an Exception entry is raised."""

    def __init__(self, lists: list[Any], watches: list[Any], done: threading.Event) -> None:
        self.lists, self.watches, self.done = lists, watches, done
        self.list_queries: list[dict[str, Any]] = []
        self.watch_queries: list[dict[str, Any]] = []
        self.streams: list[FakeStream] = []

    def get(self, path: str, query: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        self.list_queries.append(dict(query or {}))
        item = self.lists.pop(0)
        if isinstance(item, Exception):
            raise item
        result: dict[str, Any] = item
        return result

    def open_stream(self, path: str, query: dict[str, Any], read_timeout: float) -> FakeStream:
        self.watch_queries.append(dict(query))
        if not self.watches:
            self.done.set()
            raise ConnectionError("script finished")
        item = self.watches.pop(0)
        if isinstance(item, Exception):
            raise item
        stream = FakeStream(item)
        self.streams.append(stream)
        return stream


def run_script(lists: list[Any], watches: list[Any]) -> tuple[Store, Reflector, FakeApi]:
    done = threading.Event()
    api = FakeApi(lists, watches, done)
    store = Store(["Namespace"])
    r = Reflector(api, WatchSpec(key="Namespace", resource=RESOURCES["Namespace"]), store,  # type: ignore[arg-type]
                  settings=FAST, rng=random.Random(1))
    r.start()
    assert done.wait(5)
    r.stop()
    return store, r, api


def names(store: Store) -> list[str]:
    return sorted(o["metadata"]["name"] for o in store.raw_objects("Namespace"))


def test_paginated_list_then_ordered_watch_with_bookmarks() -> None:
    lists = [{"items": [obj("a", "1")], "metadata": {"continue": "tok"}},
             {"items": [obj("b", "2")], "metadata": {"resourceVersion": "10"}}]
    watches = [[{"type": "ADDED", "object": obj("c", "11")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
                {"type": "DELETED", "object": obj("a", "16")}],
               [{"type": "MODIFIED", "object": obj("b", "17")}]]
    store, r, api = run_script(lists, watches)
    assert names(store) == ["b", "c"]
    assert api.list_queries[1]["continue"] == "tok"
    rvs = [q["resourceVersion"] for q in api.watch_queries]
    assert rvs[:2] == ["10", "16"] and rvs[2] == "17"  # each watch resumes where the last one ended
    assert all(q["allowWatchBookmarks"] == "true" and q["timeoutSeconds"] >= 300 for q in api.watch_queries)
    assert r.stats["lists"] == 1 and r.stats["events"] == 3


def test_relist_on_http_410_and_on_error_event_410() -> None:
    lists = [{"items": [obj("a", "1")], "metadata": {"resourceVersion": "5"}},
             {"items": [obj("b", "9")], "metadata": {"resourceVersion": "9"}},
             {"items": [obj("c", "12")], "metadata": {"resourceVersion": "12"}}]
    watches = [ApiError(410, "Gone"),
               [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}]]
    store, r, api = run_script(lists, watches)
    assert names(store) == ["c"]  # each relist replaced the set: a and b are gone
    assert r.stats["relists"] == 2 and r.stats["lists"] == 3
    # the watch cut short by the 410 event still had a response on its connection: closed, not handed back as is
    assert [(s.closed, s.released) for s in api.streams] == [(True, True)]


def test_a_watch_read_to_its_end_hands_its_connection_back_open() -> None:
    lists = [{"items": [obj("a", "1")], "metadata": {"resourceVersion": "5"}}]
    store, _, api = run_script(lists, [[{"type": "ADDED", "object": obj("b", "6")}]])
    assert names(store) == ["a", "b"]
    assert [(s.closed, s.released) for s in api.streams] == [(False, True)]


def test_connection_errors_keep_state_and_resume_from_the_last_version() -> None:
    lists = [{"items": [obj("a", "1")], "metadata": {"resourceVersion": "5"}}]
    watches = [ConnectionResetError("reset"), ApiError(503, "Service Unavailable"),
               [{"type": "ADDED", "object": obj("b", "6")}]]
    store, r, api = run_script(lists, watches)
    assert names(store) == ["a", "b"]
    assert [q["resourceVersion"] for q in api.watch_queries][:3] == ["5", "5", "5"]
    assert r.stats["lists"] == 1 and r.stats["errors"] >= 2


def test_list_failure_is_retried_before_the_first_sync() -> None:
    lists = [ConnectionRefusedError("down"), {"items": [], "metadata": {"resourceVersion": "3"}}]
    store, r, _ = run_script(lists, [[]])
    assert store.synced() and r.has_synced and r.stats["errors"] >= 1


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(reconnect_backoff(ReflectorSettings(backoff_initial=0.2, backoff_max=5.0)), random.Random(7))
    delays = [b.next() for _ in range(10)]
    assert 0.1 <= delays[0] <= 0.2
    assert all(d <= 5.0 for d in delays) and delays[-1] >= 2.5
    b.reset()
    assert b.next() <= 0.2


def test_trim_pod_keeps_what_planners_read() -> None:
    full = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "labels": {"a": "b"}, "resourceVersion": "3",
                         "managedFields": [{"x": 1}], "annotations": {"big": "x" * 1000}},
            "spec": {"nodeName": "w1", "containers": [{"name": "c"}], "hostNetwork": False},
            "status": {"podIP": "100.64.1.1", "podIPs": [{"ip": "100.64.1.1"}], "phase": "Running",
                       "conditions": [{"type": "Ready"}]}}
    t = trim_pod(full)
    assert t["metadata"] == {"name": "p", "namespace": "n", "labels": {"a": "b"}, "resourceVersion": "3"}
    assert t["spec"] == {"nodeName": "w1", "hostNetwork": False}
    assert set(t["status"]) == {"podIP", "podIPs", "phase"}


def reconnect_events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, float]]:
    return [(r.egressgw_fields["cause"], r.egressgw_fields["delay_s"])  # type: ignore[attr-defined]
            for r in caplog.records if getattr(r, "egressgw_event", "") == "watch.reconnecting"]


def test_network_failures_retry_on_a_short_interval_server_errors_back_off(caplog: pytest.LogCaptureFixture) -> None:
    settings = ReflectorSettings(backoff_initial=0.2, backoff_max=0.2, network_retry_s=0.01)
    lists = [{"items": [obj("a", "1")], "metadata": {"resourceVersion": "5"}}]
    watches: list[Any] = [ConnectionRefusedError("refused"), TimeoutError("connect timed out"),
                          ApiError(0, "SSLError"), ApiError(503, "Service Unavailable"),
                          ConnectionResetError("reset"), [{"type": "ADDED", "object": obj("b", "6")}]]
    done = threading.Event()
    api = FakeApi(lists, watches, done)
    store = Store(["Namespace"])
    r = Reflector(api, WatchSpec(key="Namespace", resource=RESOURCES["Namespace"]), store,  # type: ignore[arg-type]
                  settings=settings, rng=random.Random(3))
    with caplog.at_level(logging.INFO):
        r.start()
        assert done.wait(10)
        r.stop()
    events = reconnect_events(caplog)
    assert [cause for cause, _ in events][:5] == ["network_error"] * 3 + ["api_error", "network_error"]
    # the network failures wait within [r/2, r]; the 503 waits the back-off (>= initial/2), never the short retry
    assert all(0.005 <= d <= 0.01 for c, d in events if c == "network_error")
    assert [d >= 0.1 for c, d in events if c == "api_error"] == [True]
    assert names(store) == ["a", "b"] and r.stats["lists"] == 1


class BlockingStream(FakeStream):
    """A watch that delivers nothing until it is shut down (a connection that died silently)."""

    def __init__(self) -> None:
        super().__init__([])
        self.down = threading.Event()
        self.shut = False

    def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
        self.down.wait(10)
        if self.shut:
            raise ConnectionResetError("shut down")
        yield from ()

    def shutdown(self) -> None:
        self.shut = True
        self.down.set()


class ConnectedApi(FakeApi):
    def __init__(self, lists: list[Any], watches: list[Any], done: threading.Event) -> None:
        super().__init__(lists, watches, done)
        self.connectivity = Connectivity()

    def open_stream(self, path: str, query: dict[str, Any], read_timeout: float) -> FakeStream:
        if self.watches and isinstance(self.watches[0], BlockingStream):
            self.watch_queries.append(dict(query))
            stream: FakeStream = self.watches.pop(0)
            self.streams.append(stream)
            return stream
        return super().open_stream(path, query, read_timeout)


def test_a_silent_watch_is_restarted_when_the_client_reaches_the_server_again() -> None:
    lists = [{"items": [obj("a", "1")], "metadata": {"resourceVersion": "5"}}]
    silent = BlockingStream()
    watches: list[Any] = [silent, [{"type": "ADDED", "object": obj("b", "6")}]]
    done = threading.Event()
    api = ConnectedApi(lists, watches, done)
    store = Store(["Namespace"])
    r = Reflector(api, WatchSpec(key="Namespace", resource=RESOURCES["Namespace"]), store,  # type: ignore[arg-type]
                  settings=FAST, rng=random.Random(1))
    r.start()
    try:
        wait_until(lambda: api.streams == [silent], timeout=5, what="the first watch to be open")
        # another call of the same client fails at the network level, then gets an answer: the silent watch has
        # delivered nothing since the failure began, so it is restarted at once from its resourceVersion
        api.connectivity.failed(ConnectionResetError("partition"))
        assert not api.connectivity.reachable
        api.connectivity.answered()
        assert done.wait(5)
    finally:
        r.stop()
    assert silent.shut and silent.closed  # shut down on purpose: closed, never handed back to the pool as is
    assert r.stats["restarts"] == 1 and r.stats["lists"] == 1
    assert [q["resourceVersion"] for q in api.watch_queries][:2] == ["5", "5"]
    assert names(store) == ["a", "b"]


def test_a_watch_that_delivered_since_the_failures_began_is_left_alone() -> None:
    conn = Connectivity(clock=lambda: 0.0)  # failures "began" at monotonic 0, before the watch's last event
    lists = [{"items": [], "metadata": {"resourceVersion": "5"}}]
    silent = BlockingStream()
    done = threading.Event()
    api = ConnectedApi(lists, [silent], done)
    api.connectivity = conn
    r = Reflector(api, WatchSpec(key="Namespace", resource=RESOURCES["Namespace"]), Store(["Namespace"]),  # type: ignore[arg-type]
                  settings=FAST, rng=random.Random(1))
    r.start()
    try:
        wait_until(lambda: api.streams == [silent], timeout=5, what="the watch to be open")
        conn.failed(ConnectionResetError("x"))
        conn.answered()
        assert not silent.shut and r.stats["restarts"] == 0
    finally:
        r.stop()
