"""`egressgw bench scale`'s pure parts: sizes, the moved cluster, parsing of /proc and /metrics, the rollout's
aggregation into the issue's JSON keys (nested objects) and the printed table."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from lab.bench.scale import (
    Size,
    churn_pod,
    cluster_objects,
    lookup,
    parse_sizes,
    proc_cpu_seconds,
    render,
    request_delta,
    requests_by,
    requests_total,
    rollout_figures,
    rollout_ips_in,
    rollout_pods,
    size_for,
)
from lab.system import GATEWAY_LABEL


def test_sizes_are_the_issue_rows_and_interpolate_between() -> None:
    assert size_for(10_000) == Size(10_000, 1_000, 256, 100)
    assert size_for(100_000) == Size(100_000, 5_000, 1_000, 500)
    mid = size_for(55_000)
    assert (mid.policies, mid.eips, mid.nodes) == (3_000, 628, 300)
    assert size_for(1_000) == Size(1_000, 100, 26, 10)


@pytest.mark.parametrize("text", ["", "abc", "10000,-5", "0"])
def test_bad_sizes_name_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--sizes"):
        parse_sizes(text)


def test_sizes_parse() -> None:
    assert parse_sizes("10000, 100_000") == [10_000, 100_000]


def test_cluster_is_clear_of_the_lab_and_served_by_the_lab_gateways() -> None:
    objs = cluster_objects(Size(2_000, 200, 300, 20))
    lab_nets = [ipaddress.ip_network(n) for n in ("100.64.0.0/16", "100.127.0.0/16", "2001:db8:64::/48")]
    pod_ips = [ipaddress.ip_address(ip) for p in objs["pods"] for ip in p["_ips"]]
    assert len(pod_ips) == 4_000 and len(set(pod_ips)) == 4_000
    node_ips = [ipaddress.ip_address(n["_ip"]) for n in objs["Node"]]
    for ip in pod_ips + node_ips:
        assert not any(ip in net for net in lab_nets), ip
    assert all(not n["metadata"]["labels"] for n in objs["Node"])  # no fake node becomes a gateway member
    assert {p["spec"]["nodeName"] for p in objs["pods"]} <= {n["metadata"]["name"] for n in objs["Node"]}
    for pod in objs["pods"]:  # every pod IP inside its node's (moved) pod CIDR
        node = next(n for n in objs["Node"] if n["metadata"]["name"] == pod["spec"]["nodeName"])
        assert ipaddress.ip_address(pod["_ips"][0]) in ipaddress.ip_network(node["spec"]["podCIDR"])
    # every pod IP inside a declared cluster range (a node pod CIDR or extraCidr): no stray pod IP, which would
    # change the intent's cluster CIDRs on every pod event and take the data paths off their fast path
    (info,) = [o for o in objs["EgressGateway"] if o["kind"] == "EgressClusterInfo"]
    ranges = [ipaddress.ip_network(c) for c in info["spec"]["extraCidr"]]
    ranges += [ipaddress.ip_network(n["spec"]["podCIDR"]) for n in objs["Node"]]
    assert all(any(ip in r for r in ranges if r.version == ip.version) for ip in pod_ips)
    (gw,) = [o for o in objs["EgressGateway"] if o["kind"] == "EgressGateway"]
    assert gw["spec"]["nodeSelector"]["selector"]["matchLabels"] == {GATEWAY_LABEL[0]: GATEWAY_LABEL[1]}
    first, last = (ipaddress.ip_address(a) for a in gw["spec"]["ippools"]["ipv4"][0].split("-"))
    assert int(last) - int(first) + 1 == 300


def test_the_100k_row_has_500_distinct_valid_node_addresses() -> None:
    objs = cluster_objects(Size(1_000, 10, 10, 500))
    nodes = [ipaddress.ip_address(n["_ip"]) for n in objs["Node"]]
    cidrs = [ipaddress.ip_network(n["spec"]["podCIDR"]) for n in objs["Node"]]
    assert len(set(nodes)) == 500 and len(set(cidrs)) == 500
    assert all(ip in ipaddress.ip_network("100.64.0.0/10") for ip in nodes)


def test_churn_pods_look_like_the_cluster_pods_of_their_node_without_colliding() -> None:
    objs = cluster_objects(size_for(10_000))
    node = objs["Node"][0]
    taken = {ip for p in objs["pods"] for ip in p["_ips"]}
    pods = [churn_pod(node, i) for i in range(3)]
    for pod in pods:
        ips = [entry["ip"] for entry in pod["status"]["podIPs"]]
        assert pod["spec"]["nodeName"] == node["metadata"]["name"] and not set(ips) & taken
        assert ipaddress.ip_address(ips[0]) in ipaddress.ip_network(node["spec"]["podCIDR"])
        assert {ipaddress.ip_address(ip).version for ip in ips} == {4, 6}
        cidrs = [ipaddress.ip_network(c) for c in node["spec"]["podCIDRs"]]
        assert all(ipaddress.ip_address(ip) in c for ip, c in zip(ips, cidrs, strict=True))
    assert len({p["status"]["podIP"] for p in pods}) == 3


def test_rollout_pods_alternate_workers_inside_their_pod_cidrs() -> None:
    cidrs = {"w2": "100.64.2.0/24", "w1": "100.64.1.0/24"}
    pods = rollout_pods(5, cidrs)
    assert [p[1] for p in pods] == ["w1", "w2", "w1", "w2", "w1"]
    assert [p[2] for p in pods[:2]] == ["100.64.1.100", "100.64.2.100"]
    assert len({p[2] for p in pods}) == 5
    for _, worker, ip in pods:
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(cidrs[worker])
    listing = "elements = { 0x0e6e0001 . 100.64.1.100, 0x0e6e0002 . 100.64.2.100, 0x0e6e0001 . 100.80.0.2 }"
    assert rollout_ips_in(listing, [p[2] for p in pods]) == {"100.64.1.100", "100.64.2.100"}


def test_rollout_larger_than_the_pod_cidrs_is_refused() -> None:
    with pytest.raises(ValueError, match="rollout of 400 pods"):
        rollout_pods(400, {"w1": "100.64.1.0/24", "w2": "100.64.2.0/24"})


def test_proc_stat_cpu_includes_children() -> None:
    # pid (comm with ) and spaces) state ppid ... utime=14 stime=15 cutime=16 cstime=17 (1-based fields)
    fields = ["S"] + ["0"] * 10 + ["100", "50", "30", "20"] + ["0"] * 30
    line = "1234 (python3 ) x) " + " ".join(fields)
    assert proc_cpu_seconds(line, 100) == pytest.approx(2.0)


def test_requests_total_sums_every_series_only() -> None:
    text = "\n".join([
        "# HELP apiserver_request_total Counter",
        'apiserver_request_total{code="200",verb="GET"} 10',
        'apiserver_request_total{code="201",verb="POST"} 2.5e+01',
        'apiserver_request_duration_seconds_count{verb="GET"} 999',
        "apiserver_request_total_other 7",
    ])
    assert requests_total(text) == 35.0


def test_requests_by_verb_and_resource_minus_the_bench_own() -> None:
    before = requests_by('apiserver_request_total{code="201",resource="pods",verb="POST"} 5\n'
                         'apiserver_request_total{code="200",resource="pods",subresource="status",verb="PATCH"} 1\n')
    after_text = "\n".join([
        'apiserver_request_total{code="201",resource="pods",verb="POST"} 105',
        'apiserver_request_total{code="409",resource="pods",verb="POST"} 3',
        'apiserver_request_total{code="200",resource="pods",subresource="status",verb="PATCH"} 101',
        'apiserver_request_total{code="200",group="egressgw.io",resource="egressgateways",subresource="status",'
        'verb="PATCH"} 40',
        'apiserver_request_total{code="200",resource="leases",verb="PUT"} 7',
    ])
    after = requests_by(after_text)
    assert after["POST pods"] == 108 and after["PATCH egressgateways/status"] == 40
    delta = request_delta(before, after, {"POST pods": 100, "PATCH pods/status": 100})
    assert delta == {"PATCH egressgateways/status": 40, "PUT leases": 7, "POST pods": 3}
    assert list(delta) == ["PATCH egressgateways/status", "PUT leases", "POST pods"]  # largest first


def _rollout() -> dict[str, Any]:
    written = {f"ip{i}": 100.0 + i for i in range(100)}
    appeared = {f"ip{i}": 100.0 + i + (0.1 if i < 98 else 2.0) for i in range(100)}
    deleted = {f"ip{i}": 200.0 for i in range(100)}
    vanished = {f"ip{i}": 200.3 for i in range(99)}  # one deletion never reached the kernel
    return rollout_figures(written=written, appeared=appeared, deleted=deleted, vanished=vanished,
                           write_s=10.0, apply_span_s=199.0 / 2, requests_written=300, egressgw_requests=30.0,
                           cpu_s={"gateway": 1.5, "agent": 0.3})


def test_rollout_aggregation() -> None:
    r = _rollout()
    assert r["kernel_events"] == 200 and r["kernel_events_seen"] == 199
    assert r["events_per_s_written"] == 30.0
    assert r["events_per_s_applied"] == 2.0
    assert r["p50_event_to_kernel_s"] == pytest.approx(0.3)
    assert r["p99_event_to_kernel_s"] == pytest.approx(2.0)
    assert r["cpu_s_per_1000_events"] == {"gateway": 5.0, "agent": 1.0}
    assert r["api_requests_per_1000_events"] == 100.0


def _doc() -> dict[str, Any]:
    size = {"pods": 10_000, "policies": 1_000, "eips": 256, "nodes": 100,
            "cpu_s": {"full_plan_apply": 1.234, "full_plan_apply_gateway": 0.9, "resync_no_change": 0.25,
                      "pod_add": 0.012, "pod_remove": 0.018},
            "s": {"new_policy_5k_pods": 0.75}, "rss_mb_peak": 150.0, "rss_mb_per_10k_pods": 150.0,
            "rollout": _rollout()}
    return {"sizes": [size, {"pods": 100_000, "policies": 5_000, "eips": 1_000, "nodes": 500}],
            "machine": {"loadavg": [3.1, 2.0, 1.5], "cores": 2}}


def test_json_keys_are_nested_objects() -> None:
    doc = json.loads(json.dumps(_doc()))
    size = doc["sizes"][0]
    for path in (("cpu_s", "full_plan_apply"), ("cpu_s", "resync_no_change"), ("cpu_s", "pod_add"),
                 ("cpu_s", "pod_remove"), ("s", "new_policy_5k_pods"), ("rss_mb_peak",),
                 ("rollout", "events_per_s_applied"), ("rollout", "p99_event_to_kernel_s"),
                 ("rollout", "cpu_s_per_1000_events", "gateway"), ("rollout", "api_requests_per_1000_events")):
        assert lookup(size, path) is not None, path
    assert lookup(size, ("cpu_s", "missing")) is None
    assert lookup(doc["sizes"][1], ("rollout", "events_per_s_applied")) is None


def test_table_has_one_column_per_size_and_dashes_for_missing() -> None:
    text = render(_doc())
    assert "load average [3.1, 2.0, 1.5], 2 cores" in text
    header = next(line for line in text.splitlines() if "figure" in line)
    assert "10k pods" in header and "100k pods" in header and "goal 100k" in header
    row = next(line for line in text.splitlines() if line.startswith("| full plan + apply"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["1.234", "-", "<= 1", "<= 2"]
    p99 = next(line for line in text.splitlines() if "event -> kernel p99" in line)
    assert "2.000" in p99
    assert "1000 / 256 / 100" in text
