"""Helpers for the lab tests: paths, the stub BGP speaker (ExaBGP 5) on a gateway, waiting, leftovers.

Every namespace is named `egt-lb-...` (the lab tests' prefix); the tests never touch labs they did not create.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lab import netns
from lab.runner import Lab

ROOT = Path(__file__).resolve().parents[3]
TOPOLOGIES = ROOT / "lab" / "topologies"
EXABGP = ROOT / ".venv" / "bin" / "exabgp"
PREFIX = "egt-lb-"


def require(*binaries: str) -> None:
    """Fail (never skip) when a binary the test needs is missing."""
    missing = [b for b in binaries if shutil.which(b) is None and not Path(b).exists()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/setup.sh", pytrace=False)


def lab_leftovers(prefix: str) -> list[str]:
    return [ns for ns in netns.list_namespaces() if ns.startswith(prefix)]


EXABGP_CONF = """\
neighbor 198.51.100.1 {{
    router-id {v4};
    local-address {v4};
    local-as 64513;
    peer-as 64512;
    hold-time 3;
    family {{ ipv4 unicast; }}
    static {{
{routes4}
    }}
}}
neighbor 2001:db8:198::1 {{
    router-id {v4};
    local-address {v6};
    local-as 64513;
    peer-as 64512;
    hold-time 3;
    family {{ ipv6 unicast; }}
    static {{
{routes6}
    }}
}}
"""


def start_exabgp(lab: Lab, gateway: str, routes4: list[str], routes6: list[str]) -> None:
    """ExaBGP 5 on `gateway` (gw1 -> .11) announcing the given prefixes with itself as next hop."""
    idx = int(gateway[2:])
    v4, v6 = f"198.51.100.1{idx}", f"2001:db8:198::1{idx}"
    conf = lab.node_dir(gateway) / "exabgp.conf"
    conf.write_text(EXABGP_CONF.format(
        v4=v4, v6=v6,
        routes4="\n".join(f"        route {p} next-hop {v4};" for p in routes4),
        routes6="\n".join(f"        route {p} next-hop {v6};" for p in routes6),
    ))
    env = {"exabgp_daemon_user": "root", "exabgp_daemon_drop": "false",
           "exabgp_api_pipename": f"egtlb{os.getpid()}{gateway}", "exabgp_log_destination": "stdout"}
    lab.start_daemon(gateway, "exabgp", [str(EXABGP), "server", str(conf)], env=env)


GATEWAY_BIRD_CONF = """\
log stderr all;
router id {v4};
protocol device {{}}
protocol static s4 {{ ipv4; route {route} unreachable; }}
protocol bfd {{ interface "*" {{ min rx interval 50 ms; min tx interval 50 ms; multiplier 3; }}; }}
protocol bgp up4 {{
  local {v4} as 64513;
  neighbor 198.51.100.1 as 64512;
  hold time 3; keepalive time 1; connect retry time 1; bfd on;
  ipv4 {{ import none; export all; next hop self; }};
}}
"""


def start_gateway_bird(lab: Lab, gateway: str, route: str) -> None:
    """A BFD-capable stub gateway (BIRD 2 with BGP + BFD) announcing `route` to the router."""
    v4 = f"198.51.100.1{int(gateway[2:])}"
    conf = lab.node_dir(gateway) / "gateway-bird.conf"
    conf.write_text(GATEWAY_BIRD_CONF.format(v4=v4, route=route))
    lab.start_daemon(gateway, "gateway-bird", ["bird", "-f", "-c", str(conf), "-s",
                                               str(lab.node_dir(gateway) / "gateway-bird.ctl")])
