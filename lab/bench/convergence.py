"""`egressgw bench convergence --out FILE.json`: how long after a pod's IP is written to the API server its traffic
leaves with the EIP, and how long after a new policy is created it takes effect (issue 8; goal <= 500 ms p99).

The lab's four pod namespaces each run a watcher (`python -m lab.bench.convergence watch`): a UDP datagram to the
external server every 5 ms, printing a line whenever the source address the server reports changes (the send time
of the first probe answered with the new source). One measurement:

1. delete the Pod object standing for the lab pod and wait until the server sees the worker's address again (the
   lab CNI's masquerade: the pod is no longer steered);
2. create the Pod object, then write its IP with a status merge-patch (what the kubelet does) and note the time;
3. the latency is the send time of the first probe answered with the EIP minus the time of the status write.

The four lab pods are measured in parallel, in rounds, until the sample is big enough (>= 100 creations). Then
1,000 extra Pod objects (IPs from 100.64.16.0/22, not used by the lab; half selected by the policy, half in an
unselected namespace; on the two workers) are created and the measurement is repeated. The policy measurement:
delete the policy, wait for the node addresses, create it, per selected pod the time to the first EIP answer.

Beside the JSON, `<out stem>-plots/` gets the latency distributions as SVG (`lab.plots.plot_distributions`): one for
pod IP -> EIP, one for new policy -> EIP, each with and without the extra pods.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ipaddress
import json
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from appliance.core.waiting import wait_until
from lab.bench.harness import wait_steady
from lab.bench.stats import fmt_ms, summarize
from lab.extserver import DEFAULT_PORT
from lab.plots import plot_distributions
from lab.scenarios import policy_manifest, scenario_gateway
from lab.system import System
from lab.tables import render_table

PREFIX = "egt-bn-"
NAMESPACE = "shop"
UNSELECTED_NAMESPACE = "blog"
POLICY = "web-egress"
LABELS = {"app": "web"}
EXTRA_POOL = ipaddress.ip_network("100.64.16.0/22")
INTERVAL_S = 0.005


# ----- the watcher (runs inside a pod namespace) -----

def watch(server: str, port: int, interval: float) -> None:
    """Print "<send time> <source>" whenever the source the server reports changes (in probe order).

    Every probe goes out from a fresh socket (a new source port, so a new conntrack entry everywhere): the worker's
    conntrack would otherwise keep treating one long flow the way its first packet was treated (steered, or
    masqueraded by the lab CNI, or neither), and the measurement would be of conntrack, not of the data path."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sel = selectors.DefaultSelector()
    open_socks: collections.deque[socket.socket] = collections.deque()
    sent: dict[int, float] = {}
    last_seq, last_src = -1, ""
    start = time.monotonic()
    seq = 0
    while True:
        now = time.time()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.sendto(b"%d %.6f" % (seq, now), (server, port))
        sent[seq] = now
        sel.register(sock, selectors.EVENT_READ)
        open_socks.append(sock)
        if len(open_socks) > 100:  # 0.5 s of probes: older answers are lost for good
            old = open_socks.popleft()
            sel.unregister(old)
            old.close()
        sent.pop(seq - 200, None)
        seq += 1
        while True:
            delay = start + seq * interval - time.monotonic()
            if delay <= 0:
                break
            for key, _ in sel.select(delay):
                with contextlib.suppress(OSError):
                    data = key.fileobj.recv(2048)  # type: ignore[union-attr]
                    head, _, src_b = data.partition(b"|")
                    got, src = int(head.split(b" ")[0]), src_b.decode().strip()
                    if got > last_seq:
                        last_seq = got
                        if src != last_src:
                            last_src = src
                            print(f"{sent.get(got, time.time()):.6f} {src}", flush=True)


