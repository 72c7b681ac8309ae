"""Per-policy drop counters of a worker on the real kernel (lab/testbeds/datapath.py, prefix `egt-pd-`).

Two policies of a gateway instance with no alive member (fail closed) select pod1 and pod2 of worker w1: what one
pod sends is dropped on the worker and must move that policy's `no_gateway` counter only (per family), also for a
pod added by the pod-churn fast path; with strict source validation and no pod interface found, a live policy's
steered packets are dropped as `source_unbound` and counted for that policy. Only the worker's data path is needed
(every packet here is dropped in w1). Every packet stays inside the testbed's namespaces, which are removed on
teardown even after a failure.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_address

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.core.waiting import wait_until
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.incremental import IncrementalWorker
from appliance.datapath.apply.metrics import register
from appliance.datapath.plan.policy_counters import PolicyLabels
from appliance.datapath.plan.policy_drops import DropLabels, PolicyDropReason, drop_readings
from appliance.datapath.plan.worker import WorkerSettings
from lab.testbeds.datapath import EXT_V4, EXT_V6, PODS, WORKER_ADDR, Testbed
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent
from tests.integration.datapath.compat_variant import pod_churn_was_small

pytestmark = pytest.mark.netns

EIP_LIVE, EIP_A, EIP_B, EIP_A6 = "203.0.113.130", "203.0.113.140", "203.0.113.141", "2001:db8:e1::9"
LIVE = Gw(name="gw-live", eips=(EIP_LIVE,))
DEAD = Gw(name="gw-dead", members=("gw2",), alive=(), eips=(EIP_A, EIP_B, EIP_A6))
SENT = 5

#: send N UDP datagrams to a server (no answer is awaited: they are dropped on the worker)
SEND = """
import socket, sys
server, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(b"drop me", (server, 7000))
"""


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    for binary in ("ip", "nft", "sysctl"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is missing (apt-get install iproute2 nftables procps)", pytrace=False)
    tb = Testbed(prefix="egt-pd-")
    try:
        tb.up()
        yield tb
    finally:
        tb.down()


def worker(bed: Testbed) -> IncrementalWorker:
    return IncrementalWorker(DataPathApplier(bed.ns("w1")), node="worker1",
                             underlay=ip_address(WORKER_ADDR["w1"][0]), settings=WorkerSettings())


NO_GATEWAY = PolicyDropReason.NO_GATEWAY


def drop(policy: str, eip: str, family: str = "4", reason: PolicyDropReason = NO_GATEWAY) -> DropLabels:
    return DropLabels(labels=PolicyLabels(namespace="default", policy=policy, eip=eip, family=family,
                                          kind="EgressPolicy"), reason=reason)


def sel(pod: str, policy: str, eip: str, *, gateway: str = "gw-dead", v6: bool = False) -> Sel:
    _, a4, a6 = PODS[pod]
    return Sel(pod_ip=a6 if v6 else a4, node="worker1", policy=policy, gateway=gateway, eip=eip)


def send(bed: Testbed, pod: str, server: str) -> None:
    bed.run(pod, sys.executable, "-c", SEND, server, str(SENT))


def per_policy(w: IncrementalWorker) -> dict[DropLabels, int]:
    return drop_readings(w.applier.counters(), w.policy_drops)


def grown(w: IncrementalWorker, labels: DropLabels, at_least: int) -> dict[DropLabels, int]:
    """Wait until `labels`' counter reaches `at_least`; the readings then."""
    def check() -> dict[DropLabels, int] | None:
        now = per_policy(w)
        return now if now.get(labels, 0) >= at_least else None

    found = wait_until(check, timeout=20, what=f"{labels} to reach {at_least}")
    assert found is not None
    return found


def test_fail_closed_drops_move_only_their_own_policys_counter(bed: Testbed) -> None:
    w = worker(bed)
    a4, b4, a6 = drop("a", EIP_A), drop("b", EIP_B), drop("a", EIP_A6, "6")
    first = build_intent([LIVE, DEAD], [sel("pod1", "a", EIP_A), sel("pod1", "a", EIP_A6, v6=True),
                                        sel("pod2", "b", EIP_B)])
    assert w.converge(first).failures == ()
    before = per_policy(w)
    assert set(before) == {a4, b4, a6} and set(before.values()) == {0}
    total = w.applier.counters()["drop_no_gateway"][0]

    send(bed, "pod1", EXT_V4[0])
    after = grown(w, a4, SENT)
    assert after[a4] == SENT and after[b4] == 0 and after[a6] == 0
    assert w.applier.counters()["drop_no_gateway"][0] - total == SENT  # the per-worker total still counts

    send(bed, "pod2", EXT_V4[1])
    moved = grown(w, b4, SENT)
    assert moved[a4] == SENT and moved[a6] == 0

    send(bed, "pod1", EXT_V6)
    v6 = grown(w, a6, SENT)
    assert v6[a4] == SENT and v6[b4] == SENT

    # pod churn: pod2's IPv6 address joins policy a by the fast path and counts toward a's IPv6 counter
    extra = build_intent([LIVE, DEAD], [sel("pod2", "a", EIP_A6, v6=True)]).steerings[0]
    result = w.converge(replace(first, steerings=(*first.steerings, extra)), full=False)
    assert result.failures == ()
    assert pod_churn_was_small(result.changes, w.applier), result.changes  # not a full plan
    send(bed, "pod2", EXT_V6)
    churned = grown(w, a6, 2 * SENT)
    assert churned[a4] == SENT and churned[b4] == SENT

    # the exported metric names the policy, never a pod
    reg = CollectorRegistry()
    register(reg, w.applier.counters, role="worker", policy_drops=lambda: w.policy_drops)
    text = generate_latest(reg).decode()
    line = ('egressgw_policy_dropped_packets_total{eip="2001:db8:e1::9",family="6",namespace="default",policy="a",'
            'reason="no_gateway"}')
    assert f"{line} {float(2 * SENT)}" in text
    assert all(PODS[p][i] not in text for p in ("pod1", "pod2") for i in (1, 2))
    assert w.applier.remove_all().failures == ()


def test_unbound_pods_steered_traffic_counts_for_its_policy(bed: Testbed) -> None:
    w = worker(bed)
    live = drop("c", EIP_LIVE, reason=PolicyDropReason.SOURCE_UNBOUND)
    intent = build_intent([LIVE, DEAD], [sel("pod1", "c", EIP_LIVE, gateway="gw-live"), sel("pod2", "b", EIP_B)])
    # strict source validation, no pod interface discovered: pod1's steered traffic must not leave
    assert w.converge(intent, source_bindings=()).failures == ()
    assert w.plan is not None and ip_address(PODS["pod1"][1]) in w.plan.unbound
    send(bed, "pod1", EXT_V4[0])
    after = grown(w, live, SENT)
    assert after[drop("b", EIP_B)] == 0
    assert w.applier.counters()["drop_source_unbound"][0] >= SENT
    assert w.applier.remove_all().failures == ()
