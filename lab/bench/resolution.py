"""Micro-benchmark of policy resolution on a synthetic cluster (pure; called by `egressgw bench sync`).

The synthetic cluster: `n_nodes` nodes (4 of them gateway members), `n_pods` dual-stack pods spread over 100
namespaces with a handful of labels, `n_policies` policies (90 % EgressPolicy selecting one app label in one
namespace, 10 % EgressClusterPolicy selecting a tier across labelled namespaces; mixed priorities, destSubnets,
allocators: a quarter `rr`, the rest `default`), one gateway with `n_eips` IPv4 and IPv6 pool addresses.
Figures (wall and CPU time: CPU time is what one core spends, wall time includes waiting for a busy machine): the
full resolution time, the incremental pod-add time (`incremental.pod_added`) and the number of
steerings. Goals (issue 3): full <= 1 s on one core, incremental <= 50 ms; they are reported, not asserted.
"""

from __future__ import annotations

import ipaddress
import time
import tracemalloc
from dataclasses import replace
from typing import Any

from appliance.core.model import (
    AllocatorPolicy,
    AppliedTo,
    EgressGateway,
    EgressIPSpec,
    EgressPolicy,
    IPNetwork,
    IPPool,
    IPRange,
    LabelSelector,
    Namespace,
    Node,
    Pod,
    PolicyKind,
    PolicyRef,
)
from appliance.core.snapshot import Snapshot
from appliance.policy.incremental import pod_added
from appliance.policy.resolution import resolve

N_NAMESPACES = 100
N_APPS = 20
GATEWAY_NODES = 4


def _pool(first: str, n: int) -> IPPool:
    a = ipaddress.ip_address(first)
    return IPPool(ranges=(IPRange(first=a, last=type(a)(int(a) + n - 1)),))


def synthetic_snapshot(*, n_pods: int, n_policies: int, n_eips: int, n_nodes: int) -> Snapshot:
    nodes = tuple(
        Node(
            name=f"node-{i:03d}",
            labels=(("egressgw.io/gateway", "gw"),) if i < GATEWAY_NODES else (),
            addresses=(ipaddress.ip_address(f"100.127.{i // 250}.{i % 250 + 1}"),),
            pod_cidrs=(ipaddress.ip_network(f"100.64.{i}.0/24"), ipaddress.ip_network(f"2001:db8:64:{i:x}::/64")),
        )
        for i in range(n_nodes)
    )
    namespaces = tuple(
        Namespace(name=f"ns-{i:03d}", labels=(("team", f"team-{i % 10}"),)) for i in range(N_NAMESPACES)
    )
    pods = []
    for i in range(n_pods):
        node = GATEWAY_NODES + i % max(1, n_nodes - GATEWAY_NODES)
        pods.append(
            Pod(
                namespace=f"ns-{i % N_NAMESPACES:03d}",
                name=f"pod-{i:05d}",
                labels=(("app", f"app-{(i // N_NAMESPACES) % N_APPS}"), ("tier", f"tier-{i % 3}")),
                node_name=f"node-{node:03d}",
                ips=(ipaddress.ip_address(f"100.64.{node}.{i // n_nodes % 250 + 2}"),
                     ipaddress.ip_address(f"2001:db8:64:{node:x}::{i:x}")),
            )
        )
    gateway = EgressGateway(
        name="gw",
        ipv4_pool=_pool("203.0.113.0", n_eips) if n_eips <= 256 else _pool("100.96.0.0", n_eips),
        ipv6_pool=_pool("2001:db8:e1::", n_eips),
        node_selector=LabelSelector(match_labels=(("egressgw.io/gateway", "gw"),)),
        cluster_default=True,
    )
    dests: list[tuple[IPNetwork, ...]] = [
        (),
        (ipaddress.ip_network("198.51.100.0/24"),),
        (ipaddress.ip_network("198.51.100.0/25"), ipaddress.ip_network("2001:db8:198::/48")),
        (ipaddress.ip_network("203.0.113.0/24"),),
    ]
    policies = []
    for i in range(n_policies):
        rr = i % 4 == 0
        egress_ip = EgressIPSpec(allocator_policy=AllocatorPolicy.RR if rr else AllocatorPolicy.DEFAULT)
        if i % 10 == 9:
            ref = PolicyRef(kind=PolicyKind.CLUSTER, namespace="", name=f"cp-{i:04d}")
            applied = AppliedTo(
                pod_selector=LabelSelector(match_labels=(("tier", f"tier-{i % 3}"),)),
                namespace_selector=LabelSelector(match_labels=(("team", f"team-{i // 10 % 10}"),)),
            )
        else:
            ref = PolicyRef(kind=PolicyKind.NAMESPACED, namespace=f"ns-{i % N_NAMESPACES:03d}", name=f"p-{i:04d}")
            app = f"app-{i // N_NAMESPACES % N_APPS}"
            applied = AppliedTo(pod_selector=LabelSelector(match_labels=(("app", app),)))
        policies.append(
            EgressPolicy(
                ref=ref,
                egress_ip=egress_ip,
                applied_to=applied,
                dest_subnet=dests[i % len(dests)],
                priority=i % 3,
                created=f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
            )
        )
    return Snapshot(
        gateways=(gateway,),
        policies=tuple(policies),
        namespaces=namespaces,
        nodes=nodes,
        pods=tuple(pods),
        service_cidrs=(ipaddress.ip_network("100.100.0.0/16"),),
    )


def bench_resolution(
    n_pods: int = 10000, n_policies: int = 1000, n_eips: int = 256, n_nodes: int = 100
) -> dict[str, Any]:
    """Build the synthetic snapshot, time a full resolve and an incremental pod add; return the figures."""
    snap = synthetic_snapshot(n_pods=n_pods, n_policies=n_policies, n_eips=n_eips, n_nodes=n_nodes)
    t0, c0 = time.perf_counter(), time.process_time()
    intent = resolve(snap)
    full, full_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    again = resolve(snap, previous=intent)
    full_sticky = time.perf_counter() - t0
    new_pod = replace(snap.pods[0], name="pod-new", ips=(ipaddress.ip_address("100.64.4.254"),
                                                        ipaddress.ip_address("2001:db8:64:4::ffff")))
    t0, c0 = time.perf_counter(), time.process_time()
    added = pod_added(snap, again, new_pod)
    incremental, incremental_cpu = time.perf_counter() - t0, time.process_time() - c0
    tracemalloc.start()
    resolve(snap)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "n_pods": n_pods,
        "n_policies": n_policies,
        "n_eips": n_eips,
        "n_nodes": n_nodes,
        "steerings": len(intent.steerings),
        "ready_policies": sum(1 for o in intent.outcomes if o.state == "Ready"),
        "full_resolve_seconds": round(full, 4),
        "full_resolve_cpu_seconds": round(full_cpu, 4),
        "full_resolve_with_previous_seconds": round(full_sticky, 4),
        "incremental_pod_add_seconds": round(incremental, 5),
        "incremental_pod_add_cpu_seconds": round(incremental_cpu, 5),
        "incremental_steerings_added": len(added.steerings) - len(again.steerings),
        "resolve_peak_alloc_mib": round(peak / 2**20, 1),
    }


if __name__ == "__main__":  # pragma: no cover - manual run: python -m lab.bench.resolution
    for k, v in bench_resolution().items():
        print(f"{k:40} {v}")