class Watcher:
    """A watcher process in one lab pod namespace; `changes` holds (send time, source) transitions."""

    def __init__(self, system: System, lab_pod: str) -> None:
        self.lab_pod = lab_pod
        self.changes: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] = system.lab.popen(
            lab_pod, [sys.executable, "-m", "lab.bench.convergence", "watch", "--server",
                      system.external_address(4), "--port", str(system.ext_port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, _, src = line.strip().partition(" ")
            with self.lock:
                self.changes.append((float(t), src))

    def current(self) -> str:
        with self.lock:
            return self.changes[-1][1] if self.changes else ""

    def first(self, source: str, since: float) -> float | None:
        with self.lock:
            return next((t for t, s in self.changes if s == source and t >= since), None)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def wait_current(w: Watcher, source: str, *, timeout: float) -> None:
    """Until the watcher's latest answer came from `source`."""
    wait_until(lambda: w.current() == source, timeout=timeout, interval=0.02,
               what=f"{w.lab_pod}: the server to see {source}", describe=lambda: f"the server sees {w.current()!r}")


def wait_first(w: Watcher, source: str, since: float, *, timeout: float) -> float:
    """Until the watcher saw `source` in an answer to a probe sent at or after `since`; returns that send time."""
    sent = wait_until(lambda: w.first(source, since), timeout=timeout, interval=0.02,
                      what=f"{w.lab_pod}: an answer from {source}")
    assert sent is not None  # wait_until returns only a truthy value
    return sent


def first_after(changes: Sequence[tuple[float, str]], source: str, since: float) -> float | None:
    """The time of the first change to `source` at or after `since` (pure; None when there is none)."""
    return next((t for t, s in changes if s == source and t >= since), None)


# ----- Pod objects -----

@dataclass
class Cluster:
    system: System
    core: Any  # kubernetes.client.CoreV1Api
    custom: Any  # kubernetes.client.CustomObjectsApi
    watchers: dict[str, Watcher] = field(default_factory=dict)

    def create_pod(self, name: str, node: str, ips: Sequence[str], *, namespace: str = NAMESPACE,
                   labels: dict[str, str] | None = None) -> float:
        """Create the Pod object, then write its IPs (status merge-patch); returns the time of the write."""
        self.core.create_namespaced_pod(namespace, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or dict(LABELS)},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "lab"}]}})
        written = time.time()
        self.core.api_client.call_api(
            f"/api/v1/namespaces/{namespace}/pods/{name}/status", "PATCH",
            header_params={"Content-Type": "application/merge-patch+json"},
            body={"status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}},
            auth_settings=["BearerToken"], _preload_content=False)
        return written

    def delete_pod(self, name: str, namespace: str = NAMESPACE) -> None:
        self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def _node_ip(system: System, lab_pod: str) -> str:
    return str(system.nodes[system.nodes[lab_pod].worker].address(4))


def _pod_ips(system: System, lab_pod: str) -> list[str]:
    return [str(ifc.ip) for _, ifc in system.nodes[lab_pod].addresses]


def measure_pods(c: Cluster, rounds: int, *, timeout: float = 20.0) -> list[float]:
    """`rounds` x (delete every lab pod's Pod object, wait for the node IP, create them): latencies in ms."""
    system = c.system
    out: list[float] = []
    for r in range(rounds):
        for lab_pod in system.pods:
            c.delete_pod(f"conv-{lab_pod}")
        for lab_pod, w in c.watchers.items():
            wait_current(w, _node_ip(system, lab_pod), timeout=timeout)
        time.sleep(0.2)
        written: dict[str, float] = {}
        for lab_pod in system.pods:
            written[lab_pod] = c.create_pod(f"conv-{lab_pod}", system.nodes[lab_pod].worker,
                                            _pod_ips(system, lab_pod))
        for lab_pod, w in c.watchers.items():
            t = wait_first(w, system.scenario.default_eip_v4, written[lab_pod], timeout=timeout)
            out.append(round((t - written[lab_pod]) * 1000.0, 1))
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{v:.0f}" for v in out[-len(c.watchers):]) + " ms",
              flush=True)
    return out


def measure_policy(c: Cluster, reps: int, *, timeout: float = 20.0) -> list[float]:
    """Delete the policy, wait for node addresses, create it: per lab pod the time to the first EIP answer (ms)."""
    system = c.system
    out: list[float] = []
    for _ in range(reps):
        system.delete("EgressPolicy", POLICY, NAMESPACE)
        for lab_pod, w in c.watchers.items():
            wait_current(w, _node_ip(system, lab_pod), timeout=timeout)
        time.sleep(0.2)
        created = time.time()
        system.apply([policy_manifest(NAMESPACE, POLICY, match_labels=LABELS)])
        for w in c.watchers.values():
            t = wait_first(w, system.scenario.default_eip_v4, created, timeout=timeout)
            out.append(round((t - created) * 1000.0, 1))
    return out


def extra_pod_specs(count: int) -> list[tuple[str, str, str, str]]:
    """(name, namespace, node, ip) of the extra pods: every other one selected, alternating workers (pure)."""
    hosts = EXTRA_POOL.hosts()
    out = []
    for i in range(count):
        ns = NAMESPACE if i % 2 == 0 else UNSELECTED_NAMESPACE
        out.append((f"extra-{i:04d}", ns, "worker1" if i % 4 < 2 else "worker2", str(next(hosts))))
    return out


def add_extra_pods(c: Cluster, count: int) -> float:
    """Create the extra Pod objects while agents and gateways are stopped, then start them again and wait until the
    lab pods leave with the EIP: with the services running, every pod event makes four services reconcile and
    publish, and the lab's API server (sharing 2 cores) ingests only a few pods per second; the benchmark measures
    convergence *with* 1,000 pods in the cluster, not the ingestion rate. Returns the seconds taken."""
    started = time.time()
    system = c.system
    for node in system.workers + system.gateways:
        system.stop_service(node)
    specs = extra_pod_specs(count)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda s: c.create_pod(s[0], s[2], [s[3]], namespace=s[1], labels=dict(LABELS)), specs))
    for gw in system.gateways:
        system.start_gateway(gw)
    for w in system.workers:
        system.start_agent(w)
    for watcher in c.watchers.values():
        wait_current(watcher, system.scenario.default_eip_v4, timeout=120)
    wait_steady(system)
    time.sleep(2.0)
    return time.time() - started


