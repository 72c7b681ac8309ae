"""lab.topology: the containerlab subset is parsed into the typed model; invalid files list every problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lab.runner import expand
from lab.topology import Kind, TopologyError, check_prefix, default_prefix, parse

TOPO = """
name: t1
topology:
  defaults: {env: {A: "1"}}
  nodes:
    r:
      kind: linux
      cmd: sleep 100
      binds: ["cfg/r.conf:/etc/r.conf:ro"]
      labels:
        egressgw.daemon.two: "sleep 200"
        egressgw.ready.two: "true"
        other: x
      env: {B: "2"}
    h: {kind: linux}
    sw: {kind: bridge}
  links:
    - endpoints: ["r:eth1", "sw:p1"]
    - endpoints: [{node: h, interface: eth1}, {node: sw, interface: p2}]
      mtu: 9000
"""


def test_parse_nodes_links_daemons() -> None:
    topo = parse(yaml.safe_load(TOPO), path=Path("/x/t1.clab.yml"))
    assert topo.name == "t1"
    r = topo.node("r")
    assert r.kind is Kind.LINUX
    assert [d.name for d in r.daemons] == ["cmd", "two"]
    assert r.daemons[1].ready == "true"
    assert dict(r.env) == {"A": "1", "B": "2"}
    assert r.binds == (("cfg/r.conf", "/etc/r.conf"),)
    assert topo.node("sw").kind is Kind.BRIDGE
    assert topo.links[1].mtu == 9000
    peer = topo.peer("h", "eth1")
    assert peer is not None and (peer.node, peer.interface) == ("sw", "p2")


def test_prefix_rules() -> None:
    topo = parse(yaml.safe_load(TOPO), path=Path("/x/t1.clab.yml"))
    assert default_prefix("egw") == "egl-egw-"
    assert check_prefix("egl-t1-", topo) == []
    assert check_prefix("Bad_", topo)
    assert check_prefix("x" * 30, topo)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["topology"]["links"].append({"endpoints": ["r:eth9", "nope:eth1"]}), "unknown node 'nope'"),
    (lambda d: d["topology"]["links"].append({"endpoints": ["r:eth1", "h:eth2"]}), "duplicate interface r:eth1"),
    (lambda d: d["topology"]["nodes"].update({"x": {"kind": "ceos"}}), "unsupported kind 'ceos'"),
    (lambda d: d["topology"]["nodes"]["sw"].update({"exec": ["true"]}), "bridge node cannot have exec"),
    (lambda d: d["topology"]["links"].append({"type": "macvlan", "endpoints": []}), "unsupported link type"),
    (lambda d: d.update({"name": "bad name"}), "name: 'bad name'"),
])
def test_invalid(mutate: object, expected: str) -> None:
    data = yaml.safe_load(TOPO)
    mutate(data)  # type: ignore[operator]
    with pytest.raises(TopologyError) as err:
        parse(data, path=Path("/x/t.clab.yml"))
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_expand_only_known_placeholders() -> None:
    values = {"python": "/py", "topodir": "/t", "state": "/s", "nodedir": "/n", "netns": "ns", "node": "r",
              "lab": "l", "prefix": "p-"}
    text = "nft add chain t c { type nat hook postrouting priority 100 ; } {nodedir}/x {bind:/etc/r.conf}"
    out = expand(text, values, {"/etc/r.conf": "/t/cfg/r.conf"})
    assert out == "nft add chain t c { type nat hook postrouting priority 100 ; } /n/x /t/cfg/r.conf"
