"""The liveness prober's shell (raw ICMPv6 sockets, so root): robust against devices that come and go."""

from __future__ import annotations

import pytest

from appliance.datapath.apply.wireguard_liveness import LivenessProber

pytestmark = [pytest.mark.netns]


def test_prober_survives_missing_devices_and_sockets_closed_under_it() -> None:
    resets: list[tuple[str, str]] = []
    prober = LivenessProber(lambda dev, peer: resets.append((dev, peer)), interval=0.01, misses=2)
    prober.set_targets([("egt-wg-absent0", "K")])  # no such device: skipped, retried by the next pass
    assert prober.targets == {}
    prober.set_targets([("lo", "K")])
    prober.tick()
    prober.targets["lo"].pinger.close()  # what a concurrent set_targets does to a vanished device
    for _ in range(4):
        prober.tick()
    assert resets and resets[0] == ("lo", "K")  # nothing answers fe80::1 on lo: misses lead to a reset
    assert not prober.answering("lo")
    prober.close()
    assert prober.targets == {}
