"""The whole egressgw system in a lab: the API server, gateway members, worker agents, pods and traffic.

`System.up(topology)` brings up a lab topology (see lab/topologies), reaches its kube-apiserver through a loopback
forwarder (the host gets no route into the lab), registers the lab's workers and gateways as Kubernetes Nodes,
starts `egressgw gateway` in every gateway namespace and `egressgw agent` in every worker namespace, and offers
what scenarios need: create pods (Pod objects whose IPs are the lab pod namespaces' addresses), apply manifests,
ask the external server which source address it saw, run the 10 ms probe, cut links and kill members.

Everything about the network comes from the topology file: node roles and their details from the `egressgw.*` labels
(docs/lab.md), addresses from the nodes' `ip addr add` exec lines, the API server's addresses from its
`@kube-apiserver --address ...` command line. The cluster objects the callers apply (gateway name, pools, default EIPs,
tunnel family) come from the topology's scenario file (`lab.scenario_spec`, `system.scenario`).

Used by the demo (`egressgw lab demo`), the end-to-end tests (tests/e2e) and the failover/convergence benchmarks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config

from appliance.core.model import IPAddress
from appliance.core.waiting import poll_until, wait_until
from lab.kube_apiserver import install_service_accounts, service_account_kubeconfig
from lab.netns_forward import ForwardSpec, NetnsForwarder
from lab.runner import Lab
from lab.scenario_spec import ScenarioSpec, default_scenario_path, load_scenario
from lab.topology import Topology

TOPOLOGIES = Path(__file__).parent / "topologies"
DEFAULT_TOPOLOGY = TOPOLOGIES / "default.clab.yml"
GATEWAY_LABEL = ("egressgw.io/gateway", "true")
_ADDR_RE = re.compile(r"ip (?:-[46] )?addr(?:ess)? add (\S+) dev (\S+)")
#: the external server's port when its node has no `egressgw.ext-port` label (lab.extserver's default)
DEFAULT_EXT_PORT = 7000
#: `ip route show proto X` of the routes the router's BGP daemon installed, per `egressgw.router-kind`
ROUTE_PROTO = {"bird": "bird", "frr": "bgp"}


class LabTopologyError(ValueError):
    """The topology lacks something the harness needs (a role, a label, an address); the message names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LabNode:
    name: str
    role: str
    #: addresses configured by the topology: interface -> interfaces (with prefix length)
    addresses: tuple[tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface], ...]
    worker: str = ""  # for pods: the worker they sit behind
    labels: tuple[tuple[str, str], ...] = ()

    def label(self, key: str, default: str = "") -> str:
        return dict(self.labels).get(key, default)

    def interface(self, label: str) -> str:
        """The interface named by label `label` (e.g. `egressgw.uplink`), else the one holding the first address."""
        named = self.label(label)
        if named:
            return named
        if not self.addresses:
            raise LabTopologyError(f"node {self.name}: no `ip addr add` exec line, and no {label} label")
        return self.addresses[0][0]

    def asn(self) -> int:
        text = self.label("egressgw.asn")
        if not text.isdigit():
            raise LabTopologyError(f"node {self.name}: label egressgw.asn {text or '(missing)'!r} must be an AS number")
        return int(text)

    def address(self, version: int, interface: str | None = None) -> IPAddress:
        for ifname, ifc in self.addresses:
            if ifc.version == version and (interface is None or ifname == interface):
                return ifc.ip
        raise LookupError(f"{self.name} has no IPv{version} address" + (f" on {interface}" if interface else ""))

    def has(self, version: int) -> bool:
        return any(ifc.version == version for _, ifc in self.addresses)


def lab_nodes(lab: Lab) -> dict[str, LabNode]:
    """Roles and addresses of the lab's nodes, read from the topology (labels `egressgw.role`, exec lines)."""
    return topology_nodes(lab.topology)


