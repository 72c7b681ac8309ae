"""Per-policy counters and SNAT port figures on the real kernel (lab/testbeds/datapath.py, prefix `egt-pm-`).

Two policies steer two pods of worker w1 through gateway g1 to two EIPs; traffic of one pod must move that policy's
counters only (both directions, new connections), including through the pod-churn fast path; N UDP flows from one
pod to one server must show as at least N SNAT ports in use toward one destination on that pod's EIP. Every packet
stays inside the testbed's namespaces, which are removed on teardown even after a failure.
"""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_address

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.core.intent import Intent
from appliance.core.waiting import wait_until
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.incremental import IncrementalGateway, IncrementalWorker
from appliance.datapath.apply.metrics import register
from appliance.datapath.apply.snat_ports import SampleLimits, SnatPortSampler, sample_snat_ports
from appliance.datapath.plan.gateway import GatewaySettings
from appliance.datapath.plan.policy_counters import PolicyLabels, split_readings
from appliance.datapath.plan.snat_ports import SnatSample
from appliance.datapath.plan.worker import WorkerSettings
from lab.testbeds.datapath import EXT_V4, EXT_V6, GATEWAY_ADDR, PODS, WORKER_ADDR, Testbed
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent
from tests.integration.datapath.compat_variant import pod_churn_was_small

pytestmark = pytest.mark.netns

EIP_A, EIP_B, EIP6 = "203.0.113.130", "203.0.113.131", "2001:db8:e1::2"
WORKERS = {"worker1": tuple(ip_address(a) for a in WORKER_ADDR["w1"]),
           "worker2": tuple(ip_address(a) for a in WORKER_ADDR["w2"])}
GW = Gw(eips=(EIP_A, EIP_B, EIP6), members=("gw1",), member_addresses={"gw1": GATEWAY_ADDR["g1"][0]})
MARKS = GatewaySettings().marks  # the marks the gateway's flows carry (what the sampler filters on)
FLOWS = 24

