"""Read and validate containerlab topology files (`.clab.yml`) into a typed, immutable model.

Pure: no subprocess, no netlink. The runner (`lab.runner`) realises the model with network namespaces. Everything
is validated here *before* anything is created, and every problem found is reported at once, each message naming
the node, link or field at fault.

The supported subset of the containerlab format (see docs/lab.md):
- top level: `name`, `topology` (`nodes`, `links`, `defaults`, `kinds`); `mgmt` and `prefix` are accepted and ignored.
- node kinds: `linux` (a namespace) and `bridge` (a Linux bridge; all bridge nodes of a lab live in one switch
  namespace, so their port names must be unique across bridges).
- node keys: `kind`, `image` (recorded only), `exec` (run in order after all links exist), `cmd` (a long-running
  process, like a container's command), `env`, `binds` (used to resolve `{bind:/path}` placeholders), `labels`
  (with the `egressgw.daemon.<name>` / `egressgw.ready.<name>` extension), `sysctls`, `group`.
- links: `endpoints: ["a:eth1", "b:eth1"]` (brief form) or the extended form with `{node, interface}` mappings;
  optional `mtu`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

DAEMON_LABEL = "egressgw.daemon."
READY_LABEL = "egressgw.ready."
MAX_NETNS_NAME = 32
MAX_IFNAME = 15

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_LAB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_IF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_NODE_KEYS = frozenset(
    {"kind", "image", "exec", "cmd", "env", "binds", "labels", "sysctls", "group", "type", "mgmt-ipv4", "mgmt-ipv6"}
)
_INHERITED_KEYS = frozenset({"image", "env", "binds", "labels", "sysctls", "exec", "cmd"})


class TopologyError(ValueError):
    """The topology file is invalid; `problems` lists every problem found (each names the part at fault)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: invalid topology:\n  " + "\n  ".join(problems))
        self.source = source
        self.problems = tuple(problems)


class Kind(Enum):
    LINUX = "linux"
    BRIDGE = "bridge"


@dataclass(frozen=True, slots=True, kw_only=True)
class Daemon:
    """A long-running process of a node: `argv` may hold placeholders (see `lab.runner.expand`)."""

    name: str
    command: str
    ready: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    name: str
    kind: Kind
    image: str | None = None
    exec: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    binds: tuple[tuple[str, str], ...] = ()  # (host path, container path)
    labels: tuple[tuple[str, str], ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    daemons: tuple[Daemon, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    node: str
    interface: str

    def __str__(self) -> str:
        return f"{self.node}:{self.interface}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    a: Endpoint
    b: Endpoint
    mtu: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    name: str
    path: Path
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def linux_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind is Kind.LINUX)

    @property
    def bridge_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind is Kind.BRIDGE)

    def peer(self, node: str, interface: str) -> Endpoint | None:
        """The other end of the link attached to `node:interface`."""
        for link in self.links:
            if (link.a.node, link.a.interface) == (node, interface):
                return link.b
            if (link.b.node, link.b.interface) == (node, interface):
                return link.a
        return None


SWITCH_NODE = "switch"  # namespace suffix holding every bridge-kind node


def default_prefix(lab_name: str) -> str:
    """Namespace prefix for a lab instance: short, so `<prefix><node>` stays well under the netns name limit."""
    return f"egl-{lab_name[:12]}-"


def check_prefix(prefix: str, topo: Topology) -> list[str]:
    problems: list[str] = []
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", prefix):
        problems.append(f"name prefix {prefix!r}: use lower-case letters, digits and '-'")
    names = [n.name for n in topo.linux_nodes] + ([SWITCH_NODE] if topo.bridge_nodes else [])
    for name in names:
        if len(prefix + name) > MAX_NETNS_NAME:
            problems.append(f"namespace name {prefix + name!r} is longer than {MAX_NETNS_NAME} characters")
    return problems


def load(path: str | Path) -> Topology:
    """Read and validate a topology file; raises TopologyError listing every problem, OSError if unreadable."""
    p = Path(path)
    text = p.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError(str(p), [f"not valid YAML: {exc}"]) from exc
    return parse(data, path=p)


