"""The data-path tests of test_datapath_netns, run with the COMPAT nftables ruleset (plan.nft_variant): per-family
NAT tables, pod -> group chains instead of concatenated interval sets, a marker chain instead of the table comment.

The compat ruleset is what older kernels (RHEL 8's 4.18, Ubuntu 20.04's 5.4) get; this kernel runs it just the same,
so the same traffic assertions (selected pods leave with the EIP, unselected ones with the node address, destination
subnets split, replies come back, failover, drops counted) must hold. The module swaps the variant into the shared
module's applier for its duration; the testbed is the same one (prefix `egt-dp-t`, run under the heavy-test lock).
The pod-churn fast-path test is not repeated: with COMPAT every pass takes the full plan (apply/incremental.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway
from appliance.datapath.plan.nft_variant import RulesetVariant
from appliance.datapath.plan.worker import WorkerSettings, plan_worker
from lab.testbeds.datapath import EXT_V4, WORKER_ADDR, Testbed
from lab.testbeds.datapath_scenarios import build_intent
from tests.integration.datapath import test_datapath_netns as shared
from tests.integration.datapath.test_datapath_netns import (  # noqa: F401  (collected here, run with COMPAT)
    EIP4,
    EIP4B,
    EIP6,
    GW,
    MEMBER,
    NODE,
    WORKERS,
    apply,
    dual,
    test_apply_twice_changes_nothing_and_a_restart_adopts,
    test_bulk_tcp_through_the_tunnel_completes,
    test_dest_subnet_two_policies_two_eips_and_cluster_internal,
    test_fail_closed_drops_and_counts,
    test_failover_to_the_second_gateway_keeps_the_eip,
    test_ipv6_underlay_carries_both_families,
    test_policy_removed_pod_moved_and_use_node_ip,
    test_remove_all_leaves_nothing_of_ours,
    test_security_drops_are_counted_and_the_host_firewall_is_untouched,
    test_selected_pod_leaves_with_the_eip_unselected_with_the_node_ip,
    test_unsolicited_traffic_to_an_eip_is_dropped_not_answered,
)

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module", autouse=True)
def compat_variant() -> Iterator[None]:
    original = shared.DataPathApplier
    shared.DataPathApplier = functools.partial(DataPathApplier, variant=RulesetVariant.COMPAT)  # type: ignore[misc]
    try:
        yield
    finally:
        shared.DataPathApplier = original  # type: ignore[misc]


@pytest.fixture(scope="module")
def bed(compat_variant: None) -> Iterator[Testbed]:
    yield from shared.datapath_bed()


def _tables(bed: Testbed, node: str) -> str:
    return bed.run(node, "nft", "list", "tables")


def test_compat_tables_hold_no_inet_nat_and_switching_back_removes_them(bed: Testbed) -> None:
    intent = build_intent([GW], dual("pod1"))
    apply(bed, intent)
    for node in ("w1", "g1"):
        assert {"table ip egressgw", "table ip6 egressgw"} <= set(_tables(bed, node).splitlines())
        inet = bed.run(node, "nft", "list", "table", "inet", "egressgw")
        assert "type nat" not in inet and "comment" not in inet and "chain structure_" in inet
        assert "type nat hook postrouting" in bed.run(node, "nft", "list", "table", "ip", "egressgw")
    assert bed.source("pod1", EXT_V4[0], "tcp") == EIP4
    # the same node switched to MODERN: one full replace also deletes the compat NAT tables
    for g in ("g1", "g2"):
        plan = plan_gateway(intent, member=MEMBER[g], workers=WORKERS, settings=GatewaySettings())
        assert DataPathApplier(bed.ns(g)).apply(plan).failures == ()
    for w in ("w1", "w2"):
        wplan = plan_worker(intent, node=NODE[w], underlay=ip_address(WORKER_ADDR[w][0]), settings=WorkerSettings())
        assert DataPathApplier(bed.ns(w)).apply(wplan).failures == ()
    for node in ("w1", "g1"):
        assert "table ip egressgw" not in _tables(bed, node).splitlines()
    assert bed.source("pod1", EXT_V4[0], "tcp") == EIP4
    # and back to COMPAT (the next tests of this module run with it)
    apply(bed, intent)
    assert bed.source("pod2", EXT_V4[0], "tcp") == WORKER_ADDR["w1"][0]
