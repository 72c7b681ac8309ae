"""WireGuard log lines are structured events like the rest of the services (`event=wireguard.skipped member=...`),
so operators can filter on the event names docs/wireguard.md lists; no private key ever appears in them."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.core.events import KeyValueFormatter
from appliance.datapath.apply.wireguard_keyfiles import CURRENT_KEY_FILE, read_key_file
from appliance.datapath.apply.wireguard_node import GatewayWireguard, WorkerWireguard
from appliance.datapath.plan.wireguard import WgSettings, WgSkip, WgSkipReason, WireguardPlan


class NoChanges:
    def apply(self, plan: WireguardPlan) -> list[str]:
        return []


class Annotations:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, str | None]]] = []

    def patch_node_annotations(self, node: str, annotations: dict[str, str | None]) -> None:
        self.patches.append((node, annotations))


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    fmt = KeyValueFormatter()
    return [fmt.format(r) for r in caplog.records]


def test_key_published_is_an_event_with_fields_and_no_private_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = WorkerWireguard(node="w1", state_dir=tmp_path, settings=WgSettings(), applier=NoChanges(),
                             annotator=Annotations())
    with caplog.at_level("INFO"):
        worker.publish()
    public = worker.current_keys()[0].public_key
    private = read_key_file(tmp_path / CURRENT_KEY_FILE).to_base64()
    got = [ln for ln in lines(caplog) if "event=wireguard.key_published" in ln]
    assert len(got) == 1 and "node=w1" in got[0] and public in got[0], lines(caplog)
    assert all(private not in ln for ln in lines(caplog))


def test_skipped_peer_is_an_event_naming_member_subject_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    gateway = GatewayWireguard(member="gw1", settings=WgSettings(), applier=NoChanges())
    plan = WireguardPlan(skipped=(WgSkip(subject="worker1", reason=WgSkipReason.NO_PUBLIC_KEY, message="none"),))
    with caplog.at_level("INFO"):
        gateway.apply(plan)
    got = lines(caplog)
    assert any("event=wireguard.pass" in ln and "member=gw1" in ln and "skipped=1" in ln for ln in got), got
    assert any("event=wireguard.skipped" in ln and "subject=worker1" in ln and "reason=NoWireGuardKey" in ln
               for ln in got), got
