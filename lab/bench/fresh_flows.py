"""Fresh flows across a failover (issue 15): traffic that only ever went through the member that fails, and what the
member taking over makes of it, with conntrack state sync on and off.

The long-lived probe (`lab.bench.probes`) is kind to a failover: the member taking over usually still holds that
flow's conntrack entry from the last time it was primary. The flows here are created through the primary shortly
before each fault, so only state sync can have told the other member about them:
- **fresh UDP**: a request every 10 ms, from a new socket (new source port, new conntrack entry) per 1 s window
  aligned to the wall clock; the server echoes each request with the source address *and port* it saw;
- **server-push TCP**: per repetition a new TCP connection from the pod, on which the server sends a line every
  10 ms and the pod only reads (no data, only ACKs, flows from the pod: after a failover nothing from the pod
  creates a new entry on the member taking over, so an unknown flow stays dropped as unsolicited).

One process in the pod (`python -m lab.bench.fresh_flows`) runs for a whole series; it takes `push` on stdin (close
the current server-push connection, open a fresh one) and prints every datagram's and push's fate as JSON at
SIGTERM. The server is a second `lab.extserver` in the lab's external node (`--report-port`, a push port), started
by `FreshServer`. `FreshFlows.prepare()` runs before each fault (a fresh push connection, then the fault falls
`FLOW_LEAD_S` into a new UDP window); `analyse_fresh()` (pure) cuts the raw record into one repetition's figures:

- `fresh_udp_lost` / `fresh_udp_sent`: requests sent in `[fault - before, end of the fault phase)` left unanswered;
- `snat_port_changed`: the source port the server saw for the UDP flow that spans the fault, before vs after it
  (None when the flow got no answer on one side);
- `server_push_tcp_stall_ms`: the longest gap between two pushes arriving at the pod, from `fault - before` until
  the member is back (a push stream that never resumed counts until then), `server_push_tcp_survived`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.core.waiting import wait_until
from appliance.runtime.config import GatewayConfig
from lab.bench.stats import fmt_ms, summarize
from lab.probe import analyse
from lab.system import System

#: the second external server's ports (inside the external node; the lab's own server keeps 7000 / 7080)
ECHO_PORT = 7100
PUSH_PORT = 7101
CONTROL = "127.0.0.1:7180"
SERVER_DAEMON = "extserver-fresh"
INTERVAL_S = 0.01
WINDOW_S = 1.0
#: the fault comes this long after the fresh UDP flow's first request (and >= this after the push connection)
FLOW_LEAD_S = 0.3
READY = "lab.bench.fresh_flows: sending"


# ----- the raw record -----

@dataclass(frozen=True, slots=True, kw_only=True)
class Datagram:
    seq: int
    sent: float
    flow: int  # the 1 s window (one socket per window)
    local_port: int
    answered: float | None
    seen_source: str
    seen_port: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PushConn:
    opened: float
    local_port: int
    seen_port: int | None
    received: tuple[float, ...]  # arrival time of each pushed line
    broke: float | None  # reset, EOF or error (not our own close)
    closed: float | None  # closed by us (the next `push` command)
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FreshRaw:
    server: str
    interval: float
    udp: tuple[Datagram, ...]
    push: tuple[PushConn, ...]

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> FreshRaw:
        udp = tuple(Datagram(seq=int(s), sent=float(t), flow=int(f), local_port=int(lp),
                             answered=None if a is None else float(a), seen_source=str(src),
                             seen_port=None if p is None else int(p))
                    for s, t, f, lp, a, src, p in data["udp"])
        push = tuple(PushConn(opened=float(c["opened"]), local_port=int(c["local_port"]),
                              seen_port=c.get("seen_port"), received=tuple(float(t) for t in c["received"]),
                              broke=c.get("broke"), closed=c.get("closed"), error=str(c.get("error", "")))
                     for c in data["push"])
        return FreshRaw(server=str(data["server"]), interval=float(data["interval"]),
                        udp=tuple(sorted(udp, key=lambda d: d.seq)), push=push)


# ----- analysis (pure) -----

def _udp_figures(raw: FreshRaw, t0: float, fault_at: float, fault_end: float) -> dict[str, Any]:
    inside = [d for d in raw.udp if t0 <= d.sent < fault_end]
    report = analyse(mode="udp", server=raw.server, interval=raw.interval, started=t0,
                     ended=max((d.sent for d in inside), default=t0) + raw.interval,
                     sent={d.seq: d.sent for d in inside},
                     answers={d.seq: (d.answered, d.seen_source) for d in inside if d.answered is not None})
    prior = [d for d in raw.udp if d.sent < fault_at]
    flow = prior[-1].flow if prior else None
    mine = [d for d in raw.udp if d.flow == flow and d.seen_port is not None]
    before = sorted({d.seen_port for d in mine if d.sent < fault_at and d.seen_port is not None})
    after = sorted({d.seen_port for d in mine if d.sent >= fault_at and d.seen_port is not None})
    first = min((d.sent for d in raw.udp if d.flow == flow), default=None)
    return {
        "fresh_udp_sent": report.sent,
        "fresh_udp_lost": report.lost,
        "fresh_udp_outage_ms": round(report.longest_gap_ms, 1) if report.lost else 0.0,
        "fresh_udp_sources": sorted({s.source for s in report.sources}),
        "fresh_flow_age_ms": None if first is None else round((fault_at - first) * 1000.0, 1),
        "snat_ports_before": before,
        "snat_ports_after": after,
        "snat_port_changed": (before != after) if before and after else None,
    }


def _push_figures(raw: FreshRaw, t0: float, fault_at: float, until: float) -> dict[str, Any]:
    conn = next((c for c in reversed(raw.push) if c.opened < fault_at), None)
    if conn is None or not any(t < fault_at for t in conn.received):
        return {"server_push_connected": False, "server_push_tcp_stall_ms": None, "server_push_resumed": False,
                "server_push_tcp_survived": False, "server_push_seen_port": None}
    end = min(until, conn.broke) if conn.broke is not None else until
    if conn.closed is not None:
        end = min(end, conn.closed)
    before = [t for t in conn.received if t < t0]
    points = [*before[-1:], *(t for t in conn.received if t0 <= t <= end)]
    gaps = [(b - a, i) for i, (a, b) in enumerate(itertools.pairwise(points))]
    trailing = max(0.0, end - points[-1])
    longest = max((g for g, _ in gaps), default=0.0)
    resumed = longest >= trailing  # the longest silence ended with a push (it is not the silence at the end)
    stall = max(longest, trailing)
    return {
        "server_push_connected": True,
        "server_push_tcp_stall_ms": round(stall * 1000.0, 1),
        "server_push_resumed": resumed,
        "server_push_tcp_survived": resumed and (conn.broke is None or conn.broke > until),
        "server_push_seen_port": conn.seen_port,
    }


def analyse_fresh(raw: FreshRaw, *, fault_at: float, fault_end: float, returned: float,
                  before_s: float = 0.2) -> dict[str, Any]:
    """One repetition's fresh-flow figures: fresh UDP in `[fault_at - before_s, fault_end)`, the server-push stream
    from `fault_at - before_s` until `returned` (the member back, steady)."""
    t0 = fault_at - before_s
    return {**_udp_figures(raw, t0, fault_at, fault_end), **_push_figures(raw, t0, fault_at, returned)}


#: every key `analyse_fresh` + the failover bench's repetition record give a fresh-flow repetition
FRESH_KEYS = ("fresh_udp_sent", "fresh_udp_lost", "fresh_udp_outage_ms", "fresh_udp_sources", "fresh_flow_age_ms",
              "snat_ports_before", "snat_ports_after", "snat_port_changed", "server_push_connected",
              "server_push_tcp_stall_ms", "server_push_resumed", "server_push_tcp_survived",
              "server_push_seen_port")


def summarize_fresh(reps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures of one (fault, sync mode) over its repetitions (pure)."""
    def s(key: str) -> dict[str, Any] | None:
        got = summarize(r[key] for r in reps if r.get(key) is not None)
        return got.to_json() if got else None
    over = summarize(r["server_push_tcp_stall_ms"] - r["router_convergence_ms"] for r in reps
                     if r.get("server_push_tcp_stall_ms") is not None and r.get("router_convergence_ms") is not None)
    return {
        "n": len(reps),
        "fresh_udp_sent": sum(r["fresh_udp_sent"] for r in reps),
        "fresh_udp_lost": sum(r["fresh_udp_lost"] for r in reps),
        "fresh_udp_lost_max": max((r["fresh_udp_lost"] for r in reps), default=0),
        "reps_with_fresh_udp_loss": sum(1 for r in reps if r["fresh_udp_lost"]),
        "fresh_udp_outage_ms": s("fresh_udp_outage_ms"),
        "server_push_tcp_stall_ms": s("server_push_tcp_stall_ms"),
        # the goal after a hard failure: the stall <= the router's convergence + 50 ms
        "server_push_stall_over_convergence_ms": over.to_json() if over else None,
        "server_push_tcp_survived": sum(1 for r in reps if r["server_push_tcp_survived"]),
        "server_push_not_connected": sum(1 for r in reps if not r["server_push_connected"]),
        "tcp_survived": sum(1 for r in reps if r.get("tcp_survived")),
        "snat_port_changed": sum(1 for r in reps if r["snat_port_changed"]),
        "snat_port_unknown": sum(1 for r in reps if r["snat_port_changed"] is None),
        "long_lived_lost": sum(r.get("lost", 0) for r in reps),
        "router_convergence_ms": s("router_convergence_ms"),
        "eip_unsolicited_drops_on_others": sum(sum((r.get("eip_unsolicited_drops_on_others") or {}).values())
                                               for r in reps),
    }