# ----- the run -----

def _summary_json(values: list[float]) -> dict[str, Any] | None:
    s = summarize(values)
    return s.to_json() if s else None


def run_convergence_bench(out_path: Path, *, quick: bool = False) -> dict[str, Any]:
    rounds = 3 if quick else 25  # x 4 lab pods
    policy_reps = 2 if quick else 10
    extra = 200 if quick else 1000
    started = time.time()

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - started:4.0f}s] {msg}", flush=True)

    say("bringing up the lab")
    system = System.up(prefix=PREFIX)
    c = Cluster(system=system, core=client.CoreV1Api(system.api), custom=client.CustomObjectsApi(system.api))
    results: dict[str, Any] = {}
    try:
        system.ensure_namespace(NAMESPACE)
        system.ensure_namespace(UNSELECTED_NAMESPACE)
        system.apply([scenario_gateway(system.scenario), policy_manifest(NAMESPACE, POLICY, match_labels=LABELS)])
        for lab_pod in system.pods:
            c.create_pod(f"conv-{lab_pod}", system.nodes[lab_pod].worker, _pod_ips(system, lab_pod))
        c.watchers = {p: Watcher(system, p) for p in system.pods}
        for w in c.watchers.values():
            wait_current(w, system.scenario.default_eip_v4, timeout=120)
        wait_steady(system)
        say(f"pod IP written -> first packet with the EIP: {rounds} rounds x {len(c.watchers)} pods")
        results["pod_to_eip_ms"] = measure_pods(c, rounds)
        say(f"new policy -> effect: {policy_reps} repetitions")
        results["policy_to_effect_ms"] = measure_policy(c, policy_reps)
        say(f"creating {extra} extra Pod objects (half selected), with the services stopped")
        results["extra_pods_create_s"] = round(add_extra_pods(c, extra), 1)
        say(f"with {extra} extra pods: {rounds} rounds")
        results["pod_to_eip_ms_with_extra"] = measure_pods(c, rounds)
        results["policy_to_effect_ms_with_extra"] = measure_policy(c, policy_reps)
    finally:
        for w in c.watchers.values():
            w.stop()
        system.down()
    doc = {
        "benchmark": "convergence",
        "command": "egressgw bench convergence" + (" --quick" if quick else "") + f" --out {out_path}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "probe_interval_ms": INTERVAL_S * 1000,
        "extra_pods": extra,
        "goal_p99_ms": 500,
        "summary": {k: _summary_json(v) for k, v in results.items() if isinstance(v, list)},
        "samples": results,
    }
    out_path.write_text(json.dumps(doc, indent=1))
    rows = []
    labels = {"pod_to_eip_ms": "pod IP written -> EIP",
              "pod_to_eip_ms_with_extra": f"  with {extra} extra pods",
              "policy_to_effect_ms": "new policy -> EIP",
              "policy_to_effect_ms_with_extra": f"  with {extra} extra pods"}
    for key, label in labels.items():
        s = summarize(results.get(key) or [])
        rows.append([label, s.n if s else 0, fmt_ms(s.p50 if s else None), fmt_ms(s.p99 if s else None),
                     fmt_ms(s.max if s else None)])
    print(render_table(["measurement", "n", "p50 (ms)", "p99 (ms)", "max (ms)"], rows,
                       title="Convergence (goal: p99 <= 500 ms)"))
    for path in plot_convergence(results, out_path.parent / (out_path.stem + "-plots"), extra=extra):
        print(f"plot written to {path}")
    return doc


def plot_convergence(results: dict[str, Any], directory: Path, *, extra: int) -> list[Path]:
    """The latency distributions of a run (the `samples` of its JSON) as SVG files in `directory`."""
    plots = {"pod-ip-to-eip.svg": ("pod IP written -> first packet with the EIP", "pod_to_eip_ms"),
             "policy-to-eip.svg": ("new policy -> first packet with the EIP", "policy_to_effect_ms")}
    return [plot_distributions({"lab pods only": results.get(key) or [],
                                f"with {extra} extra pods": results.get(f"{key}_with_extra") or []},
                               directory / name, title=title, unit="ms")
            for name, (title, key) in plots.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bench.convergence", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch", help="(inside a pod namespace) print source changes")
    w.add_argument("--server", required=True)
    w.add_argument("--port", type=int, default=DEFAULT_PORT)
    w.add_argument("--interval-ms", type=float, default=INTERVAL_S * 1000)
    args = parser.parse_args(argv)
    watch(args.server, args.port, args.interval_ms / 1000.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
