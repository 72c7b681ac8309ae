"""Data-path metrics: counter names -> labelled Prometheus counters that survive kernel counter restarts."""

from __future__ import annotations

from ipaddress import ip_address

from prometheus_client import CollectorRegistry, generate_latest

from appliance.datapath.apply.metrics import MonotonicCounters, register, token_to_address
from appliance.datapath.plan.tunnel import addr_token


def test_tokens_round_trip() -> None:
    for a in ("203.0.113.130", "2001:db8:e1::2", "2001:db8::"):
        assert token_to_address(addr_token(ip_address(a))) == a
    assert token_to_address("nodeip") == "nodeip"


def test_totals_never_decrease_across_a_counter_restart() -> None:
    m = MonotonicCounters()
    assert m.update({"drop_spoofed": (5, 500)}) == {"drop_spoofed": (5, 500)}
    assert m.update({"drop_spoofed": (7, 700)}) == {"drop_spoofed": (7, 700)}
    # the table was replaced: the kernel counter restarted at 0 and counted 2 more
    assert m.update({"drop_spoofed": (2, 200)}) == {"drop_spoofed": (9, 900)}


def test_collector_exports_labelled_counters() -> None:
    readings = {"eip_203_0_113_130": (10, 1000), "conn_203_0_113_130": (3, 180), "eip_nodeip": (1, 60),
                "ep_2001_db8_e1__2_7700": (4, 400), "drop_unknown_vtep": (2, 100)}
    reg = CollectorRegistry()
    register(reg, lambda: readings, role="gateway")
    text = generate_latest(reg).decode()
    assert 'egressgw_datapath_eip_packets_total{eip="203.0.113.130"} 10.0' in text
    assert 'egressgw_datapath_eip_bytes_total{eip="203.0.113.130"} 1000.0' in text
    assert 'egressgw_datapath_snat_connections_total{eip="203.0.113.130"} 3.0' in text
    assert 'egressgw_datapath_eip_packets_total{eip="nodeip"} 1.0' in text
    assert 'egressgw_datapath_endpoint_packets_total{endpoint="2001:db8:e1::2",vni="7700"} 4.0' in text
    assert 'egressgw_datapath_dropped_packets_total{reason="unknown_vtep",role="gateway"} 2.0' in text
