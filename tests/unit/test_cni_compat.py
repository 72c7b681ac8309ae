"""CNI compatibility of the planners' defaults (docs/operations.md "CNI compatibility"), and the lab's stand-ins.

The worker's marks must stay out of the bits the CNIs and kube-proxy rewrite or match (Calico's default mask
0xffff0000, kube-proxy 0x4000/0x8000, Cilium 0x0f00), its rules must only look at our own bits, and the identity
SNAT must precede every NAT chain a CNI installs. The e2e CNI matrix (tests/e2e/test_f_cni_matrix.py) runs the same
defaults against the stand-ins' real rules.
"""

from __future__ import annotations

import json
import re
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
import yaml

from appliance.core.errors import ConfigError
from appliance.datapath.plan.gateway import MAX_WORKERS, GatewaySettings
from appliance.datapath.plan.nat_order import WORKER_SNAT_PRIORITY, foreign_nat_chains
from appliance.datapath.plan.nft_rendering import mark
from appliance.datapath.plan.tunnel import GATEWAY_MARKS, MarkSettings
from appliance.datapath.plan.worker import SkipReason, WorkerSettings, plan_worker
from appliance.datapath.plan.worker_nft import worker_table
from appliance.runtime.config import parse_agent_config, parse_gateway_config
from lab import cni, topogen
from lab.cni import CniKind, CniNetworks
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent

#: bits other software on a worker sets or tests: Calico (default IptablesMarkMask), kube-proxy (masquerade, drop),
#: Cilium (magic marks)
FOREIGN_BITS = {"calico": 0xFFFF0000, "kube-proxy": 0x4000 | 0x8000, "cilium": 0x0F00}
U4 = ip_address("100.127.0.11")


def plan(settings: WorkerSettings | None = None,  # type: ignore[no-untyped-def]
         eips: tuple[str, ...] = ("203.0.113.130",)):
    gws = [Gw(name=f"g{i}", eips=(e,)) for i, e in enumerate(eips)]
    sels = [Sel(pod_ip=f"100.64.1.{10 + i}", gateway=f"g{i}", eip=e) for i, e in enumerate(eips)]
    sels.append(Sel(pod_ip="100.64.1.99", gateway="gone", eip="203.0.113.250"))  # no gateway: the drop mark
    return plan_worker(build_intent(gws, sels), node="worker1", underlay=U4, settings=settings or WorkerSettings())


@pytest.mark.parametrize("owner", sorted(FOREIGN_BITS))
def test_default_worker_marks_stay_out_of_every_cni_bit(owner: str) -> None:
    p = plan()
    marks = {e.mark for e in p.steer} | {e.mark for e in p.endpoints} | {p.marks.drop_mark}
    assert p.marks.drop_mark in marks and len(marks) >= 2
    assert p.marks.owned_mask & FOREIGN_BITS[owner] == 0
    assert all(m & FOREIGN_BITS[owner] == 0 for m in marks), {hex(m) for m in marks}
    # the ip rules: what they match and what they compare
    for rule in p.kernel.rules:
        if not rule.nop:
            assert (rule.fwmark | rule.mask) & FOREIGN_BITS[owner] == 0, rule


def test_worker_rules_ignore_foreign_bits_set_after_our_mark() -> None:
    p = plan()
    owned = p.marks.owned_mask
    per_endpoint = [r for r in p.kernel.rules if r.table and r.fwmark not in (0, p.marks.mark_base)]
    assert per_endpoint and all(r.mask == owned for r in per_endpoint)
    chains = worker_table(p).chains
    # every mark constant in the ruleset is ours; ct mark and the counter lookup take only our bits
    for const in re.findall(r"0x[0-9a-f]{8}", chains):
        assert int(const, 16) & ~owned == 0, const
    assert f"ct mark set meta mark & {mark(owned)}" in chains
    assert f"counter name meta mark & {mark(owned)} map @endpoint_counters" in chains


