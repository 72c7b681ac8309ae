"""Conntrack flush over ctnetlink on the real kernel: real traffic in a throwaway namespace, one pod IP flushed.

The namespace (`egt-ct-<pid>`) has four addresses on `lo` standing for two pods (IPv4 + IPv6 each) and a table that
makes the kernel track the namespace's own traffic; pings between them create the entries. Every packet stays
inside the namespace, which is removed even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from appliance.datapath.apply.conntrack import flush_pod_conntrack

pytestmark = pytest.mark.netns

NS = f"egt-ct-{os.getpid()}"
FLUSHED4, FLUSHED6 = ip_address("100.64.7.2"), ip_address("2001:db8:7::2")
KEPT4, KEPT6 = ip_address("100.64.7.3"), ip_address("2001:db8:7::3")
TARGET4, TARGET6 = "100.64.7.1", "2001:db8:7::1"


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def entries(source: object) -> str:
    family = "ipv4" if ":" not in str(source) else "ipv6"
    return subprocess.run(["ip", "netns", "exec", NS, "conntrack", "-L", "-f", family, "-s", str(source)],
                          capture_output=True, text=True, check=False, timeout=30).stdout


@pytest.fixture
def ns() -> Iterator[str]:
    for tool in ("conntrack", "nft", "ping"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (apt-get install conntrack nftables iputils-ping)", pytrace=False)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        for a in (TARGET4, FLUSHED4, KEPT4):
            sh("ip", "-n", NS, "addr", "add", f"{a}/32", "dev", "lo")
        for a in (TARGET6, FLUSHED6, KEPT6):
            sh("ip", "-n", NS, "addr", "add", f"{a}/128", "dev", "lo", "nodad")
        subprocess.run(["ip", "netns", "exec", NS, "nft", "-f", "-"], check=True, text=True, timeout=30,
                       input="table inet egt_ct {\n chain out {\n  type filter hook output priority 0;\n"
                             "  ct state new counter\n }\n}\n")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False, capture_output=True)


def test_flush_removes_only_the_pod_ips_entries(ns: str) -> None:
    for src, dst in ((FLUSHED4, TARGET4), (KEPT4, TARGET4), (FLUSHED6, TARGET6), (KEPT6, TARGET6)):
        sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-I", str(src), dst)
    for src in (FLUSHED4, KEPT4, FLUSHED6, KEPT6):
        assert f"src={src}" in entries(src), src

    result = flush_pod_conntrack([FLUSHED4, FLUSHED6], netns=ns)

    assert result.ok, result.problems()
    assert result.flushed == (FLUSHED4, FLUSHED6) and result.deleted >= 2 and not result.timed_out
    assert f"src={FLUSHED4}" not in entries(FLUSHED4) and f"src={FLUSHED6}" not in entries(FLUSHED6)
    assert f"src={KEPT4}" in entries(KEPT4) and f"src={KEPT6}" in entries(KEPT6)

    again = flush_pod_conntrack([FLUSHED4], netns=ns)  # nothing left: still a success, zero deleted
    assert again.ok and again.deleted == 0 and again.flushed == (FLUSHED4,)


def test_a_missing_namespace_is_a_failure_not_a_success() -> None:
    result = flush_pod_conntrack([FLUSHED4], netns="egt-ct-missing-ns")
    assert not result.ok and result.flushed == () and result.failed_pod_ips == (FLUSHED4,)
    assert not os.path.exists("/run/netns/egt-ct-missing-ns")


def udp_flows(ns: str, pairs: list[tuple[str, str, int]]) -> None:
    """(source, target, count): that many UDP flows, each from a fresh socket (a new conntrack entry each), the way
    a pod opening short flows fills a worker's table (the convergence benchmark's probes: 200 per second)."""
    code = (
        "import socket, sys\n"
        "for src, dst, n in eval(sys.argv[1]):\n"
        "    fam = socket.AF_INET6 if ':' in src else socket.AF_INET\n"
        "    for _ in range(n):\n"
        "        s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((src, 0)); s.sendto(b'x', (dst, 7000)); s.close()\n"
    )
    sh("ip", "netns", "exec", ns, "python3", "-c", code, repr(pairs))


def test_a_busy_table_is_flushed_within_the_deadline(ns: str) -> None:
    """Thousands of entries (two pods' short flows, plus other sources'): one flush with the services' default
    deadline finishes (no timeout, so the pass does not fail and does not hold the reconcile loop for the whole
    deadline), deletes every entry of the pod IPs and no other. Decoding each entry in full (pyroute2) ran into the
    deadline here on every pass: the convergence benchmark's ~5 s per pod event."""
    udp_flows(ns, [(str(FLUSHED4), TARGET4, 4000), (str(KEPT4), TARGET4, 4000),
                   (str(FLUSHED6), TARGET6, 2000), (str(KEPT6), TARGET6, 2000)])
    kept_before = entries(KEPT4).count(f"src={KEPT4}")
    assert entries(FLUSHED4).count(f"src={FLUSHED4}") >= 3000

    result = flush_pod_conntrack([FLUSHED4, FLUSHED6], netns=ns)

    assert result.ok and not result.timed_out, result.problems()
    assert result.flushed == (FLUSHED4, FLUSHED6) and result.deleted >= 5000
    assert f"src={FLUSHED4}" not in entries(FLUSHED4) and f"src={FLUSHED6}" not in entries(FLUSHED6)
    assert entries(KEPT4).count(f"src={KEPT4}") == kept_before
    assert f"src={KEPT6}" in entries(KEPT6)
