"""Agent and gateway config files: every field parsed, defaults, and bad configs rejected naming the field."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.core.errors import ConfigError
from appliance.runtime.config import (
    LogFormat,
    LogLevel,
    MetricsSettings,
    load_agent_config,
    load_gateway_config,
    parse_agent_config,
    parse_gateway_config,
)

ENV = {"NODE_NAME": "worker1"}
SRC = Path("/etc/egressgw/agent.yaml")

BGP = {"local_asn": 64513, "router_id": "198.51.100.11", "peers": [{"address": "198.51.100.1", "asn": 64512}]}


def agent(raw: Any) -> Any:
    return parse_agent_config(raw, source=SRC, env=ENV)


def gateway(raw: Any) -> Any:
    return parse_gateway_config(raw, source=SRC, env=ENV)


def test_agent_defaults() -> None:
    c = agent({})
    assert c.node_name == "worker1"
    assert c.kube.kubeconfig is None  # $KUBECONFIG, else in-cluster
    assert c.underlay.interface is None and c.underlay.addresses == ()
    assert c.tunnel.mtu is None
    assert c.metrics == MetricsSettings(host="", port=9710)
    assert c.lease_namespace == "egressgw-system"
    assert c.reconcile.resync_period_s == 30.0 and c.reconcile.debounce_ms == 50
    assert c.state_dir == Path("/var/lib/egressgw")
    assert c.log.level is LogLevel.INFO and c.log.format is LogFormat.KV


def test_node_name_falls_back_to_hostname() -> None:
    c = parse_agent_config({}, source=SRC, env={})
    assert c.node_name  # the host name, lower-cased


def test_agent_every_field() -> None:
    c = agent(
        {
            "node_name": "worker2",
            "kubeconfig": "kube/config",
            "underlay": {"interface": "eth0", "addresses": ["2001:db8:127::12", "100.127.0.12"]},
            "tunnel": {"mtu": 1400},
            "metrics": {"address": "[2001:db8:127::12]:9100"},
            "lease_namespace": "egw",
            "reconcile": {
                "resync_period_s": 5,
                "debounce_ms": 20,
                "max_delay_ms": 200,
                "backoff_initial_s": 0.1,
                "backoff_max_s": 2,
            },
            "state_dir": "/run/egressgw-w2",
            "log": {"level": "DEBUG", "format": "json"},
        }
    )
    assert c.node_name == "worker2"
    assert c.kube.kubeconfig == Path("/etc/egressgw/kube/config")  # relative to the config file
    assert c.underlay.interface == "eth0"
    assert c.underlay.addresses == (ipaddress.ip_address("100.127.0.12"), ipaddress.ip_address("2001:db8:127::12"))
    assert c.tunnel.mtu == 1400
    assert c.metrics == MetricsSettings(host="2001:db8:127::12", port=9100)
    assert str(c.metrics) == "[2001:db8:127::12]:9100"
    assert c.lease_namespace == "egw"
    assert (c.reconcile.resync_period_s, c.reconcile.debounce_ms, c.reconcile.max_delay_ms) == (5.0, 20, 200)
    assert (c.reconcile.backoff_initial_s, c.reconcile.backoff_max_s) == (0.1, 2.0)
    assert c.state_dir == Path("/run/egressgw-w2")
    assert c.log.level is LogLevel.DEBUG and c.log.format is LogFormat.JSON


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"address": "127.0.0.1:9000"}, MetricsSettings(host="127.0.0.1", port=9000)),
        ({"address": ":9000"}, MetricsSettings(host="", port=9000)),
        ({"address": ""}, None),
        ({"enabled": False}, None),
    ],
)
def test_metrics_address_forms(metrics: dict[str, Any], expected: MetricsSettings | None) -> None:
    assert agent({"metrics": metrics}).metrics == expected


def test_gateway_every_field() -> None:
    c = gateway(
        {
            "node_name": "gw1",
            "kubeconfig": "/etc/egressgw/kubeconfig",
            "uplink": {"interface": "uplink0", "addresses": ["198.51.100.11"]},
            "bgp": BGP,
            "health": {
                "interval_s": 0.5,
                "fall": 2,
                "rise": 3,
                "heartbeat_max_age_s": 5,
                "upstream_probe": {"address": "203.0.113.2", "port": 80, "timeout_ms": 200},
                "disable_file": "/run/gw1/disabled",
            },
            "gateway": "egw-a",
            "state_dir": "/run/gw1",
            "wireguard": {"interface_prefix": "wg-t-", "instance_key_dir": "wg"},
        }
    )
    assert c.uplink.interface == "uplink0"
    assert c.uplink.addresses == (ipaddress.ip_address("198.51.100.11"),)
    assert c.bgp is not None and c.bgp.local_asn == 64513 and c.bgp.peers[0].asn == 64512
    assert (c.health.interval_s, c.health.fall, c.health.rise, c.health.heartbeat_max_age_s) == (0.5, 2, 3, 5.0)
    assert c.health.upstream_probe is not None
    assert c.health.upstream_probe.address == ipaddress.ip_address("203.0.113.2")
    assert (c.health.upstream_probe.port, c.health.upstream_probe.timeout_ms) == (80, 200)
    assert c.disable_file == Path("/run/gw1/disabled")
    assert c.gateway == "egw-a"
    assert c.wireguard.interface_prefix == "wg-t-" and c.wireguard.instance_key_dir == Path("/etc/egressgw/wg")
    assert c.metrics == MetricsSettings(host="", port=9711)
    # drain timings come from bgp.drain
    assert (c.drain_timeout_s, c.drain_settle_s) == (10.0, 1.0)


def test_gateway_defaults_without_bgp() -> None:
    c = gateway({"drain": {"timeout_s": 3, "settle_s": 0.5}})
    assert c.bgp is None and c.gateway is None
    assert c.disable_file == Path("/var/lib/egressgw/maintenance")
    assert c.health.upstream_probe is None
    assert (c.drain_timeout_s, c.drain_settle_s) == (3.0, 0.5)


def test_gateway_drain_from_bgp_section() -> None:
    c = gateway({"bgp": {**BGP, "drain": {"timeout_s": 5, "settle_s": 2}}})
    assert (c.drain_timeout_s, c.drain_settle_s) == (5.0, 2.0)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"nodename": "x"}, "nodename"),
        ({"node_name": "Worker_1"}, "node_name"),
        ({"node_name": 7}, "node_name"),
        ({"kubeconfig": ""}, "kubeconfig"),
        ({"kube_context": "lab"}, "kube_context"),
        ({"underlay": []}, "underlay"),
        ({"underlay": {"iface": "eth0"}}, "underlay.iface"),
        ({"underlay": {"interface": "a/b"}}, "underlay.interface"),
        ({"underlay": {"addresses": "100.127.0.11"}}, "underlay.addresses"),
        ({"underlay": {"addresses": ["100.127.0.300"]}}, "underlay.addresses[0]"),
        ({"underlay": {"addresses": ["100.127.0.11", "100.127.0.12"]}}, "underlay.addresses[1]"),
        ({"tunnel": {"mtu": 100}}, "tunnel.mtu"),
        ({"tunnel": {"vni": 1}}, "tunnel.vni"),
        ({"metrics": {"address": "localhost"}}, "metrics.address"),
        ({"metrics": {"address": ":70000"}}, "metrics.address"),
        ({"metrics": {"address": "[::zz]:80"}}, "metrics.address"),
        ({"metrics": {"enabled": "no"}}, "metrics.enabled"),
        ({"lease_namespace": "Bad_NS"}, "lease_namespace"),
        ({"reconcile": {"resync_period_s": 0}}, "reconcile.resync_period_s"),
        ({"reconcile": {"debounce_ms": -1}}, "reconcile.debounce_ms"),
        ({"reconcile": {"debounce_ms": 100, "max_delay_ms": 50}}, "reconcile.max_delay_ms"),
        ({"reconcile": {"backoff_initial_s": 5, "backoff_max_s": 1}}, "reconcile.backoff_max_s"),
        ({"reconcile": {"debounce_ms": True}}, "reconcile.debounce_ms"),
        ({"state_dir": None}, "state_dir"),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"log": {"format": "xml"}}, "log.format"),
        ({"log": {"colour": True}}, "log.colour"),
        ({"wireguard": {"instance_key_dir": "/etc/x"}}, "wireguard.instance_key_dir"),  # gateways only
    ],
)
def test_bad_agent_field_is_named(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        agent(raw)
    assert e.value.field == field


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"underlay": {}}, "underlay"),  # the agent's key, not the gateway's
        ({"uplink": {"interface": "x" * 16}}, "uplink.interface"),
        ({"bgp": "yes"}, "bgp"),
        ({"bgp": {**BGP, "local_asn": 0}}, "bgp.local_asn"),
        ({"bgp": {**BGP, "peers": [{"address": "198.51.100.1"}]}}, "bgp.peers[0].asn"),
        ({"bgp": BGP, "drain": {"timeout_s": 3}}, "drain"),
        ({"drain": {"timeout_s": 1, "settle_s": 2}}, "drain.settle_s"),
        ({"drain": {"wait": 1}}, "drain.wait"),
        ({"health": {"fall": 0}}, "health.fall"),
        ({"health": {"rise": "2"}}, "health.rise"),
        ({"health": {"interval_s": 0}}, "health.interval_s"),
        ({"health": {"heartbeat_max_age_s": 0.1}}, "health.heartbeat_max_age_s"),
        ({"health": {"upstream_probe": {"port": 80}}}, "health.upstream_probe.address"),
        ({"health": {"upstream_probe": {"address": "x"}}}, "health.upstream_probe.address"),
        ({"health": {"upstream_probe": {"address": "203.0.113.2", "port": 0}}}, "health.upstream_probe.port"),
        ({"health": {"upstream_probe": {"address": "203.0.113.2", "proto": "tcp"}}}, "health.upstream_probe.proto"),
        ({"health": {"disable_file": ""}}, "health.disable_file"),
        ({"gateway": "EGW"}, "gateway"),
        ({"wireguard": {"interface_prefix": "much-too-long"}}, "wireguard.interface_prefix"),
        ({"wireguard": {"keys": "/x"}}, "wireguard.keys"),
    ],
)
def test_bad_gateway_field_is_named(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        gateway(raw)
    assert e.value.field == field


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_agent_config(tmp_path / "missing.yaml")
    assert e.value.field == "(file)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("node_name: [\n")
    with pytest.raises(ConfigError) as e:
        load_agent_config(bad)
    assert "line" in e.value.message
    top = tmp_path / "list.yaml"
    top.write_text("- a\n")
    with pytest.raises(ConfigError) as e:
        load_gateway_config(top)
    assert e.value.field == "(top level)"


def test_shipped_example_configs_load() -> None:
    root = Path(__file__).resolve().parents[2]
    a = load_agent_config(root / "deploy/config/agent.yaml", env=ENV)
    g = load_gateway_config(root / "deploy/config/gateway.yaml", env=ENV)
    assert a.kube.kubeconfig is None or a.kube.kubeconfig.is_absolute()
    assert g.bgp is not None


@pytest.mark.parametrize(
    ("command", "body", "field"),
    [
        ("agent", {"resync": 5}, "resync"),
        ("gateway", {"bgp": {**BGP, "peers": [{"address": "198.51.100.1", "asn": "x"}]}}, "bgp.peers[0].asn"),
    ],
)
def test_commands_exit_2_naming_the_field(tmp_path: Path, command: str, body: dict[str, Any], field: str) -> None:
    path = tmp_path / f"{command}.yaml"
    path.write_text(textwrap.dedent(yaml.safe_dump(body)))
    proc = subprocess.run(
        [sys.executable, "-m", "appliance.cli", command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"config error: {path}: {field}: ")


def embedded_config(role: str, tmp_path: Path) -> tuple[list[Any], Path]:
    """The documents of deploy/<role>/daemonset.yaml, and the config file deploy/kustomization.yaml makes its
    ConfigMap from (deploy/config/agent.yaml, deploy/config/gateway-node.yaml)."""
    root = Path(__file__).resolve().parents[2]
    docs = list(yaml.safe_load_all((root / f"deploy/{role}/daemonset.yaml").read_text()))
    return docs, root / "deploy/config" / {"agent": "agent.yaml", "gateway": "gateway-node.yaml"}[role]


def test_daemonset_embedded_agent_config_loads(tmp_path: Path) -> None:
    _, path = embedded_config("agent", tmp_path)
    c = load_agent_config(path, env={"NODE_NAME": "worker1"})
    assert c.node_name == "worker1" and c.kube.kubeconfig is None and c.log.format is LogFormat.JSON


def test_gateway_daemonset_embedded_config_loads(tmp_path: Path) -> None:
    docs, path = embedded_config("gateway", tmp_path)
    c = load_gateway_config(path, env={"NODE_NAME": "gw1"})
    assert c.node_name == "gw1" and c.bgp is not None and c.bgp.bfd.enabled
    daemonset = next(d for d in docs if d["kind"] == "DaemonSet")
    grace = daemonset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > c.drain_timeout_s + c.drain_settle_s  # SIGTERM drains before the kubelet kills


def test_router_id_from_the_uplink_when_left_out() -> None:
    from appliance.cli.gateway import StartError, with_router_id
    from appliance.runtime.underlay import Underlay

    bgp = {"local_asn": 64513, "peers": [{"address": "198.51.100.1", "asn": 64512}]}
    c = gateway({"bgp": bgp})
    assert c.router_id_from_uplink
    v4 = Underlay(
        interface="eth1",
        index=2,
        mtu=1500,
        addresses=(ipaddress.ip_address("198.51.100.12"), ipaddress.ip_address("2001:db8:198::12")),
    )
    filled = with_router_id(c, v4)
    assert filled.bgp is not None and str(filled.bgp.router_id) == "198.51.100.12"
    v6_only = Underlay(interface="eth1", index=2, mtu=1500, addresses=(ipaddress.ip_address("2001:db8:198::12"),))
    with pytest.raises(StartError):
        with_router_id(c, v6_only)
    explicit = gateway({"bgp": BGP})
    assert not explicit.router_id_from_uplink and with_router_id(explicit, v4) is explicit