def group_fresh(reps: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{scenario: {sync mode: {"summary": ..., "reps": [...]}}} in the order the repetitions ran (pure)."""
    out: dict[str, dict[str, Any]] = {}
    for r in reps:
        out.setdefault(r["scenario"], {}).setdefault(r["sync"], []).append(dict(r))
    return {sc: {mode: {"summary": summarize_fresh(rs), "reps": rs} for mode, rs in modes.items()}
            for sc, modes in out.items()}


FRESH_HEADERS = ["router", "fault", "sync", "n", "fresh UDP lost", "reps with loss", "push TCP stall p50",
                 "max (ms)", "stall - conv max", "push TCP survived", "long-lived TCP survived", "SNAT port changed",
                 "router conv p50 (ms)"]


def fresh_table_rows(router: str, fresh: Mapping[str, Mapping[str, Any]]) -> list[list[object]]:
    """One row per (fault, sync mode): sync on and off of the same fault next to each other (pure)."""
    rows: list[list[object]] = []
    for name, modes in fresh.items():
        for mode, sc in modes.items():
            s = sc["summary"]
            n = s["n"]
            stall = s["server_push_tcp_stall_ms"] or {}
            conv = s["router_convergence_ms"] or {}
            over = s["server_push_stall_over_convergence_ms"] or {}
            rows.append([router, name, mode, n, f"{s['fresh_udp_lost']} / {s['fresh_udp_sent']}",
                         f"{s['reps_with_fresh_udp_loss']}/{n}", fmt_ms(stall.get("p50")), fmt_ms(stall.get("max")),
                         fmt_ms(over.get("max")),
                         f"{s['server_push_tcp_survived']}/{n}", f"{s['tcp_survived']}/{n}",
                         f"{s['snat_port_changed']}/{n}" + (f" ({s['snat_port_unknown']} unknown)"
                                                            if s["snat_port_unknown"] else ""),
                         fmt_ms(conv.get("p50"))])
    return rows


# ----- sync on / off -----

@dataclass(frozen=True, slots=True, kw_only=True)
class SyncMode:
    name: str  # "on", "off"
    overrides: Mapping[str, Any]  # gateway config overrides (lab `System.gateway_config`)


SYNC_ON = SyncMode(name="on", overrides={"state_sync": {"enabled": True}})
SYNC_OFF = SyncMode(name="off", overrides={"state_sync": {"enabled": False}})
#: the product before conntrack state sync: no `state_sync` section to set (nothing syncs)
NO_SYNC = SyncMode(name="off (no state_sync in the product)", overrides={})


def product_has_state_sync() -> bool:
    return "state_sync" in {f.name for f in dataclasses.fields(GatewayConfig)}


def sync_modes() -> tuple[SyncMode, ...]:
    """Sync on and off, or only "off" while the product has no `state_sync` setting."""
    return (SYNC_ON, SYNC_OFF) if product_has_state_sync() else (NO_SYNC,)


def default_sync_mode() -> SyncMode:
    """The product's default (no override), named after what it is (on / off)."""
    f = next((f for f in dataclasses.fields(GatewayConfig) if f.name == "state_sync"), None)
    if f is None:
        return NO_SYNC
    if f.default_factory is not dataclasses.MISSING:
        default: Any = f.default_factory()
    else:
        default = None if f.default is dataclasses.MISSING else f.default
    enabled = True if default is None else bool(getattr(default, "enabled", True))  # contract: enabled by default
    return SyncMode(name="on" if enabled else "off", overrides={})


# ----- the lab side: server and probe -----

def external_node(system: System) -> str:
    return next(n for n, v in system.nodes.items() if v.role == "external")


def start_server(system: System) -> str:
    """The second external server (echo with ports, server push every 10 ms); returns its IPv4 address."""
    ext = external_node(system)
    rec = system.lab.daemon(ext, SERVER_DAEMON)
    if rec is None or not system.lab.daemon_alive(rec):
        system.lab.start_daemon(ext, SERVER_DAEMON, System.python_module(
            "lab.extserver", "--port", str(ECHO_PORT), "--control", CONTROL, "--push-port", str(PUSH_PORT),
            "--push-interval-ms", str(INTERVAL_S * 1000.0), "--push-duration", "3600", "--no-icmp",
            "--report-port"))
        wait_until(lambda: system.lab.exec(ext, System.python_module("lab.extclient", "peers", "--control", CONTROL),
                                           check=False, timeout=10).returncode == 0,
                   timeout=30, interval=0.2, what="the fresh-flow external server")
    return str(system.nodes[ext].address(4))


class FreshFlows:
    """`python -m lab.bench.fresh_flows` in a pod, against the server `start_server` started."""

    def __init__(self, system: System, lab_pod: str) -> None:
        self.system, self.lab_pod = system, lab_pod
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 15.0) -> FreshFlows:
        server = start_server(self.system)
        argv = System.python_module("lab.bench.fresh_flows", "--server", server, "--port", str(ECHO_PORT),
                                    "--push-port", str(PUSH_PORT), "--interval-ms", str(INTERVAL_S * 1000.0),
                                    "--window-s", str(WINDOW_S))
        proc = self.system.lab.popen(self.lab_pod, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(proc.stderr.readline() if proc.stderr else ""),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not first or not first[0].startswith(READY):
            proc.kill()
            raise RuntimeError(f"fresh-flow probe in {self.lab_pod} did not start: {first[0] if first else 'timeout'}")
        self.proc = proc
        return self

    def new_push(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("push\n")
        self.proc.stdin.flush()

    def prepare(self) -> None:
        """Before a fault: a fresh server-push connection, then wait until the fault falls FLOW_LEAD_S into a fresh
        UDP window (so both flows were created through the member that is primary now)."""
        self.new_push()
        now = time.time()
        boundary = (math.floor(now / WINDOW_S) + 1) * WINDOW_S
        if boundary - now < 0.2:  # the push connection gets >= 0.5 s to be established
            boundary += WINDOW_S
        time.sleep(max(0.0, boundary + FLOW_LEAD_S - time.time()))

    def stop(self, timeout: float = 60.0) -> FreshRaw:
        if self.proc is None:
            raise RuntimeError("fresh-flow probe not started")
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"fresh-flow probe in {self.lab_pod} failed ({self.proc.returncode}): {err.strip()}")
        self.proc = None
        return FreshRaw.from_json(json.loads(out))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# ----- the process in the pod -----

def _parse_seen(tail: bytes) -> tuple[str, int | None]:
    """`<source>|<port>` (or `<source>`) after the first `|` of an echo or push."""
    src, _, port = tail.partition(b"|")
    return src.decode(errors="replace").strip(), int(port) if port.strip().isdigit() else None


class _Flows:
    def __init__(self, server: str, port: int, push_port: int, interval: float, window_s: float) -> None:
        self.server, self.port, self.push_port = server, port, push_port
        self.interval, self.window_s = interval, window_s
        self.family = socket.AF_INET6 if ":" in server else socket.AF_INET
        self.stop = threading.Event()
        self.done = threading.Event()  # set after the late answers had their time
        self.lock = threading.Lock()
        self.udp: dict[int, list[Any]] = {}  # seq -> [sent, flow, local port, answered, source, port]
        self.socks: list[socket.socket] = []  # newest last; the receiver closes all but the two newest
        self.push: list[dict[str, Any]] = []
        self.push_sock: socket.socket | None = None

    def _new_udp_socket(self) -> socket.socket:
        s = socket.socket(self.family, socket.SOCK_DGRAM)
        s.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", 0))
        s.setblocking(False)
        with self.lock:
            self.socks.append(s)
        return s

    def udp_send_loop(self) -> None:
        start = time.monotonic()
        seq, flow, local_port = 0, -1, 0
        sock: socket.socket | None = None
        while not self.stop.is_set():
            now = time.time()
            window = int(now // self.window_s)
            if sock is None or window != flow:
                sock, flow = self._new_udp_socket(), window
                local_port = sock.getsockname()[1]
            self.udp[seq] = [now, flow, local_port, None, "", None]
            with contextlib.suppress(OSError):
                sock.sendto(b"%d %.6f" % (seq, now), (self.server, self.port))
            seq += 1
            delay = start + seq * self.interval - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)

    def udp_receive_loop(self) -> None:
        while not self.done.is_set():
            with self.lock:
                old, self.socks = self.socks[:-2], self.socks[-2:]
                socks = list(self.socks)
            for s in old:
                s.close()
            if not socks:
                time.sleep(0.01)
                continue
            ready, _, _ = select.select(socks, [], [], 0.02)
            for s in ready:
                try:
                    data = s.recv(2048)
                except OSError:
                    continue
                head, _, tail = data.partition(b"|")
                try:
                    seq = int(head.split(b" ")[0])
                except ValueError:
                    continue
                rec = self.udp.get(seq)
                if rec is not None and rec[3] is None:
                    rec[3] = time.time()
                    rec[4], rec[5] = _parse_seen(tail)

    def new_push(self) -> None:
        with self.lock:
            old, self.push_sock = self.push_sock, None
        if old is not None:
            for c in self.push:
                if c["sock"] is old and c["closed"] is None:
                    c["closed"] = time.time()
            with contextlib.suppress(OSError):
                old.close()
        conn: dict[str, Any] = {"opened": time.time(), "local_port": 0, "seen_port": None, "received": [],
                                "broke": None, "closed": None, "error": "", "sock": None}
        self.push.append(conn)
        try:
            s = socket.create_connection((self.server, self.push_port), timeout=2.0)
        except OSError as exc:
            conn["broke"], conn["error"] = time.time(), f"connect: {exc}"
            return
        s.settimeout(0.2)
        conn["sock"], conn["local_port"] = s, s.getsockname()[1]
        with self.lock:
            self.push_sock = s
        threading.Thread(target=self._push_read, args=(conn, s), daemon=True).start()

    def _push_read(self, conn: dict[str, Any], s: socket.socket) -> None:
        buf = b""
        while not self.stop.is_set() and conn["closed"] is None:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                if conn["closed"] is None:
                    conn["broke"], conn["error"] = time.time(), str(exc)
                return
            if not chunk:
                if conn["closed"] is None:
                    conn["broke"], conn["error"] = time.time(), "closed by the server"
                return
            now = time.time()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                conn["received"].append(now)
                if conn["seen_port"] is None:
                    conn["seen_port"] = _parse_seen(line.partition(b"|")[2])[1]

    def read_commands(self) -> None:
        for line in sys.stdin:
            if line.strip() == "push":
                self.new_push()

    def run(self) -> None:
        receiver = threading.Thread(target=self.udp_receive_loop, daemon=True)
        receiver.start()
        threading.Thread(target=self.read_commands, daemon=True).start()
        self.udp_send_loop()
        time.sleep(0.3)  # late answers
        self.done.set()
        receiver.join(2.0)

    def dump(self) -> dict[str, Any]:
        return {
            "server": self.server, "interval": self.interval, "window_s": self.window_s,
            "udp": [[seq, *rec] for seq, rec in sorted(self.udp.items())],
            "push": [{k: v for k, v in c.items() if k != "sock"} for c in self.push],
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bench.fresh_flows", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=ECHO_PORT)
    parser.add_argument("--push-port", type=int, default=PUSH_PORT)
    parser.add_argument("--interval-ms", type=float, default=INTERVAL_S * 1000.0)
    parser.add_argument("--window-s", type=float, default=WINDOW_S)
    args = parser.parse_args(argv)
    flows = _Flows(args.server, args.port, args.push_port, args.interval_ms / 1000.0, args.window_s)
    signal.signal(signal.SIGTERM, lambda *_: flows.stop.set())
    signal.signal(signal.SIGINT, lambda *_: flows.stop.set())
    print(f"{READY} to {args.server}:{args.port} (push {args.push_port})", file=sys.stderr, flush=True)
    flows.run()
    print(json.dumps(flows.dump()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
