"""A small namespace topology for data-path integration tests and the data-path benchmark (lab address plan).

    pod1, pod2 --(cni0 veths)-- w1 --+                       +-- g1 --+
    [pod4 --(routed veth r-pod4)-- w1]
    pod3       --(cni0 veth)--- w2 --+-- r (router) ---------+-- g2 --+   (point-to-point veths to r)
                                                             +-- ext (203.0.113.2, .34; 2001:db8:203::2)

`Testbed(routed=True)` adds pod4, attached the way routed CNIs (Calico, Cilium) attach pods: its own host-side veth
without a bridge, a /32 and /128 route to the pod on it, and the pod's default route via 169.254.1.1 (IPv4, proxy
ARP on the host veth) and fe80::1 (IPv6, a link-local address on the host veth).

The router has plain static routes (standing in for BGP): pod CIDRs -> workers, each EIP /32 (/128) -> a gateway
(`route_eip`). Workers run the stand-in CNI masquerade (`ip lab_cni` / `ip6 lab_cni`) so an unselected pod shows
the node IP. Every namespace is named `<prefix><node>`; links live only inside them. `down()` removes everything
and is safe to call after a failed `up()`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from appliance.core.waiting import poll_until

CNI_NFT = """table ip lab_cni {
\tchain postrouting { type nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 100.64.0.0/16 ip daddr != { 100.64.0.0/16, 100.127.0.0/24, 100.100.0.0/16 } masquerade
\t}
}
table ip6 lab_cni {
\tchain postrouting { type nat hook postrouting priority srcnat; policy accept;
\t\tip6 saddr 2001:db8:64::/48 ip6 daddr != { 2001:db8:64::/48, 2001:db8:127::/64 } masquerade
\t}
}
table inet hostfw {
\tchain input { type filter hook input priority filter; policy accept;
\t\tct state established,related accept
\t\tcounter accept
\t}
}
"""

PODS = {  # pod -> (worker, v4, v6, gateway v4, gateway v6)
    "pod1": ("w1", "100.64.1.10", "2001:db8:64:1::10"),
    "pod2": ("w1", "100.64.1.11", "2001:db8:64:1::11"),
    "pod3": ("w2", "100.64.2.10", "2001:db8:64:2::10"),
}
#: pods attached like a routed CNI's (`Testbed(routed=True)`): pod -> (worker, v4, v6)
ROUTED_PODS = {"pod4": ("w1", "100.64.1.20", "2001:db8:64:1::20")}
WORKER_ADDR = {"w1": ("100.127.0.11", "2001:db8:127::11"), "w2": ("100.127.0.12", "2001:db8:127::12")}
GATEWAY_ADDR = {"g1": ("198.51.100.11", "2001:db8:198::11"), "g2": ("198.51.100.12", "2001:db8:198::12")}
#: the second address answers TCP only (the UDP echo replies from the primary address)
EXT_V4 = ("203.0.113.2", "203.0.113.34")
EXT_V6 = "2001:db8:203::2"


class TestbedError(RuntimeError):
    pass


def sh(argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise TestbedError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Testbed:
    __test__ = False  # not a pytest test class

    prefix: str = "egt-dp-t"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: also create the routed pods (ROUTED_PODS)
    routed: bool = False

    def ns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def ip(self, node: str, *args: str, check: bool = True) -> str:
        return sh(["ip", "-n", self.ns(node), *args], check=check)

    def run(self, node: str, *argv: str, check: bool = True, input: str | None = None, timeout: float = 60) -> str:
        return sh(["ip", "netns", "exec", self.ns(node), *argv], check=check, input=input, timeout=timeout)

    @property
    def nodes(self) -> list[str]:
        return [*PODS, *(ROUTED_PODS if self.routed else ()), "w1", "w2", "r", "g1", "g2", "ext"]

    def up(self) -> None:
        self.down()
        for n in self.nodes:
            sh(["ip", "netns", "add", self.ns(n)])
            self.ip(n, "link", "set", "lo", "up")
            self.run(n, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                     "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                     "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        # point-to-point veths to the router (no bridge): a Linux bridge has no encapsulation offloads and would
        # segment every VXLAN GSO packet, which is a testbed artefact, not a property of the data path
        for node, (a4, a6) in {**WORKER_ADDR, **GATEWAY_ADDR}.items():
            gw4, gw6 = ("100.127.0.1", "2001:db8:127::1") if node.startswith("w") else ("198.51.100.1",
                                                                                       "2001:db8:198::1")
            port = f"p-{node}"
            self.ip(node, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.ns("r"))
            self.ip("r", "addr", "add", f"{gw4}/32", "dev", port)
            self.ip("r", "addr", "add", f"{gw6}/128", "dev", port, "nodad")
            self.ip("r", "link", "set", port, "up")
            self.ip("r", "route", "add", a4, "dev", port)
            self.ip("r", "-6", "route", "add", a6, "dev", port)
            self.run("r", "sysctl", "-qw", f"net.ipv4.conf.{port}.proxy_arp=1")
            self.ip(node, "addr", "add", f"{a4}/24", "dev", "eth0")
            self.ip(node, "addr", "add", f"{a6}/64", "dev", "eth0", "nodad")
            self.ip(node, "link", "set", "eth0", "up")
            self.ip(node, "route", "add", "default", "via", gw4)
            self.ip(node, "-6", "route", "add", "default", "via", gw6)
            for dev in ("eth0",):  # GRO on, like a physical NIC (veth defaults to off)
                self.run(node, "ethtool", "-K", dev, "gro", "on", check=False)
            self.run("r", "ethtool", "-K", port, "gro", "on", check=False)
        for w, (c4, c6) in {"w1": ("100.64.1", "2001:db8:64:1"), "w2": ("100.64.2", "2001:db8:64:2")}.items():
            self.ip(w, "link", "add", "cni0", "type", "bridge")
            self.ip(w, "addr", "add", f"{c4}.1/24", "dev", "cni0")
            self.ip(w, "addr", "add", f"{c6}::1/64", "dev", "cni0", "nodad")
            self.ip(w, "link", "set", "cni0", "up")
            self.ip("r", "route", "add", f"{c4}.0/24", "via", WORKER_ADDR[w][0])
            self.ip("r", "-6", "route", "add", f"{c6}::/64", "via", WORKER_ADDR[w][1])
            self.run(w, "nft", "-f", "-", input=CNI_NFT)
        for pod, (w, a4, a6) in PODS.items():
            self.ip(pod, "link", "add", "eth0", "type", "veth", "peer", "name", f"v-{pod}", "netns", self.ns(w))
            self.ip(w, "link", "set", f"v-{pod}", "master", "cni0", "up")
            self.ip(pod, "addr", "add", f"{a4}/24", "dev", "eth0")
            self.ip(pod, "addr", "add", f"{a6}/64", "dev", "eth0", "nodad")
            self.ip(pod, "link", "set", "eth0", "up")
            self.ip(pod, "route", "add", "default", "via", a4.rsplit(".", 1)[0] + ".1")
            self.ip(pod, "-6", "route", "add", "default", "via", a6.rsplit(":", 1)[0] + ":1")
        for pod, (w, a4, a6) in (ROUTED_PODS if self.routed else {}).items():
            self._routed_pod(pod, w, a4, a6)
        self.ip("r", "link", "add", "ext", "type", "veth", "peer", "name", "eth0", "netns", self.ns("ext"))
        for a in ("203.0.113.1/28", "203.0.113.33/28"):
            self.ip("r", "addr", "add", a, "dev", "ext")
        self.ip("r", "addr", "add", "2001:db8:203::1/64", "dev", "ext", "nodad")
        self.ip("r", "link", "set", "ext", "up")
        for a in ("203.0.113.2/28", "203.0.113.34/28"):
            self.ip("ext", "addr", "add", a, "dev", "eth0")
        self.ip("ext", "addr", "add", f"{EXT_V6}/64", "dev", "eth0", "nodad")
        self.ip("ext", "link", "set", "eth0", "up")
        self.ip("ext", "route", "add", "default", "via", "203.0.113.1")
        self.ip("ext", "-6", "route", "add", "default", "via", "2001:db8:203::1")
        self.start("ext", [sys.executable, "-m", "lab.extserver", "--port", "7000"])
        self.wait_reachable()

    def _routed_pod(self, pod: str, w: str, a4: str, a6: str) -> None:
        host = f"r-{pod}"
        self.ip(pod, "link", "add", "eth0", "type", "veth", "peer", "name", host, "netns", self.ns(w))
        self.run(w, "sysctl", "-qw", f"net.ipv4.conf.{host}.proxy_arp=1")
        self.ip(w, "addr", "add", "fe80::1/64", "dev", host, "nodad")
        self.ip(w, "link", "set", host, "up")
        self.ip(w, "route", "add", f"{a4}/32", "dev", host)
        self.ip(w, "-6", "route", "add", f"{a6}/128", "dev", host)
        self.ip(pod, "addr", "add", f"{a4}/32", "dev", "eth0")
        self.ip(pod, "addr", "add", f"{a6}/128", "dev", "eth0", "nodad")
        self.ip(pod, "link", "set", "eth0", "up")
        self.ip(pod, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        self.ip(pod, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        self.ip(pod, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")

    def start(self, node: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(node), *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def wait_reachable(self, timeout: float = 10.0) -> None:
        def reachable() -> bool:
            ok4 = "1 received" in self.run("pod1", "ping", "-c1", "-W1", EXT_V4[0], check=False)
            ok6 = "1 received" in self.run("pod1", "ping", "-6", "-c1", "-W1", EXT_V6, check=False)
            return bool(ok4 and ok6 and self.source("pod1", EXT_V4[0], check=False))

        if not poll_until(reachable, timeout=timeout, interval=0.2):
            raise TestbedError("testbed: pod1 cannot reach the external server")

    def source(self, pod: str, server: str, proto: str = "udp", *, check: bool = True) -> str:
        """The source address the external server saw for a UDP/TCP probe from `pod` ("" on timeout)."""
        out = self.run(pod, sys.executable, "-m", "lab.extclient", "source", "--server", server, "--port", "7000",
                       "--proto", proto, "--timeout", "2", check=False)
        if check and not out.strip():
            raise TestbedError(f"no answer from {server} ({proto}) for {pod}")
        return out.strip()

    def route_eip(self, eip: str, gateway: str) -> None:
        """Point the router's EIP route at a gateway (what BGP would do)."""
        v6 = ":" in eip
        via = GATEWAY_ADDR[gateway][1 if v6 else 0]
        self.ip("r", *(["-6"] if v6 else []), "route", "replace", eip, "via", via)

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.procs.clear()
        for n in self.nodes:
            sh(["ip", "netns", "del", self.ns(n)], check=False)
