"""Prometheus metrics of the data path, read from our nftables named counters at scrape time.

Counters in the kernel: per EIP (gateway: `eip_<addr>` packets/bytes in both directions, `conn_<addr>` new SNAT
connections), per tunnel endpoint (worker: `ep_<addr>_<vni>`), and drops by reason (`drop_<reason>`). A whole-table
replacement (structure change, hand-flushed table) restarts the kernel counters at zero; `MonotonicCounters` turns
the raw readings into counters that never go down (a reading below the previous one is a restart: its value is
added on top), so Prometheus' rate() stays correct.

Exported (all counters): egressgw_datapath_eip_packets_total{eip}, egressgw_datapath_eip_bytes_total{eip},
egressgw_datapath_snat_connections_total{eip}, egressgw_datapath_endpoint_packets_total{endpoint,vni},
egressgw_datapath_endpoint_bytes_total{endpoint,vni}, egressgw_datapath_dropped_packets_total{role,reason},
egressgw_datapath_spoofed_packets_total{worker} (gateway: `spoofed_<node>` counters of the workers it knows now).
`eip="nodeip"` counts useNodeIP traffic (masqueraded to the member's uplink address).

Per policy (gateway; `appliance.datapath.plan.policy_counters`): egressgw_policy_packets_total,
egressgw_policy_bytes_total, egressgw_policy_connections_total {namespace,policy,eip,family}; (worker agent;
`appliance.datapath.plan.policy_drops`) egressgw_policy_dropped_packets_total {namespace,policy,eip,family,reason},
reasons `no_gateway` and `source_unbound` (no gateway drop reason can be tied to a policy, see docs/operations.md:
the gateway exports the family empty). Only counters of the current plan are exported.

SNAT ports per EIP (gateway; `appliance.datapath.apply.snat_ports`, sampled at most every interval at scrape time):
egressgw_snat_port_range, egressgw_snat_ports_in_use, egressgw_snat_ports_in_use_max, egressgw_snat_port_use_ratio_max
{eip}, egressgw_snat_sample_seconds, egressgw_snat_sample_truncated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from appliance.datapath.apply.snat_ports import SnatPortSampler
from appliance.datapath.plan.policy_counters import PolicyLabels, split_readings
from appliance.datapath.plan.policy_drops import DropLabels, drop_readings

Readings = Mapping[str, tuple[int, int]]
PolicyCounters = Callable[[], Mapping[str, PolicyLabels]]
PolicyDrops = Callable[[], Mapping[str, DropLabels]]
POLICY_LABELS = ["namespace", "policy", "eip", "family"]


def token_to_address(token: str) -> str:
    """Inverse of planning_tunnel.addr_token: `203_0_113_130` -> 203.0.113.130, `2001_db8_e1__2` -> 2001:db8:e1::2."""
    parts = token.split("_")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return ".".join(parts)
    if token == "nodeip":
        return token
    return ":".join(parts)


class MonotonicCounters:
    """Raw kernel counter readings -> totals that never decrease across counter restarts (thread-safe)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}
        self._total: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def update(self, readings: Readings) -> dict[str, tuple[int, int]]:
        with self._lock:
            for name, (packets, octets) in readings.items():
                lp, lb = self._last.get(name, (0, 0))
                tp, tb = self._total.get(name, (0, 0))
                dp = packets - lp if packets >= lp else packets
                db = octets - lb if octets >= lb else octets
                self._total[name] = (tp + dp, tb + db)
                self._last[name] = (packets, octets)
            return dict(self._total)


