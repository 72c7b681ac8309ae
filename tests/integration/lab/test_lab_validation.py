"""Invalid topology files are rejected with a message naming the problem, before anything is created."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from labtest_support import PREFIX, ROOT, lab_leftovers

from lab import state
from lab.topology import load

EGRESSGW = str(ROOT / ".venv" / "bin" / "egressgw")

GOOD_NODES = """\
name: bad
topology:
  nodes:
    a: {kind: linux, exec: ["ip addr add 100.64.9.1/24 dev eth1"]}
    b: {kind: linux}
    sw: {kind: bridge}
"""

CASES = {
    "unknown-node": (GOOD_NODES + '  links:\n    - endpoints: ["a:eth1", "c:eth1"]\n', "unknown node 'c'"),
    "duplicate-interface": (
        GOOD_NODES + '  links:\n    - endpoints: ["a:eth1", "b:eth1"]\n    - endpoints: ["a:eth1", "sw:p1"]\n',
        "duplicate interface a:eth1"),
    "duplicate-bridge-port": (
        GOOD_NODES + '  links:\n    - endpoints: ["a:eth1", "sw:p1"]\n    - endpoints: ["b:eth1", "sw:p1"]\n',
        "duplicate interface sw:p1"),
    "unsupported-kind": ("name: bad\ntopology:\n  nodes:\n    r: {kind: nokia_srlinux}\n",
                         "unsupported kind 'nokia_srlinux'"),
    "bad-endpoint": (GOOD_NODES + '  links:\n    - endpoints: ["a-eth1", "b:eth1"]\n', "must be NODE:INTERFACE"),
    "long-interface": (GOOD_NODES + '  links:\n    - endpoints: ["a:averyveryverylongname", "b:eth1"]\n',
                       "bad interface name"),
    "bad-node-name": ("name: bad\ntopology:\n  nodes:\n    Bad_Name: {kind: linux}\n", "name must be lower-case"),
    "three-endpoints": (GOOD_NODES + '  links:\n    - endpoints: ["a:eth1", "b:eth1", "sw:p1"]\n',
                        "exactly 2 endpoints"),
    "unknown-key": ("name: bad\ntopology:\n  nodes:\n    a: {kind: linux, startup-config: x}\n",
                    "unsupported key(s) startup-config"),
    "ready-without-daemon": (
        "name: bad\ntopology:\n  nodes:\n    a:\n      kind: linux\n      labels: {egressgw.ready.x: 'true'}\n",
        "no daemon named 'x'"),
}


@pytest.mark.lab
@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_topology_fails_before_creating_anything(case: str, tmp_path: Path) -> None:
    text, expected = CASES[case]
    path = tmp_path / f"{case}.clab.yml"
    path.write_text(text)
    prefix = f"{PREFIX}v-"
    done = subprocess.run([EGRESSGW, "lab", "up", str(path), "--name-prefix", prefix],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr
    assert lab_leftovers(prefix) == []
    assert not state.lab_dir("egt-lb-v").exists()


@pytest.mark.lab
def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "many.clab.yml"
    path.write_text(GOOD_NODES.replace("b: {kind: linux}", "b: {kind: vr-sros}")
                    + '  links:\n    - endpoints: ["a:eth1", "zz:eth1"]\n')
    done = subprocess.run([EGRESSGW, "lab", "up", str(path), "--name-prefix", f"{PREFIX}v-"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "unsupported kind 'vr-sros'" in done.stderr and "unknown node 'zz'" in done.stderr


@pytest.mark.lab
def test_shipped_topologies_are_valid() -> None:
    for path in sorted((ROOT / "lab" / "topologies").glob("*.clab.yml")):
        topo = load(path)
        assert topo.linux_nodes, path