#: N UDP flows from one pod to one server: N sockets, one datagram each, every echo awaited; prints the answers
UDP_FLOWS = """
import socket, sys
server, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
answered = 0
for s in socks:
    s.settimeout(3)
    s.sendto(b"flow", (server, port))
for s in socks:
    try:
        s.recvfrom(512)
        answered += 1
    except OSError:
        pass
print(answered)
"""


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    for binary in ("ip", "nft", "sysctl"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is missing (apt-get install iproute2 nftables procps)", pytrace=False)
    tb = Testbed(prefix="egt-pm-")
    try:
        tb.up()
        for eip in (EIP_A, EIP_B, EIP6):
            tb.route_eip(eip, "g1")
        yield tb
    finally:
        tb.down()


class Nodes:
    """The gateway g1 and worker w1 data paths, converged like the services do (full pass, then pod churn)."""

    def __init__(self, bed: Testbed) -> None:
        self.bed = bed
        self.gateway = IncrementalGateway(DataPathApplier(bed.ns("g1")), member="gw1", settings=GatewaySettings())
        self.worker = IncrementalWorker(DataPathApplier(bed.ns("w1")), node="worker1",
                                        underlay=ip_address(WORKER_ADDR["w1"][0]), settings=WorkerSettings())

    def converge(self, intent: Intent, *, full: bool = True) -> tuple[str, ...]:
        """Converge both; the gateway's change lines."""
        gateway = self.gateway.converge(intent, workers=WORKERS, full=full)
        for result in (gateway, self.worker.converge(intent, full=full)):
            assert result.failures == (), result.failures
        return gateway.changes

    def per_policy(self) -> tuple[dict[PolicyLabels, tuple[int, int]], dict[PolicyLabels, int]]:
        readings = self.gateway.applier.counters()
        return split_readings(readings, self.gateway.policy_counters)


def labels(policy: str, eip: str, family: str = "4") -> PolicyLabels:
    return PolicyLabels(namespace="default", policy=policy, eip=eip, family=family, kind="EgressPolicy")


def sel(pod: str, policy: str, eip: str, *, v6: bool = False, to: tuple[str, ...] = ()) -> Sel:
    _, a4, a6 = PODS[pod]
    partner = {EIP_A: EIP6, EIP6: EIP_A}.get(eip)  # the IPv6 EIP rides the IPv4 underlay through its partner
    return Sel(pod_ip=a6 if v6 else a4, node="worker1", policy=policy, eip=eip, partner=partner, destinations=to)


def test_traffic_moves_only_its_own_policys_counters(bed: Testbed) -> None:
    nodes = Nodes(bed)
    a4, b4, a6, d4 = labels("a", EIP_A), labels("b", EIP_B), labels("a", EIP6, "6"), labels("d", EIP_A)
    first = build_intent([GW], [sel("pod1", "a", EIP_A), sel("pod1", "a", EIP6, v6=True)])
    nodes.converge(first)
    # pod2 is in two policies, one per server subnet (b: EXT_V4[0], d: EXT_V4[1] on pod1's EIP): its flows are told
    # apart by destination
    second = build_intent([GW], [sel("pod1", "a", EIP_A), sel("pod1", "a", EIP6, v6=True),
                                 sel("pod2", "b", EIP_B, to=("203.0.113.0/28",)),
                                 sel("pod2", "d", EIP_A, to=("203.0.113.32/28",))])
    nodes.converge(second)
    assert bed.source("pod1", EXT_V4[0]) == EIP_A and bed.source("pod2", EXT_V4[0]) == EIP_B
    traffic, conns = nodes.per_policy()
    assert set(traffic) == {a4, b4, a6, d4}

    for _ in range(3):
        assert bed.source("pod1", EXT_V4[0], "udp") == EIP_A
    assert bed.source("pod1", EXT_V4[0], "tcp") == EIP_A
    after, after_conns = nodes.per_policy()
    assert after[a4][0] - traffic[a4][0] >= 2 * 3 + 4  # UDP both ways, TCP handshake + line + echo
    assert after[a4][1] > traffic[a4][1]
    assert after_conns[a4] - conns[a4] >= 4
    assert after[b4] == traffic[b4] and after_conns[b4] == conns[b4]
    assert after[a6] == traffic[a6] and after[d4] == traffic[d4]

    assert bed.source("pod2", EXT_V4[0], "udp") == EIP_B
    assert bed.source("pod1", EXT_V6, "udp") == EIP6
    final, final_conns = nodes.per_policy()
    assert final[b4][0] - after[b4][0] >= 2 and final_conns[b4] - after_conns[b4] >= 1
    assert final[a4] == after[a4] and final[d4] == after[d4]
    assert final[a6][0] - after[a6][0] >= 2 and final_conns[a6] > after_conns.get(a6, 0)
    assert bed.source("pod2", EXT_V4[1], "tcp") == EIP_A  # pod2's second policy, on the first one's EIP
    moved, moved_conns = nodes.per_policy()
    assert moved[d4][0] - final[d4][0] >= 4 and moved_conns[d4] - final_conns[d4] == 1
    assert moved[a4] == final[a4] and moved[b4] == final[b4]
    final = moved

    # pod churn: pod2's IPv6 address joins policy a by the fast path and counts toward a's IPv6 counter
    extra = build_intent([GW], [sel("pod2", "a", EIP6, v6=True)]).steerings[0]
    changes = nodes.converge(replace(second, steerings=(*second.steerings, extra)), full=False)
    assert pod_churn_was_small(changes, nodes.gateway.applier), changes  # the fast path, not a full plan
    assert bed.source("pod2", EXT_V6, "udp") == EIP6
    churned, _ = nodes.per_policy()
    assert churned[a6][0] - final[a6][0] >= 2
    assert churned[b4] == final[b4]

    # the exported metrics name the policy, never a pod
    reg = CollectorRegistry()
    register(reg, nodes.gateway.applier.counters, role="gateway", policies=lambda: nodes.gateway.policy_counters)
    text = generate_latest(reg).decode()
    line = 'egressgw_policy_packets_total{eip="203.0.113.131",family="4",namespace="default",policy="b"}'
    assert f"{line} {float(churned[b4][0])}" in text
    assert PODS["pod1"][1] not in text and PODS["pod2"][1] not in text


def sample(bed: Testbed, **limits: int) -> SnatSample:
    return sample_snat_ports([ip_address(EIP_A), ip_address(EIP_B)], mark=MARKS.mark_base, mask=MARKS.mark_mask,
                             netns=bed.ns("g1"), limits=SampleLimits(**limits))


def test_snat_ports_in_use_follow_the_flows_opened(bed: Testbed) -> None:
    nodes = Nodes(bed)
    nodes.converge(build_intent([GW], [sel("pod1", "a", EIP_A), sel("pod2", "b", EIP_B)]))
    before = {e.eip: e for e in sample(bed).eips}
    out = bed.run("pod1", sys.executable, "-c", UDP_FLOWS, EXT_V4[0], "7000", str(FLOWS), timeout=60)
    assert int(out.strip()) == FLOWS

    def grown() -> SnatSample | None:
        s = sample(bed)
        got = {e.eip: e for e in s.eips}
        return s if got[EIP_A].in_use_max >= FLOWS + before[EIP_A].in_use_max else None

    figures = wait_until(grown, timeout=20, what=f"{FLOWS} more SNAT entries toward one destination on {EIP_A}")
    assert figures is not None
    got = {e.eip: e for e in figures.eips}
    assert got[EIP_A].in_use >= got[EIP_A].in_use_max >= FLOWS
    assert got[EIP_A].ratio_max == got[EIP_A].in_use_max / got[EIP_A].port_range
    assert got[EIP_B].in_use == before[EIP_B].in_use  # pod2 sent nothing: the other EIP did not move
    assert not figures.truncated and figures.entries_read >= FLOWS

    capped = sample(bed, max_entries=5)
    assert capped.truncated and capped.entries_read == 5

    sampler = SnatPortSampler(lambda: [ip_address(EIP_A)], functools.partial(
        sample_snat_ports, mark=MARKS.mark_base, mask=MARKS.mark_mask, netns=bed.ns("g1")))
    reg = CollectorRegistry()
    register(reg, nodes.gateway.applier.counters, role="gateway", snat=sampler)
    text = generate_latest(reg).decode()
    assert 'egressgw_snat_port_range{eip="203.0.113.130"} 64512.0' in text
    in_use_max = next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith('egressgw_snat_ports_in_use_max{eip="203.0.113.130"}'))
    assert in_use_max >= FLOWS
