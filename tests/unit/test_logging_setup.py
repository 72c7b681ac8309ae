"""Structured log lines: stable event names, bound context, JSON and key=value renderings, plain records."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.core.events import EventLogger, LogFormat, LogLevel, LogSettings, setup_logging
from bgp.settings import parse_bgp_settings
from bgp.speaker import BgpSpeaker
from bgp.speaking import PeerChanged, PeerState
from k8s_sync.parsing import parse_calico_pool


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_event_context_and_fields(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(LogSettings(format=LogFormat.JSON), stream=out)
    log = EventLogger("egressgw.gateway", node="gw1").bind(peer="198.51.100.1")
    log.info("eip.announced", eip=ipaddress.ip_address("203.0.113.130"), med=100, reasons=frozenset({"b", "a"}))
    doc = json.loads(out.getvalue())
    assert doc["event"] == "eip.announced" and doc["level"] == "info" and doc["logger"] == "egressgw.gateway"
    assert (doc["node"], doc["peer"], doc["eip"], doc["med"]) == ("gw1", "198.51.100.1", "203.0.113.130", 100)
    assert doc["reasons"] == ["a", "b"]
    assert doc["ts"].endswith("Z")


def test_kv_lines_quote_what_needs_quoting(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(LogSettings(format=LogFormat.KV), stream=out)
    EventLogger("egressgw.agent").warning("reconcile.pass", result="failed", failures=["route add: EPERM"], n=2)
    line = out.getvalue().strip()
    assert " event=reconcile.pass " in line and " level=warning " in line
    assert " result=failed " in line and " n=2" in line
    assert 'failures="[\\"route add: EPERM\\"]"' in line


def test_level_filter_and_plain_records(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(LogSettings(level=LogLevel.WARNING, format=LogFormat.JSON), stream=out)
    EventLogger("x").info("not.shown")
    logging.getLogger("bgp.speaker").warning("exabgp exited rc=%d", 1)
    (doc,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert doc["event"] == "log" and doc["msg"] == "exabgp exited rc=1" and doc["logger"] == "bgp.speaker"


def test_exception_becomes_error_field(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(LogSettings(format=LogFormat.JSON), stream=out)
    try:
        raise RuntimeError("netlink gone")
    except RuntimeError:
        EventLogger("x").exception("reconcile.pass_crashed")
    doc = json.loads(out.getvalue())
    assert doc["error"] == "RuntimeError: netlink gone"


def test_bgp_and_k8s_sync_lines_carry_their_event_and_fields(restore_root: None, tmp_path: Path) -> None:
    """bgp/ and k8s_sync/ log named events with typed fields, not printf text (`event=log`, `msg=...`)."""
    out = io.StringIO()
    setup_logging(LogSettings(format=LogFormat.JSON), stream=out)
    settings = parse_bgp_settings({"local_asn": 64513, "router_id": "198.51.100.11",
                                   "peers": [{"address": "198.51.100.1", "asn": 64512}]})  # fmt: skip
    speaker = BgpSpeaker(settings, tmp_path)
    try:
        speaker._report(PeerChanged(peer=ipaddress.ip_address("198.51.100.1"), state=PeerState.DOWN,
                                    reason="hold timer expired"))  # fmt: skip
    finally:
        speaker.stop()
    assert parse_calico_pool({"metadata": {"name": "pool-a"}, "spec": {"cidr": "10.0.0.0/33"}}) == ()
    bgp_doc, sync_doc = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (bgp_doc["event"], bgp_doc["logger"]) == ("bgp.peer_changed", "bgp.speaker")
    assert (bgp_doc["peer"], bgp_doc["state"], bgp_doc["reason"]) == ("198.51.100.1", "down", "hold timer expired")
    assert "msg" not in bgp_doc
    assert (sync_doc["event"], sync_doc["logger"], sync_doc["level"]) == ("store.parse_failed", "k8s_sync.parsing",
                                                                          "warning")
    assert (sync_doc["kind"], sync_doc["object"], sync_doc["cidr"]) == ("IPPool", "pool-a", "10.0.0.0/33")
    assert "msg" not in sync_doc