def test_a_custom_layout_is_honoured_and_slots_fit_it() -> None:
    wide = MarkSettings(mark_base=0x00100000, mark_mask=0x00300000, slot_mask=0x3FF)
    p = plan(WorkerSettings(marks=wide))
    assert all(e.mark & wide.mark_mask == wide.mark_base and 1 <= e.mark & wide.slot_mask <= wide.capacity
               for e in p.endpoints)
    assert "meta mark & 0x00300000 == 0x00100000" in worker_table(p).chains
    tiny = MarkSettings(mark_base=0x2000, mark_mask=0x3000, slot_mask=0x3)  # 2 slots
    eips = ("203.0.113.130", "203.0.113.131", "203.0.113.132")
    full = plan(WorkerSettings(marks=tiny), eips=eips)
    # a full layout never fails the plan: two endpoints get the slots, the third one's pods are skipped and said so
    assert sorted(e.slot for e in full.endpoints) == [1, 2]
    exhausted = [s for s in full.skipped if s.reason is SkipReason.ENDPOINT_SLOTS_EXHAUSTED]
    assert exhausted
    steered_marks = {e.mark for e in full.steer}
    assert steered_marks <= {e.mark for e in full.endpoints} | {tiny.drop_mark}
    assert not {s.pod_ip for s in exhausted} & {e.pod_ip for e in full.steer}


def test_gateway_keeps_a_slot_per_worker() -> None:
    assert GatewaySettings().marks == GATEWAY_MARKS
    assert GATEWAY_MARKS.capacity >= MAX_WORKERS
    assert MarkSettings().capacity == 254


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"mark_base": 0x1000_0000_0}, "mark_base"),
    ({"mark_base": 0x4000}, "mark_base"),  # outside the mask
    ({"mark_base": 0, "mark_mask": 0x3000}, "mark_base"),
    ({"slot_mask": 0xF0}, "slot_mask"),  # not low contiguous bits
    ({"slot_mask": 0x1FFFF}, "slot_mask"),
    ({"slot_mask": 0x1FFF}, "slot_mask"),  # overlaps the identity bits
    ({"mark_mask": -1}, "mark_mask"),
])
def test_mark_settings_refuse_bad_layouts_naming_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        MarkSettings(**kwargs)


def test_marks_are_configurable_per_role_and_validated(tmp_path: Path) -> None:
    src = tmp_path / "c.yaml"
    agent = parse_agent_config({"marks": {"mark_base": 0x100000, "mark_mask": 0x300000}}, source=src, env={})
    assert agent.marks == MarkSettings(mark_base=0x100000, mark_mask=0x300000)
    assert parse_agent_config({}, source=src, env={}).marks == MarkSettings()
    gw = yaml.safe_load("marks: {slot_mask: 0xfff}")
    assert parse_gateway_config(gw, source=src, env={}).marks.slot_mask == 0xFFF
    assert parse_gateway_config({}, source=src, env={}).marks == GATEWAY_MARKS
    with pytest.raises(ConfigError, match=r"marks\.slot_mask"):
        parse_agent_config({"marks": {"slot_mask": 0x3000}}, source=src, env={})
    with pytest.raises(ConfigError, match=r"marks\.mark_mask"):
        parse_agent_config({"marks": {"mark_mask": "0x3000"}}, source=src, env={})
    with pytest.raises(ConfigError, match=r"marks"):
        parse_agent_config({"marks": {"mask": 1}}, source=src, env={})


def test_identity_snat_precedes_every_cni_nat_chain() -> None:
    # what `nft -j list chains` shows for iptables-nft's nat table (Flannel, Calico, Cilium, kube-proxy) and a
    # firewalld-like chain: none runs at or before our identity SNAT
    chains = {"nftables": [
        {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "type": "nat", "hook": "postrouting",
                   "prio": 100}},
        {"chain": {"family": "ip6", "table": "nat", "name": "POSTROUTING", "type": "nat", "hook": "postrouting",
                   "prio": 100}},
        {"chain": {"family": "inet", "table": "firewalld", "name": "nat_POSTROUTING", "type": "nat",
                   "hook": "postrouting", "prio": 110}},
        {"chain": {"family": "inet", "table": "lab_cni", "name": "postrouting", "type": "nat", "hook": "postrouting",
                   "prio": 100}},
    ]}
    assert foreign_nat_chains(json.dumps(chains)) == ()
    assert WORKER_SNAT_PRIORITY < -150  # ahead of mangle too: nothing between our mark and our SNAT rewrites NAT


