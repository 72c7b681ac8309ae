"""WireGuard through the services in the lab (namespaces `egt-sv-*`, wireguard-go): keys created and published by
the agent, the instance key shared by the members, the EIP seen through the encrypted tunnel, and a drained
primary's traffic picked up by the other member (the prober re-handshakes)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.core.model import WIREGUARD_KEY_ANNOTATION
from appliance.core.waiting import wait_until
from appliance.datapath.apply.wireguard_keyfiles import write_key_file
from appliance.datapath.plan.wireguard_keys import PrivateKey
from lab.system import System
from tests.integration.service.service_lab_support import EIP, carrier, deploy_web_policy

pytestmark = [pytest.mark.lab, pytest.mark.netns]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    keys: Path = tmp_path_factory.mktemp("wg-instance-keys")
    write_key_file(keys / "egw.key", PrivateKey.generate())
    s = System.up(prefix="egt-sv-", gateway_overrides={"wireguard": {"instance_key_dir": str(keys)}})
    try:
        deploy_web_policy(s, "wg", {"tunnel": {"type": "wireguard"}})
        yield s
    finally:
        s.down()


def test_eip_through_wireguard_and_drain_failover(system: System) -> None:
    assert system.wait_source("w1p1", EIP, timeout=90) == EIP
    assert system.seen_source("w1p2") == "100.127.0.11"
    annotations = {n: system._core.read_node(n).metadata.annotations or {} for n in ("worker1", "gw1", "gw2")}
    worker_key = annotations["worker1"].get(WIREGUARD_KEY_ANNOTATION)
    assert worker_key and annotations["gw1"][WIREGUARD_KEY_ANNOTATION] == annotations["gw2"][WIREGUARD_KEY_ANNOTATION]
    dump = system.lab.exec("worker1", ["wg", "show", "all", "dump"]).stdout
    assert f"{EIP}:" in dump  # the worker's peer endpoint is the EIP itself

    primary = wait_until(lambda: carrier(system), timeout=30, what="a route for the EIP")
    system.stop_service(primary, sig=signal.SIGTERM, grace=30)
    assert system.wait_source("w1p1", EIP, timeout=30) == EIP  # the other member, new WireGuard session
    system.start_gateway(primary)