def _str_map(value: Any, where: str, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping")
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _str_list(value: Any, where: str, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        problems.append(f"{where}: must be a list of strings")
        return []
    return [str(v) for v in value]


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key in ("env", "labels", "sysctls") and isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _parse_node(name: str, raw: Mapping[str, Any], problems: list[str]) -> Node | None:
    where = f"node {name!r}"
    unknown = sorted(set(raw) - _NODE_KEYS)
    if unknown:
        problems.append(f"{where}: unsupported key(s) {', '.join(map(str, unknown))}")
    kind_s = raw.get("kind")
    try:
        kind = Kind(kind_s)
    except ValueError:
        problems.append(f"{where}: unsupported kind {kind_s!r} (supported: linux, bridge)")
        return None
    env = _str_map(raw.get("env"), f"{where}.env", problems)
    labels = _str_map(raw.get("labels"), f"{where}.labels", problems)
    sysctls = _str_map(raw.get("sysctls"), f"{where}.sysctls", problems)
    execs = _str_list(raw.get("exec"), f"{where}.exec", problems)
    binds: list[tuple[str, str]] = []
    for i, bind in enumerate(_str_list(raw.get("binds"), f"{where}.binds", problems)):
        parts = bind.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
            problems.append(f"{where}.binds[{i}]: expected HOST:/CONTAINER[:ro|rw], got {bind!r}")
            continue
        binds.append((parts[0], parts[1]))
    daemons: list[Daemon] = []
    cmd = raw.get("cmd")
    readies = {k[len(READY_LABEL) :]: v for k, v in labels.items() if k.startswith(READY_LABEL)}
    if cmd is not None:
        if not isinstance(cmd, str) or not cmd.strip():
            problems.append(f"{where}.cmd: must be a non-empty string")
        else:
            daemons.append(Daemon(name="cmd", command=cmd, ready=readies.get("cmd")))
    for key, value in labels.items():
        if key.startswith(DAEMON_LABEL):
            dname = key[len(DAEMON_LABEL) :]
            if not _NAME_RE.match(dname):
                problems.append(f"{where}.labels[{key}]: daemon name {dname!r} must be lower-case letters/digits/'-'")
            elif not value.strip():
                problems.append(f"{where}.labels[{key}]: empty command")
            elif any(d.name == dname for d in daemons):
                problems.append(f"{where}: duplicate daemon {dname!r}")
            else:
                daemons.append(Daemon(name=dname, command=value, ready=readies.get(dname)))
    for rname in readies:
        if not any(d.name == rname for d in daemons):
            problems.append(f"{where}.labels[{READY_LABEL}{rname}]: no daemon named {rname!r}")
    if kind is Kind.BRIDGE and (execs or daemons):
        problems.append(f"{where}: a bridge node cannot have exec, cmd or daemons")
    image = raw.get("image")
    return Node(
        name=name,
        kind=kind,
        image=str(image) if image is not None else None,
        exec=tuple(execs),
        env=tuple(env.items()),
        binds=tuple(binds),
        labels=tuple(labels.items()),
        sysctls=tuple(sysctls.items()),
        daemons=tuple(daemons),
    )


def _parse_endpoint(raw: Any, where: str, problems: list[str]) -> Endpoint | None:
    if isinstance(raw, str):
        node, sep, iface = raw.partition(":")
        if not sep or not node or not iface:
            problems.append(f"{where}: endpoint {raw!r} must be NODE:INTERFACE")
            return None
        return Endpoint(node=node, interface=iface)
    if isinstance(raw, dict) and isinstance(raw.get("node"), str) and isinstance(raw.get("interface"), str):
        return Endpoint(node=raw["node"], interface=raw["interface"])
    problems.append(f"{where}: endpoint {raw!r} must be 'NODE:INTERFACE' or {{node, interface}}")
    return None


def _parse_links(raw: Any, problems: list[str]) -> list[Link]:
    links: list[Link] = []
    if raw is None:
        return links
    if not isinstance(raw, list):
        problems.append("topology.links: must be a list")
        return links
    for i, item in enumerate(raw):
        where = f"topology.links[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("endpoints"), list):
            problems.append(f"{where}: must be a mapping with 'endpoints'")
            continue
        if item.get("type", "veth") != "veth":
            problems.append(f"{where}: unsupported link type {item.get('type')!r} (only veth)")
            continue
        eps = [_parse_endpoint(e, where, problems) for e in item["endpoints"]]
        if len(eps) != 2:
            problems.append(f"{where}: needs exactly 2 endpoints, got {len(eps)}")
            continue
        a, b = eps
        if a is None or b is None:
            continue
        mtu = item.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or not 68 <= mtu <= 65535):
            problems.append(f"{where}: mtu must be an integer 68..65535")
            mtu = None
        links.append(Link(a=a, b=b, mtu=mtu))
    return links


def parse(data: Any, *, path: Path) -> Topology:
    """Validate parsed YAML; raise TopologyError with every problem found."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise TopologyError(str(path), ["the file must be a mapping with 'name' and 'topology'"])
    name = data.get("name")
    if not isinstance(name, str) or not _LAB_RE.match(name):
        problems.append(f"name: {name!r} must be letters, digits, '-' or '_'")
        name = "invalid"
    topo = data.get("topology")
    if not isinstance(topo, dict) or not isinstance(topo.get("nodes"), dict) or not topo["nodes"]:
        raise TopologyError(str(path), [*problems, "topology.nodes: must be a non-empty mapping"])
    defaults = topo.get("defaults") or {}
    kinds = topo.get("kinds") or {}
    if not isinstance(defaults, dict) or not isinstance(kinds, dict):
        problems.append("topology.defaults/kinds: must be mappings")
        defaults, kinds = {}, {}
    nodes: list[Node] = []
    for node_name, raw in topo["nodes"].items():
        node_name = str(node_name)
        if not _NAME_RE.match(node_name):
            problems.append(f"node {node_name!r}: name must be lower-case letters, digits and '-'")
            continue
        raw = raw or {}
        if not isinstance(raw, dict):
            problems.append(f"node {node_name!r}: must be a mapping")
            continue
        merged = {k: v for k, v in defaults.items() if k in _INHERITED_KEYS or k == "kind"}
        kind_defaults = kinds.get(raw.get("kind", merged.get("kind")), {})
        if isinstance(kind_defaults, dict):
            merged = _merge(merged, {k: v for k, v in kind_defaults.items() if k in _INHERITED_KEYS})
        node = _parse_node(node_name, _merge(merged, raw), problems)
        if node is not None:
            nodes.append(node)
    by_name = {n.name: n for n in nodes}
    if SWITCH_NODE in by_name and any(n.kind is Kind.BRIDGE for n in nodes):
        problems.append(f"node {SWITCH_NODE!r}: name is reserved for the bridges' namespace")
    links = _parse_links(topo.get("links"), problems)
    seen: dict[tuple[str, str], str] = {}
    for i, link in enumerate(links):
        for ep in (link.a, link.b):
            where = f"topology.links[{i}]"
            if ep.node not in by_name and ep.node in topo["nodes"]:
                continue  # node invalid, already reported
            if ep.node not in by_name:
                problems.append(f"{where}: unknown node {ep.node!r} in endpoint {ep}")
                continue
            if not _IF_RE.match(ep.interface) or len(ep.interface) > MAX_IFNAME or ep.interface in ("lo", "."):
                problems.append(f"{where}: bad interface name {ep.interface!r} (1-{MAX_IFNAME} chars, no '/' or ':')")
            # bridges share one namespace: their port names must be unique across all bridges
            key_node = SWITCH_NODE if by_name[ep.node].kind is Kind.BRIDGE else ep.node
            if by_name[ep.node].kind is Kind.BRIDGE and ep.interface == ep.node:
                problems.append(f"{where}: port {ep} cannot be named like its bridge")
            key = (key_node, ep.interface)
            if key in seen:
                problems.append(f"{where}: duplicate interface {ep} (already used by {seen[key]})")
            else:
                seen[key] = f"{where}"
        if link.a.node == link.b.node and link.a.interface == link.b.interface:
            problems.append(f"topology.links[{i}]: both endpoints are {link.a}")
        kinds_ab = {by_name[n].kind for n in (link.a.node, link.b.node) if n in by_name}
        if link.a.node in by_name and link.b.node in by_name and kinds_ab == {Kind.BRIDGE}:
            problems.append(f"topology.links[{i}]: cannot link two bridges ({link.a}, {link.b})")
    for n in nodes:
        if n.kind is Kind.BRIDGE and len(n.name) > MAX_IFNAME:
            problems.append(f"node {n.name!r}: a bridge name must be at most {MAX_IFNAME} characters")
    if problems:
        raise TopologyError(str(path), problems)
    extra = {k: v for k, v in data.items() if k not in ("name", "topology")}
    return Topology(name=name, path=path.resolve(), nodes=tuple(nodes), links=tuple(links), extra=extra)
