"""Traffic probe for failover measurements: runs in a pod namespace, talks to the lab's external server.

UDP mode sends one numbered datagram every `interval` (10 ms by default); the server echoes it with the source
address it saw. TCP mode keeps one connection and sends a numbered line every interval (reconnecting if the
connection breaks). The report (JSON) says: sent, received, lost, the longest gap between two answered probes
(UDP: by send time, i.e. the run of lost probes; TCP: by arrival time), the longest stall between two answers
arriving (includes packets held in a neighbour queue while a link is down), when the longest outage started and
ended, and the source addresses the server saw over time (spans of consecutive answers).

- command line: `python -m lab.probe --server 203.0.113.2 [--tcp] [--interval-ms 10] --duration 5` prints the
  report; without `--duration` it runs until SIGINT/SIGTERM and then prints it.
- library: `BackgroundProbe(lab, "w1p1", server="203.0.113.2").start()`, ..., `report = probe.stop()`.
The analysis (`analyse`) is pure and unit-tested.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from lab.extserver import DEFAULT_PORT


class ProbeHost(Protocol):
    """What the probes need of a lab: start a process in a node (`lab.runner.Lab` is one). The probe modules run
    inside pod namespaces as scripts, so they do not import the runner (and its topology parser)."""

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceSpan:
    source: str
    first: float  # wall-clock time of the first answer in the span
    last: float
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeReport:
    mode: str
    server: str
    interval_ms: float
    started: float
    ended: float
    sent: int
    received: int
    lost: int
    longest_gap_ms: float  # between consecutive answered probes; about interval_ms when nothing was lost
    max_consecutive_lost: int
    longest_stall_ms: float  # longest time between two consecutive answers *arriving* (includes queueing delays)
    outage_start: float | None  # wall clock: first probe of the longest gap that went unanswered
    outage_end: float | None  # wall clock: the first answered probe after it
    reconnects: int
    sources: tuple[SourceSpan, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> ProbeReport:
        spans = tuple(SourceSpan(**s) for s in data["sources"])
        return ProbeReport(**{**data, "sources": spans})


def analyse(*, mode: str, server: str, interval: float, started: float, ended: float,
            sent: dict[int, float], answers: dict[int, tuple[float, str]], reconnects: int = 0) -> ProbeReport:
    """sent: seq -> send time; answers: seq -> (arrival time, source seen). Times are wall-clock seconds."""
    seqs = sorted(sent)
    answered = [s for s in seqs if s in answers]

    def key(seq: int) -> float:
        return sent[seq] if mode == "udp" else answers[seq][0]

    gap, max_lost = 0.0, 0
    o_start: float | None = None
    o_end: float | None = None
    if not answered:
        gap = (ended - started) * 1000.0
        max_lost = len(seqs)
        o_start, o_end = (sent[seqs[0]] if seqs else started), None
    else:
        points = sorted(answered, key=key)
        for a, b in itertools.pairwise(points):
            g = (key(b) - key(a)) * 1000.0
            if g > gap:
                gap = g
                missing = [s for s in seqs if a < s < b and s not in answers]
                o_start = sent[missing[0]] if missing else key(a)
                o_end = key(b)
        tail = [s for s in seqs if s > points[-1]]
        if tail and (ended - key(points[-1])) * 1000.0 > gap:
            gap = (ended - key(points[-1])) * 1000.0
            o_start, o_end = sent[tail[0]], None
        run = 0
        for s in seqs:
            run = 0 if s in answers else run + 1
            max_lost = max(max_lost, run)
    arrivals = sorted(t for t, _ in answers.values())
    stall = max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0) * 1000.0
    spans: list[SourceSpan] = []
    for s in sorted(answered, key=key):
        t, src = answers[s][0], answers[s][1]
        if spans and spans[-1].source == src:
            last = spans[-1]
            spans[-1] = SourceSpan(source=src, first=last.first, last=t, count=last.count + 1)
        else:
            spans.append(SourceSpan(source=src, first=t, last=t, count=1))
    return ProbeReport(
        mode=mode, server=server, interval_ms=interval * 1000.0, started=started, ended=ended, sent=len(seqs),
        received=len(answered), lost=len(seqs) - len(answered), longest_gap_ms=round(gap, 3),
        max_consecutive_lost=max_lost, longest_stall_ms=round(stall, 3), outage_start=o_start, outage_end=o_end,
        reconnects=reconnects,
        sources=tuple(spans),
    )


class _Run:
    def __init__(self, server: str, port: int, interval: float) -> None:
        self.server, self.port, self.interval = server, port, interval
        self.sent: dict[int, float] = {}
        self.answers: dict[int, tuple[float, str]] = {}
        self.stop = threading.Event()
        self.reconnects = 0
        self.grace_until = float("inf")
        self.family = socket.AF_INET6 if ":" in server else socket.AF_INET

    def udp(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        sock.settimeout(0.05)

        def receive() -> None:
            while not self.stop.is_set() or time.time() < self.grace_until:
                try:
                    data = sock.recv(2048)
                except (TimeoutError, OSError):
                    continue
                head, _, src = data.partition(b"|")
                seq = int(head.split(b" ")[0])
                self.answers.setdefault(seq, (time.time(), src.decode()))

        self.grace_until = float("inf")
        rx = threading.Thread(target=receive, daemon=True)
        rx.start()
        self._send_loop(lambda seq, now: sock.sendto(b"%d %.6f" % (seq, now), (self.server, self.port)))
        self.grace_until = time.time() + 0.5
        rx.join()
        sock.close()

    def tcp(self) -> None:
        conn: list[socket.socket | None] = [None]
        lock = threading.Lock()

        def connect() -> socket.socket | None:
            try:
                s = socket.create_connection((self.server, self.port), timeout=1.0)
            except OSError:
                return None
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(0.2)
            threading.Thread(target=receive, args=(s,), daemon=True).start()
            return s

        def receive(s: socket.socket) -> None:
            buf = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    if self.stop.is_set() and time.time() > self.grace_until:
                        return
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                now = time.time()
                for line in lines:
                    head, _, src = line.partition(b"|")
                    self.answers.setdefault(int(head.split(b" ")[0]), (now, src.decode()))

        def send(seq: int, now: float) -> None:
            with lock:
                s = conn[0]
                if s is None:
                    s = conn[0] = connect()
                    if s is None:
                        return
                    if seq > 0:
                        self.reconnects += 1
                try:
                    s.sendall(b"%d %.6f\n" % (seq, now))
                except OSError:
                    s.close()
                    conn[0] = None

        self.grace_until = float("inf")
        self._send_loop(send)
        self.grace_until = time.time() + 0.5
        time.sleep(0.55)
        if conn[0] is not None:
            conn[0].close()

    def _send_loop(self, send: Any) -> None:
        start = time.monotonic()
        seq = 0
        while not self.stop.is_set():
            now = time.time()
            self.sent[seq] = now
            send(seq, now)
            seq += 1
            delay = start + seq * self.interval - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)


def run_probe(server: str, *, port: int = DEFAULT_PORT, tcp: bool = False, interval: float = 0.01,
              duration: float | None = None, stop: threading.Event | None = None) -> ProbeReport:
    """Probe from the current namespace until `duration` elapsed or `stop` is set."""
    r = _Run(server, port, interval)
    if stop is not None:
        r.stop = stop
    if duration is not None:
        threading.Timer(duration, r.stop.set).start()
    started = time.time()
    (r.tcp if tcp else r.udp)()
    ended = max(r.sent.values(), default=started) + interval
    return analyse(mode="tcp" if tcp else "udp", server=server, interval=interval, started=started, ended=ended,
                   sent=r.sent, answers=r.answers, reconnects=r.reconnects)


class BackgroundProbe:
    """A probe running as `python -m lab.probe` inside a lab node; stop() ends it and returns the report."""

    def __init__(self, lab: ProbeHost, node: str, *, server: str, port: int = DEFAULT_PORT,
                 tcp: bool = False, interval_ms: float = 10.0) -> None:
        self.lab, self.node = lab, node
        self.argv = [sys.executable, "-m", "lab.probe", "--server", server, "--port", str(port),
                     "--interval-ms", str(interval_ms), *(["--tcp"] if tcp else [])]
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 10.0) -> BackgroundProbe:
        """Start the probe and return once it is sending (it says so on stderr)."""
        self.proc = start_sending(self.lab, self.node, self.argv, ready="probe: sending", timeout=timeout)
        return self

    def stop(self, timeout: float = 10.0) -> ProbeReport:
        return ProbeReport.from_json(stop_for_json(self.proc, self.node, timeout=timeout))


def start_sending(lab: ProbeHost, node: str, argv: Sequence[str], *, ready: str,
                  timeout: float) -> subprocess.Popen[str]:
    """Start a probe process in `node` and return once its first stderr line says it is sending (`ready`)."""
    proc = lab.popen(node, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr
    assert stderr is not None
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(stderr.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not first or not first[0].startswith(ready):
        proc.kill()
        raise RuntimeError(f"probe in {node} did not start: {first[0] if first else 'timeout'}")
    return proc


def stop_for_json(proc: subprocess.Popen[str] | None, node: str, *, timeout: float) -> Any:
    """SIGTERM a probe started by `start_sending` and return the JSON report it prints on stdout."""
    if proc is None:
        raise RuntimeError("probe not started")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"probe in {node} failed ({proc.returncode}): {err.strip()}")
    return json.loads(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--tcp", action="store_true", help="one long-lived TCP stream instead of UDP datagrams")
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--duration", type=float, help="seconds (default: until SIGINT/SIGTERM)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"probe: sending to {args.server}:{args.port}", file=sys.stderr, flush=True)
    report = run_probe(args.server, port=args.port, tcp=args.tcp, interval=args.interval_ms / 1000.0,
                       duration=args.duration, stop=stop)
    print(json.dumps(report.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
