"""The gateway's host health checks against a real kernel, inside a throwaway namespace (`egt-sv-hc*`): link
oper-state, link presence, our nft table, TCP and ICMP upstream probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.netns

_PROBE = """
import json, socket, sys
from ipaddress import ip_address
from appliance.datapath.apply import health_checks as h
srv = socket.socket(); srv.bind(("100.64.250.1", 0)); srv.listen(1); port = srv.getsockname()[1]
print(json.dumps({
    "veth_up": h.link_up("egt-hc0"), "missing_up": h.link_up("nope0"), "down_up": h.link_up("egt-hc1"),
    "present": h.links_present(["egt-hc0", "egt-hc1"]), "absent": h.links_present(["egt-hc0", "nope0"]),
    "none": h.links_present([]),
    "table": h.nft_table_present("inet", "egressgw"), "other_table": h.nft_table_present("inet", "nope"),
    "tcp_open": h.upstream_probe(ip_address("100.64.250.1"), port, 0.5),
    "tcp_refused": h.upstream_probe(ip_address("100.64.250.1"), 1, 0.5),
    "tcp_unreachable": h.upstream_probe(ip_address("100.64.251.9"), 80, 0.3),
    "icmp": h.upstream_probe(ip_address("100.64.250.2"), None, 1.0),
    "icmp_unreachable": h.upstream_probe(ip_address("100.64.251.9"), None, 1.0),
}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"egt-sv-hc{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "link set lo up",
            "link add egt-hc0 type veth peer name egt-hc0p",
            "link add egt-hc1 type veth peer name egt-hc1p",
            "link set egt-hc0 up",
            "link set egt-hc0p up",
            "addr add 100.64.250.1/24 dev egt-hc0",
            "addr add 100.64.250.2/24 dev egt-hc0p",
        ):
            subprocess.run(["ip", "-n", name, *cmd.split()], check=True)
        subprocess.run(["ip", "netns", "exec", name, "nft", "add", "table", "inet", "egressgw"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_host_checks_in_a_namespace(netns: str) -> None:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    r = json.loads(out.stdout)
    assert r["veth_up"] and not r["missing_up"] and not r["down_up"]
    assert r["present"] and not r["absent"] and r["none"]
    assert r["table"] and not r["other_table"]
    assert r["tcp_open"] and r["tcp_refused"]  # a refused connection proves reachability too
    assert not r["tcp_unreachable"]
    assert r["icmp"] and not r["icmp_unreachable"]