NETS = CniNetworks(pods=(ip_network("100.64.1.0/24"), ip_network("2001:db8:64:1::/64")),
                   cluster=(ip_network("100.64.0.0/16"), ip_network("2001:db8:64::/48")),
                   services=(ip_network("100.100.0.0/16"),))


def _text(kind: CniKind) -> str:
    return "\n".join(f"{' '.join(s.argv)}\n{s.input}" for s in cni.steps(kind, NETS))


@pytest.mark.parametrize("kind", [k for k in CniKind if k is not CniKind.NFT])
def test_every_iptables_stand_in_carries_kube_proxy_in_both_families(kind: CniKind) -> None:
    steps = cni.steps(kind, NETS)
    backend = "legacy" if kind is CniKind.FLANNEL_LEGACY else "nft"
    tools = [s.argv[0] for s in steps if "restore" in s.argv[0] and s.argv[0] != "ipset"]
    assert tools == [f"iptables-{backend}-restore", f"ip6tables-{backend}-restore"]
    for s in steps:
        if s.argv[0] in tools:
            assert "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN" in s.input
            assert "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000" in s.input
            assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000" in s.input


def test_stand_in_shapes() -> None:
    flannel = _text(CniKind.FLANNEL_NFT)
    assert "-A FLANNEL-POSTRTG -s 100.64.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully" in flannel
    assert "-A FLANNEL-POSTRTG -s 2001:db8:64::/48 ! -d ff00::/8 -j MASQUERADE --random-fully" in flannel
    assert " -o " not in flannel.split("*nat")[1].split("COMMIT")[0]  # no output interface
    calico = _text(CniKind.CALICO)
    assert "create cali40masq-ipam-pools hash:net family inet\nadd cali40masq-ipam-pools 100.64.0.0/16" in calico
    assert ("-m set --match-set cali60masq-ipam-pools src -m set ! --match-set cali60all-ipam-pools dst "
            "-j MASQUERADE") in calico
    masks = {int(m, 16) for m in re.findall(r"--set-xmark 0x[0-9a-f]+/(0x[0-9a-f]+)", calico)}
    assert masks and all(m & ~cni.CALICO_MASK == 0 for m in masks)
    cilium = _text(CniKind.CILIUM)
    assert "-A CILIUM_POST_nat -s 100.64.1.0/24 ! -d 100.64.0.0/16 ! -o cilium_+" in cilium
    assert "-j MARK --set-xmark 0xc00/0xf00" in cilium
    nft = _text(CniKind.NFT)
    assert "oifname eth1 ip saddr 100.64.1.0/24" in nft


def test_topology_label_selects_the_stand_in() -> None:
    data = topogen.build(name="t", gateways=2, cnis=("calico", "flannel-legacy"))
    nodes = data["topology"]["nodes"]
    assert nodes["worker1"]["labels"][cni.LABEL] == "calico"
    assert nodes["worker2"]["labels"][cni.LABEL] == "flannel-legacy"
    assert any(line.startswith("{python} -m lab.cni install calico --pods 100.64.1.0/24")
               for line in nodes["worker1"]["exec"])
    assert not any("lab_cni" in line for line in nodes["worker1"]["exec"])
    default = topogen.build(name="t", gateways=2)["topology"]["nodes"]["worker1"]
    assert cni.LABEL not in default["labels"] and any("lab_cni" in line for line in default["exec"])
    with pytest.raises(ValueError):
        topogen.build(name="t", gateways=2, cnis=("weave",))
    shipped = yaml.safe_load((topogen.HERE / "cni-mixed.clab.yml").read_text())
    assert shipped["topology"] == topogen.build(**topogen.FILES["cni-mixed.clab.yml"][1])["topology"]