class DatapathCollector:
    """A prometheus_client collector; `read` returns the raw nft counters (DataPathApplier.counters)."""

    def __init__(self, read: Callable[[], Readings], *, role: str, policies: PolicyCounters | None = None,
                 policy_drops: PolicyDrops | None = None, snat: SnatPortSampler | None = None) -> None:
        self._read = read
        self._role = role
        self._policies = policies
        self._policy_drops = policy_drops
        self._snat = snat
        self._totals = MonotonicCounters()
        self._last_read: Readings = {}

    def describe(self) -> list[Any]:
        return []  # unchecked collector: metric families depend on the counters present

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        self._last_read = self._read()
        totals = self._totals.update(self._last_read)
        eip_p = CounterMetricFamily("egressgw_datapath_eip_packets", "Packets through the gateway per EIP "
                                    "(both directions)", labels=["eip"])
        eip_b = CounterMetricFamily("egressgw_datapath_eip_bytes", "Bytes through the gateway per EIP", labels=["eip"])
        conns = CounterMetricFamily("egressgw_datapath_snat_connections", "New connections SNATed per EIP",
                                    labels=["eip"])
        ep_p = CounterMetricFamily("egressgw_datapath_endpoint_packets", "Packets a worker steered into the tunnel "
                                   "per endpoint", labels=["endpoint", "vni"])
        ep_b = CounterMetricFamily("egressgw_datapath_endpoint_bytes", "Bytes a worker steered into the tunnel per "
                                   "endpoint", labels=["endpoint", "vni"])
        drops = CounterMetricFamily("egressgw_datapath_dropped_packets", "Packets dropped by the data path, by reason",
                                    labels=["role", "reason"])
        spoofed = CounterMetricFamily("egressgw_datapath_spoofed_packets", "Tunnel packets a gateway dropped as "
                                      "spoofed, per worker (inner source not a pod of that worker); only workers "
                                      "the gateway currently knows", labels=["worker"])
        readings = self._last_read
        for name, (packets, octets) in sorted(totals.items()):
            kind, _, rest = name.partition("_")
            if kind == "eip":
                eip_p.add_metric([token_to_address(rest)], packets)
                eip_b.add_metric([token_to_address(rest)], octets)
            elif kind == "conn":
                conns.add_metric([token_to_address(rest)], packets)
            elif kind == "ep":
                token, _, vni = rest.rpartition("_")
                ep_p.add_metric([token_to_address(token), vni], packets)
                ep_b.add_metric([token_to_address(token), vni], octets)
            elif kind == "drop":
                drops.add_metric([self._role, rest], packets)
            elif kind == "spoofed" and name in readings:  # bounded label: current workers only
                spoofed.add_metric([rest], packets)
        yield from (eip_p, eip_b, conns, ep_p, ep_b, drops)
        if self._role == "gateway":
            yield spoofed
        if self._policies is not None or self._policy_drops is not None:
            yield from self._policy_metrics(totals)
        if self._snat is not None:
            yield from self._snat_metrics(self._snat)

    def _policy_metrics(self, totals: Readings) -> Iterator[CounterMetricFamily]:
        """The traffic families when `policies` is set (gateway), the drops family in either case."""
        current = {n: v for n, v in totals.items() if n in self._last_read}  # bounded: counters that exist now
        drops = CounterMetricFamily("egressgw_policy_dropped_packets", "Packets of a policy's selected pods dropped, "
                                    "by reason", labels=[*POLICY_LABELS, "reason"])
        if self._policy_drops is not None:
            for labels_, packets in sorted(drop_readings(current, self._policy_drops()).items()):
                drops.add_metric(labels_.values(), packets)
        if self._policies is None:
            yield drops
            return
        traffic, conns = split_readings(current, self._policies())
        pkts = CounterMetricFamily("egressgw_policy_packets", "Packets of the flows a policy steers through this "
                                   "member (both directions), per EIP and family", labels=POLICY_LABELS)
        octets = CounterMetricFamily("egressgw_policy_bytes", "Bytes of the flows a policy steers through this member "
                                     "(both directions)", labels=POLICY_LABELS)
        new = CounterMetricFamily("egressgw_policy_connections", "New connections a policy opened through this "
                                  "member", labels=POLICY_LABELS)
        for labels, (p, b) in sorted(traffic.items()):
            pkts.add_metric(labels.values(), p)
            octets.add_metric(labels.values(), b)
        for labels, c in sorted(conns.items()):
            new.add_metric(labels.values(), c)
        yield from (pkts, octets, new, drops)

    def _snat_metrics(self, sampler: SnatPortSampler) -> Iterator[GaugeMetricFamily]:
        sample = sampler.figures()
        size = GaugeMetricFamily("egressgw_snat_port_range", "Size of the source-port range this member SNATs "
                                 "from, per EIP", labels=["eip"])
        in_use = GaugeMetricFamily("egressgw_snat_ports_in_use", "Conntrack entries SNATed to the EIP (all "
                                   "destinations)", labels=["eip"])
        top = GaugeMetricFamily("egressgw_snat_ports_in_use_max", "The most entries SNATed to the EIP toward one "
                                "destination (address, port, protocol)", labels=["eip"])
        ratio = GaugeMetricFamily("egressgw_snat_port_use_ratio_max", "ports_in_use_max / port_range (0..1): the "
                                  "fullest destination's share of the EIP's port range", labels=["eip"])
        cost = GaugeMetricFamily("egressgw_snat_sample_seconds", "Wall time of the last conntrack sample")
        cut = GaugeMetricFamily("egressgw_snat_sample_truncated", "1 when the last conntrack sample hit its entry cap "
                                "or deadline (the SNAT port figures are lower bounds)")
        if sample is not None:
            for e in sample.eips:
                size.add_metric([e.eip], e.port_range)
                in_use.add_metric([e.eip], e.in_use)
                top.add_metric([e.eip], e.in_use_max)
                ratio.add_metric([e.eip], e.ratio_max)
            cost.add_metric([], sample.seconds)
            cut.add_metric([], 1 if sample.truncated else 0)
        yield from (size, in_use, top, ratio, cost, cut)


def register(registry: Any, read: Callable[[], Readings], *, role: str, policies: PolicyCounters | None = None,
             policy_drops: PolicyDrops | None = None, snat: SnatPortSampler | None = None) -> DatapathCollector:
    """Register the data-path collector on a prometheus_client CollectorRegistry (`policies`: the current per-policy
    counters' labels - gateway; `policy_drops`: the per-policy drop counters' labels - worker; `snat`: the SNAT port
    sampler - gateway only)."""
    collector = DatapathCollector(read, role=role, policies=policies, policy_drops=policy_drops, snat=snat)
    registry.register(collector)
    return collector