def topology_nodes(topology: Topology) -> dict[str, LabNode]:
    """Roles, labels and addresses of a topology's linux nodes (pure: from the file, nothing running)."""
    out: dict[str, LabNode] = {}
    for n in topology.linux_nodes:
        labels = dict(n.labels)
        addrs = []
        for line in n.exec:
            m = _ADDR_RE.search(line)
            if m:
                addrs.append((m.group(2), ipaddress.ip_interface(m.group(1))))
        out[n.name] = LabNode(name=n.name, role=labels.get("egressgw.role", ""), addresses=tuple(addrs),
                              worker=labels.get("egressgw.worker", ""), labels=tuple(labels.items()))
    return out


@dataclass
class System:
    lab: Lab
    forwarder: NetnsForwarder
    kubeconfig: Path
    nodes: dict[str, LabNode]
    api: Any  # kubernetes.client.ApiClient
    scenario: ScenarioSpec
    gateway_config: dict[str, Any] = field(default_factory=dict)
    _custom: Any = None
    _core: Any = None

    # ---- bring-up ------------------------------------------------------------------------------------------
    @classmethod
    def up(cls, topology: str | Path = DEFAULT_TOPOLOGY, scenario: str | Path | ScenarioSpec | None = None, *,
           prefix: str | None = None, start_services: bool = True,
           progress: Callable[[str], None] = lambda _m: None,
           gateway_overrides: Mapping[str, Any] | None = None) -> System:
        """`scenario`: a ScenarioSpec, a scenario file, or None for the topology's own (`NAME.scenario.yml`)."""
        spec = scenario if isinstance(scenario, ScenarioSpec) else load_scenario(
            scenario if scenario is not None else default_scenario_path(topology))
        progress("bringing up the lab topology (namespaces, links, routers, API server)")
        lab = Lab.up(topology, prefix=prefix)
        try:
            return cls._attach(lab, spec, start_services=start_services, progress=progress,
                               gateway_overrides=gateway_overrides)
        except BaseException:
            lab.down()
            raise

    @classmethod
    def _attach(cls, lab: Lab, scenario: ScenarioSpec, *, start_services: bool, progress: Callable[[str], None],
                gateway_overrides: Mapping[str, Any] | None) -> System:
        # the lab's API server has a self-signed certificate; the kubeconfig says insecure-skip-tls-verify
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        nodes = lab_nodes(lab)
        api_node = _one_role(nodes, "kube-api")
        inner = yaml.safe_load(lab.kubeconfig().read_text())
        server = inner["clusters"][0]["cluster"]["server"]  # https://<the first --address>:<port>
        port = int(server.rsplit(":", 1)[1])
        addresses = api_addresses(lab, api_node.name)
        if not addresses:
            raise LabTopologyError(f"node {api_node.name}: no @kube-apiserver daemon with --address")
        # the forwarder connects from inside the API node's namespace: its own first address is always reachable
        fwd = NetnsForwarder(ForwardSpec(netns=lab.netns(api_node.name), upstream=(addresses[0], port)))
        outer = json.loads(json.dumps(inner))
        outer["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{fwd.port}"
        host_kubeconfig = lab.state_dir / "kubeconfig.host"
        host_kubeconfig.write_text(yaml.safe_dump(outer))
        api = config.new_client_from_config(config_file=str(host_kubeconfig))
        sys_ = cls(lab=lab, forwarder=fwd, kubeconfig=host_kubeconfig, nodes=nodes, api=api, scenario=scenario)
        sys_._custom = client.CustomObjectsApi(api)
        sys_._core = client.CoreV1Api(api)
        sys_.gateway_config = dict(gateway_overrides or {})
        progress("registering the lab's workers and gateways as Kubernetes nodes")
        sys_._register_nodes()
        sys_.ensure_namespace("egressgw-system")
        progress("applying deploy/rbac/ and minting the agent and gateway ServiceAccount tokens")
        sys_._install_service_accounts(admin_token=inner["users"][0]["user"]["token"], server=server)
        if start_services:
            progress("starting egressgw gateway on " + ", ".join(sys_.gateways))
            for gw in sys_.gateways:
                sys_.start_gateway(gw)
            progress("starting egressgw agent on " + ", ".join(sys_.workers))
            for w in sys_.workers:
                sys_.start_agent(w)
        return sys_

    @property
    def workers(self) -> list[str]:
        return sorted(n for n, v in self.nodes.items() if v.role == "worker")

    @property
    def gateways(self) -> list[str]:
        return sorted(n for n, v in self.nodes.items() if v.role == "gateway")

    @property
    def pods(self) -> list[str]:
        return sorted(n for n, v in self.nodes.items() if v.role == "pod")

    def _register_nodes(self) -> None:
        for name in self.workers + self.gateways:
            node = self.nodes[name]
            labels = {"kubernetes.io/hostname": name}
            if node.role == "gateway":
                labels[GATEWAY_LABEL[0]] = GATEWAY_LABEL[1]
            pod_cidrs = self._pod_cidrs(name)
            body: dict[str, Any] = {"apiVersion": "v1", "kind": "Node",
                                    "metadata": {"name": name, "labels": labels},
                                    "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs} if pod_cidrs else {}}
            with contextlib.suppress(Exception):
                self._core.create_node(body)
            bridge = node.label("egressgw.pod-bridge", "cni0")
            addrs = [{"type": "InternalIP", "address": str(ifc.ip)} for ifname, ifc in node.addresses
                     if ifname not in (bridge, "lo")]
            addrs.append({"type": "Hostname", "address": name})
            self._core.patch_node_status(name, {"status": {"addresses": addrs, "conditions": [
                {"type": "Ready", "status": "True", "reason": "LabNode", "message": "lab namespace"}]}})

    def _install_service_accounts(self, *, admin_token: str, server: str) -> None:
        """The shipped RBAC (deploy/rbac/, unchanged) and one kubeconfig per role with its ServiceAccount's token:
        the services never run as admin (`role_kubeconfig`); the harness itself stays admin, like a user."""
        tokens = install_service_accounts(f"https://127.0.0.1:{self.forwarder.port}", admin_token)
        for role, token in tokens.items():
            service_account_kubeconfig(self.role_kubeconfig(role), server, token, role)

    def role_kubeconfig(self, role: str) -> Path:
        """The kubeconfig the lab's `egressgw agent` (role "agent") or `egressgw gateway` ("gateway") runs with."""
        return self.lab.state_dir / f"kubeconfig.{role}"

    def _pod_cidrs(self, worker: str) -> list[str]:
        bridge = self.nodes[worker].label("egressgw.pod-bridge", "cni0")
        return [str(ifc.network) for ifname, ifc in self.nodes[worker].addresses if ifname == bridge]

    # ---- services ------------------------------------------------------------------------------------------
    def _config_common(self, node: str) -> dict[str, Any]:
        return {
            "node_name": node,
            "kubeconfig": str(self.role_kubeconfig("gateway" if self.nodes[node].role == "gateway" else "agent")),
            "state_dir": str(self.lab.node_dir(node) / "egressgw"),
            "metrics": {"address": ""},
            "reconcile": {"resync_period_s": 10},
            "log": {"level": "info", "format": "kv"},
        }

    def gateway_config_for(self, gw: str) -> dict[str, Any]:
        node = self.nodes[gw]
        uplink = self.uplink(gw)
        router = self.nodes[self.router]
        cfg = self._config_common(gw)
        peers: list[dict[str, Any]] = [{"address": peer, "asn": router.asn()}
                                       for version in (4, 6) if (peer := self._router_address(gw, version))]
        if not peers:
            raise LabTopologyError(f"gateway {gw}: no router address on the subnet of its uplink {uplink}")
        cfg.update({
            "uplink": {"interface": uplink},
            "bgp": {"local_asn": node.asn(), "router_id": _router_id(node, uplink), "peers": peers,
                    "bfd": {"enabled": True, "min_tx_ms": 50, "min_rx_ms": 50, "multiplier": 3},
                    "drain": {"timeout_s": 10, "settle_s": 1.0}},
            "health": {"interval_s": 0.2, "fall": 2, "rise": 2},
        })
        for k, v in self.gateway_config.items():
            cfg[k] = v
        return cfg

    def _router_address(self, gw: str, version: int) -> str:
        """The router's address on the subnet of `gw`'s uplink address of family `version` ("" when none)."""
        node, router = self.nodes[gw], self.nodes[self.router]
        uplink = self.uplink(gw)
        for ifname, ifc in node.addresses:
            if ifname == uplink and ifc.version == version:
                for _, r in router.addresses:
                    if r.version == version and r.ip in ifc.network:
                        return str(r.ip)
        return ""

    def agent_config_for(self, worker: str) -> dict[str, Any]:
        cfg = self._config_common(worker)
        cfg["underlay"] = {"interface": self.underlay(worker)}
        return cfg

    # ---- what the topology says ------------------------------------------------------------------------------
    @property
    def router(self) -> str:
        return _one_role(self.nodes, "router").name

    @property
    def router_kind(self) -> str:
        """`bird` or `frr`: the router's `egressgw.router-kind` label, else guessed from its daemons."""
        kind = self.nodes[self.router].label("egressgw.router-kind")
        if not kind:
            kind = "bird" if self.lab.daemon(self.router, "bird") is not None else "frr"
        if kind not in ROUTE_PROTO:
            raise LabTopologyError(f"node {self.router}: label egressgw.router-kind {kind!r} must be bird or frr")
        return kind

    def uplink(self, gw: str) -> str:
        """The gateway's interface facing the router (`egressgw.uplink`, else the one holding its first address)."""
        return self.nodes[gw].interface("egressgw.uplink")

    def underlay(self, worker: str) -> str:
        """The worker's underlay interface (`egressgw.underlay`, else the one holding its first address)."""
        return self.nodes[worker].interface("egressgw.underlay")

    @property
    def external(self) -> LabNode:
        return _one_role(self.nodes, "external")

    def external_address(self, version: int) -> str:
        """The external server's (first) address of family `version`, from its exec lines."""
        return str(self.external.address(version))

    @property
    def ext_port(self) -> int:
        text = self.external.label("egressgw.ext-port", str(DEFAULT_EXT_PORT))
        if not text.isdigit():
            raise LabTopologyError(f"node {self.external.name}: label egressgw.ext-port {text!r} must be a port")
        return int(text)

    def gateway_address(self, gw: str) -> str:
        """The gateway's uplink address the router names as next hop (IPv4 when it has one, else IPv6)."""
        node, uplink = self.nodes[gw], self.uplink(gw)
        for version in (4, 6):
            with contextlib.suppress(LookupError):
                return str(node.address(version, uplink))
        raise LabTopologyError(f"gateway {gw}: no address on its uplink {uplink}")

    @staticmethod
    def python_module(module: str, *args: str) -> list[str]:
        """argv running `python -m module args` with this interpreter (the lab's namespaces share the filesystem)."""
        return [sys.executable, "-m", module, *args]

    def _egressgw_argv(self, *args: str) -> list[str]:
        return self.python_module("appliance.cli", *args)

    def start_gateway(self, gw: str) -> None:
        path = self.lab.node_dir(gw) / "gateway.yaml"
        path.write_text(yaml.safe_dump(self.gateway_config_for(gw)))
        self.lab.start_daemon(gw, "egressgw-gateway", self._egressgw_argv("gateway", "--config", str(path)))

    def start_agent(self, worker: str) -> None:
        path = self.lab.node_dir(worker) / "agent.yaml"
        path.write_text(yaml.safe_dump(self.agent_config_for(worker)))
        self.lab.start_daemon(worker, "egressgw-agent", self._egressgw_argv("agent", "--config", str(path)))

    def stop_service(self, node: str, *, sig: int = 15, grace: float = 15.0) -> None:
        name = "egressgw-gateway" if self.nodes[node].role == "gateway" else "egressgw-agent"
        self.lab.stop_daemon(node, name, sig=sig, grace=grace)

    def drain(self, gw: str) -> str:
        path = self.lab.node_dir(gw) / "gateway.yaml"
        res = self.lab.exec(gw, self._egressgw_argv("gateway", "drain", "--config", str(path)), timeout=60)
        return str(res.stdout)

    # ---- cluster objects ------------------------------------------------------------------------------------
    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}}
        try:
            self._core.create_namespace(body)
        except Exception as exc:
            if getattr(exc, "status", None) != 409:
                raise
            self._core.patch_namespace(name, {"metadata": {"labels": dict(labels or {})}})

    def create_pod(self, namespace: str, name: str, lab_pod: str, labels: Mapping[str, str] | None = None) -> None:
        """A Pod object standing for the lab pod namespace `lab_pod` (its IPs, its worker)."""
        node = self.nodes[lab_pod]
        self._core.create_namespaced_pod(namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {"nodeName": node.worker, "containers": [{"name": "app", "image": "lab"}]},
        })
        ips = [str(ifc.ip) for _, ifc in node.addresses]
        self._core.api_client.call_api(
            f"/api/v1/namespaces/{namespace}/pods/{name}/status", "PATCH",
            header_params={"Content-Type": "application/merge-patch+json"},
            body={"status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}},
            auth_settings=["BearerToken"], _preload_content=False)

    def label_pod(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        """Replace the pod's labels."""
        current = self._core.read_namespaced_pod(name, namespace).metadata.labels or {}
        patch: dict[str, str | None] = {k: None for k in current if k not in labels}
        patch.update(labels)
        self._core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": patch}})

    def delete_pod(self, namespace: str, name: str) -> None:
        self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    def apply(self, objects: Sequence[Mapping[str, Any]]) -> None:
        """Create or replace egressgw.io objects (and Namespaces)."""
        for obj in objects:
            kind = obj["kind"]
            if kind == "Namespace":
                self.ensure_namespace(obj["metadata"]["name"], obj["metadata"].get("labels"))
                continue
            plural = kind.lower() + ("es" if kind.endswith("s") else "s")
            if kind == "EgressClusterPolicy":
                plural = "egressclusterpolicies"
            if kind == "EgressPolicy":
                plural = "egresspolicies"
            ns = obj["metadata"].get("namespace")
            group, version = obj["apiVersion"].split("/")
            args: tuple[Any, ...] = (group, version, ns, plural) if ns else (group, version, plural)
            try:
                if ns:
                    self._custom.create_namespaced_custom_object(*args, obj)
                else:
                    self._custom.create_cluster_custom_object(*args, obj)
            except Exception as exc:
                if getattr(exc, "status", None) != 409:
                    raise
                self._replace(args, obj)

    def _replace(self, args: tuple[Any, ...], obj: Mapping[str, Any], attempts: int = 20) -> None:
        """Replace an existing object with `obj`. The status writers update the same objects, so a replace can meet
        a newer resourceVersion (409 Conflict): read it again and retry."""
        name, namespaced = obj["metadata"]["name"], len(args) == 4
        for attempt in range(attempts):
            current = (self._custom.get_namespaced_custom_object(*args, name) if namespaced
                       else self._custom.get_cluster_custom_object(*args, name))
            body = dict(obj)
            body["metadata"] = dict(obj["metadata"], resourceVersion=current["metadata"]["resourceVersion"])
            try:
                if namespaced:
                    self._custom.replace_namespaced_custom_object(*args, name, body)
                else:
                    self._custom.replace_cluster_custom_object(*args, name, body)
                return
            except Exception as exc:
                if getattr(exc, "status", None) != 409 or attempt == attempts - 1:
                    raise

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        plural = {"EgressPolicy": "egresspolicies", "EgressClusterPolicy": "egressclusterpolicies",
                  "EgressGateway": "egressgateways", "EgressClusterInfo": "egressclusterinfos"}[kind]
        if namespace:
            self._custom.delete_namespaced_custom_object("egressgw.io", "v1alpha1", namespace, plural, name)
        else:
            self._custom.delete_cluster_custom_object("egressgw.io", "v1alpha1", plural, name)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        plural = {"EgressPolicy": "egresspolicies", "EgressClusterPolicy": "egressclusterpolicies",
                  "EgressGateway": "egressgateways", "EgressClusterInfo": "egressclusterinfos"}[kind]
        if namespace:
            got = self._custom.get_namespaced_custom_object("egressgw.io", "v1alpha1", namespace, plural, name)
        else:
            got = self._custom.get_cluster_custom_object("egressgw.io", "v1alpha1", plural, name)
        return dict(got)

    # ---- traffic --------------------------------------------------------------------------------------------
    def seen_source(self, lab_pod: str, *, version: int = 4, proto: str = "udp", timeout: float = 2.0,
                    server: str | None = None) -> str:
        """The source address the external server saw for one request from `lab_pod` ("" when none came back)."""
        server = server or self.external_address(version)
        res = self.lab.exec(lab_pod, [sys.executable, "-m", "lab.extclient", "source", "--server", server,
                                      "--port", str(self.ext_port), "--proto", proto, "--timeout", str(timeout)],
                            check=False, timeout=timeout + 10)
        return str(res.stdout).strip() if res.returncode == 0 else ""

    def wait_source(self, lab_pod: str, expected: str, *, version: int = 4, proto: str = "udp",
                    timeout: float = 30.0) -> str:
        """Poll until the external server sees `expected` from `lab_pod`; returns the last source seen."""
        seen = ""

        def sees_expected() -> bool:
            nonlocal seen
            seen = self.seen_source(lab_pod, version=version, proto=proto, timeout=1.0)
            return seen == expected

        poll_until(sees_expected, timeout=timeout, interval=0.3)
        return seen

    def router_routes(self, version: int = 4) -> str:
        """The routes the router's BGP daemon installed (all its routes when there are none)."""
        router = self.router
        res = self.lab.exec(router, ["ip", f"-{version}", "route", "show", "proto", ROUTE_PROTO[self.router_kind]],
                            check=False)
        if not str(res.stdout).strip():
            res = self.lab.exec(router, ["ip", f"-{version}", "route", "show"], check=False)
        return str(res.stdout)

    def down(self) -> None:
        with contextlib.suppress(Exception):
            self.forwarder.close()
        self.lab.down()


def _one_role(nodes: Mapping[str, LabNode], role: str) -> LabNode:
    found = [n for n in nodes.values() if n.role == role]
    if len(found) != 1:
        raise LabTopologyError(f"the topology needs exactly one node with label egressgw.role: {role} "
                               f"(found {len(found)})")
    return found[0]


def api_addresses(lab: Lab, node: str) -> tuple[str, ...]:
    """The `--address` values of the node's `@kube-apiserver` daemon, in order."""
    for daemon in lab.topology.node(node).daemons:
        words = daemon.command.split()
        if words and words[0] == "@kube-apiserver":
            return tuple(words[i + 1] for i, w in enumerate(words[:-1]) if w == "--address")
    return ()


def _router_id(node: LabNode, uplink: str) -> str:
    """The gateway's IPv4 uplink address, else the last 32 bits of its IPv6 one (a BGP router ID is 32 bits)."""
    try:
        return str(node.address(4, uplink))
    except LookupError:
        return str(ipaddress.IPv4Address(int(node.address(6, uplink)) & 0xFFFFFFFF))


@contextlib.contextmanager
def system_up(topology: str | Path = DEFAULT_TOPOLOGY, **kwargs: Any) -> Iterator[System]:
    s = System.up(topology, **kwargs)
    try:
        yield s
    finally:
        s.down()


def restart_apiserver(system: System, *, down_for: float = 5.0) -> None:
    """Stop the lab's kube-apiserver process for `down_for` seconds, then start it again with the same command
    line (etcd keeps running, so the cluster state survives; watchers get connection errors, then 410s)."""
    api = _one_role(system.nodes, "kube-api").name
    rec = system.lab.daemon(api, "kube-apiserver")
    if rec is None:
        raise RuntimeError("the lab has no kube-apiserver daemon")
    argv = Path(f"/proc/{rec.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(rec.pid, signal.SIGKILL)  # its graceful shutdown can take longer than the outage we want

    def gone() -> bool:
        try:  # the lab may have started it from this very process: reap it, or it stays a zombie
            return os.waitpid(rec.pid, os.WNOHANG)[0] == rec.pid
        except ChildProcessError:
            return not Path(f"/proc/{rec.pid}").exists()

    poll_until(gone, timeout=10.0, interval=0.1)
    time.sleep(down_for)
    system.lab.start_daemon(api, "kube-apiserver", [a.decode() for a in argv])

    def answers() -> bool:
        try:
            system._core.list_namespace(limit=1, _request_timeout=2)
            return True
        except Exception:
            return False

    wait_until(answers, timeout=60, interval=0.5, what="kube-apiserver to come back (list namespaces)")
