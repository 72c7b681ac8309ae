"""nftables through libnftables in-process (`apply.nft_exec`) and the resync fingerprint shortcut, on the real kernel.

Each test works in its own namespace `egt-nfx-*` (created here, removed after, even after a failure).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from appliance.datapath.apply import nft_exec
from appliance.datapath.apply.applier import DataPathApplier, FullReason, Observation
from appliance.datapath.apply.nft_exec import NftExecutor, list_json, run_nft
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway
from appliance.datapath.plan.kernel_model import OWN_PROTO
from appliance.datapath.plan.nft_rendering import FAMILY, TABLE
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent

pytestmark = pytest.mark.netns

PROBE = "egt_nfx_probe"
GW = Gw(eips=("203.0.113.130",), members=("gw1", "gw2"), member_addresses={"gw1": "198.51.100.11"})
WORKERS = {"worker1": (ip_address("100.127.0.11"),), "worker2": (ip_address("100.127.0.12"),)}


def sh(*argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture
def netns(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"egt-nfx-{request.node.name[5:18]}"
    sh("ip", "netns", "del", name)
    created = sh("ip", "netns", "add", name)
    if created.returncode != 0:
        pytest.fail(f"cannot create a network namespace (root needed): {created.stderr}", pytrace=False)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name)


def test_in_process_run_applies_and_lists_a_table_in_the_namespace_only(netns: str) -> None:
    assert nft_exec.backend() == "libnftables", "libnftables1 is not loadable (apt-get install libnftables1)"
    rc, _, err = run_nft(f"add table inet {PROBE}\nadd set inet {PROBE} s {{ type ipv4_addr; }}\n"
                         f"add element inet {PROBE} s {{ 100.64.0.1, 100.64.0.2 }}\n", netns=netns)
    assert (rc, err) == (0, "")
    rc, out, _ = list_json(("list", "set", "inet", PROBE, "s"), netns=netns)
    assert rc == 0 and '"100.64.0.1"' in out and '"100.64.0.2"' in out
    # the same table through the nft binary in that namespace, and not in ours
    assert sh("ip", "netns", "exec", netns, "nft", "list", "table", "inet", PROBE).returncode == 0
    assert run_nft(f"list table inet {PROBE}\n", netns=None)[0] != 0


def test_errors_come_back_with_the_nft_message(netns: str) -> None:
    rc, out, err = run_nft("add element inet no_such_table s { 100.64.0.1 }\n", netns=netns)
    assert rc != 0 and out == ""
    assert "No such file or directory" in err and "no_such_table" in err
    rc, _, err = run_nft("add tabel inet x\n", netns=netns)
    assert rc != 0 and "syntax error" in err
    rc, _, err = run_nft("list tables\n", netns="egt-nfx-does-not-exist")
    assert rc != 0 and "egt-nfx-does-not-exist" in err


def test_without_the_library_the_nft_binary_does_the_same(netns: str) -> None:
    executor = NftExecutor(library="libnftables-not-there.so.0")
    assert executor.backend == "subprocess"
    assert executor.run(f"add table inet {PROBE}\nadd counter inet {PROBE} c\n", netns=netns)[0] == 0
    rc, out, _ = executor.run(f"list counters table inet {PROBE}", netns=netns, json=True)
    assert rc == 0 and '"name": "c"' in out
    rc, _, err = executor.run("add element inet no_such_table s { 100.64.0.1 }\n", netns=netns)
    assert rc != 0 and "No such file or directory" in err


def _plan() -> object:
    intent = build_intent([GW], [Sel(pod_ip=f"100.64.1.{10 + i}", policy=f"p{i % 3}") for i in range(20)])
    return plan_gateway(intent, member="gw1", workers=WORKERS, settings=GatewaySettings())


def test_hand_made_drift_is_repaired_on_the_next_pass_despite_the_fingerprint_shortcut(netns: str) -> None:
    plan = _plan()
    applier = DataPathApplier(netns)
    first = applier.apply(plan)  # type: ignore[arg-type]
    assert first.failures == () and first.changes
    assert applier.last_observation is Observation.FULL
    again = applier.apply(plan)  # type: ignore[arg-type]
    assert again.changes == () and again.failures == ()
    assert applier.last_observation is Observation.FINGERPRINT
    # someone deletes one SNAT/steer element by hand
    observed = applier.nft.observe()
    assert observed is not None
    name = "snat4"  # (pod IP . destination) -> EIP
    victim = sorted(observed.contents.elements[name])[0]
    assert run_nft(f"delete element {FAMILY} {TABLE} {name} {{ {victim[0]} }}\n", netns=netns)[0] == 0
    repaired = applier.apply(plan)  # type: ignore[arg-type]
    assert repaired.failures == () and repaired.changes
    # the element came back as an element change: the observed table (comment over netlink) matched in structure
    assert not any("replaced" in c for c in repaired.changes), repaired.changes
    assert applier.last_full_reason is FullReason.KERNEL_CHANGED
    after = applier.nft.observe()
    assert after is not None and victim in after.contents.elements[name]
    # ... and one of our routes by hand
    routes = sh("ip", "-n", netns, "-4", "route", "show", "table", "all", "proto", str(OWN_PROTO)).stdout.splitlines()
    assert routes, "the gateway plan has routes"
    dst, table = routes[0].split()[0], routes[0].split("table ")[1].split()[0]
    assert sh("ip", "-n", netns, "route", "del", dst, "table", table, "proto", str(OWN_PROTO)).returncode == 0
    assert applier.apply(plan).changes  # type: ignore[arg-type]
    assert applier.last_full_reason is FullReason.KERNEL_CHANGED
    now = sh("ip", "-n", netns, "-4", "route", "show", "table", "all", "proto", str(OWN_PROTO)).stdout.splitlines()
    assert sorted(now) == sorted(routes)
    # nothing left to do: the shortcut again
    assert applier.apply(plan).changes == ()  # type: ignore[arg-type]
    assert applier.last_observation is Observation.FINGERPRINT


def test_the_safety_net_observes_in_full_every_nth_pass(netns: str) -> None:
    plan = _plan()
    applier = DataPathApplier(netns)
    applier.full_observe_every = 3
    seen = []
    for _ in range(7):
        assert applier.apply(plan).failures == ()  # type: ignore[arg-type]
        seen.append(applier.last_observation)
    F, P = Observation.FULL, Observation.FINGERPRINT
    assert seen == [F, P, P, F, P, P, F]
