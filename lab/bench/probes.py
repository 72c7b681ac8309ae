"""A long-running raw traffic probe for the lab benchmarks: UDP every 10 ms and one long-lived TCP stream, in one
process, reporting every datagram (send time, answer time, source the server saw) so the host can cut the run into
windows, one per fault.

Why not `lab.probe` per repetition: starting two Python probes per repetition costs seconds on a 2-core machine
already running the lab, and the first datagrams of a fresh flow measure flow set-up, not the fault. Here one probe
runs across all repetitions of a router and `window()` (pure, unit-tested) analyses
`[fault - before, fault + after)` with `lab.probe.analyse`.

- in a namespace: `python -m lab.bench.probes --server 203.0.113.2` runs until SIGTERM, then prints the raw JSON;
- on the host: `RawProbe(lab, "w1p1").start()`, ..., `raw = probe.stop()`, `window(raw, t0, t1)`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lab.extserver import DEFAULT_PORT
from lab.probe import ProbeHost, ProbeReport, analyse, start_sending, stop_for_json


@dataclass(frozen=True, slots=True, kw_only=True)
class Stream:
    sent: dict[int, float]
    answers: dict[int, tuple[float, str]]
    breaks: tuple[float, ...] = ()  # TCP: when the connection broke (reset, EOF, send error)


@dataclass(frozen=True, slots=True, kw_only=True)
class RawRun:
    server: str
    interval: float
    udp: Stream
    tcp: Stream

    @staticmethod
    def from_json(data: dict[str, Any]) -> RawRun:
        def stream(d: dict[str, Any]) -> Stream:
            return Stream(sent={int(s): float(t) for s, t in d["sent"]},
                          answers={int(s): (float(t), str(src)) for s, t, src in d["answers"]},
                          breaks=tuple(float(b) for b in d.get("breaks", ())))
        return RawRun(server=data["server"], interval=float(data["interval"]), udp=stream(data["udp"]),
                      tcp=stream(data["tcp"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    udp: ProbeReport
    tcp: ProbeReport
    tcp_breaks: int

    @property
    def outage_ms(self) -> float:
        """The UDP outage: the longest run of unanswered probes (0 when nothing was lost)."""
        return self.udp.longest_gap_ms if self.udp.lost else 0.0

    @property
    def tcp_survived(self) -> bool:
        return self.tcp_breaks == 0 and self.tcp.received > 0

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(sorted({s.source for s in self.udp.sources}))


def _cut(stream: Stream, t0: float, t1: float) -> tuple[dict[int, float], dict[int, tuple[float, str]]]:
    sent = {s: t for s, t in stream.sent.items() if t0 <= t < t1}
    return sent, {s: a for s, a in stream.answers.items() if s in sent}


def window(raw: RawRun, t0: float, t1: float) -> Window:
    """Analyse the probes *sent* in [t0, t1): UDP loss and outage, TCP longest stall and connection breaks."""
    sent, answers = _cut(raw.udp, t0, t1)
    udp = analyse(mode="udp", server=raw.server, interval=raw.interval, started=t0,
                  ended=max(sent.values(), default=t0) + raw.interval, sent=sent, answers=answers)
    tsent, tanswers = _cut(raw.tcp, t0, t1)
    tcp = analyse(mode="tcp", server=raw.server, interval=raw.interval, started=t0,
                  ended=max(tsent.values(), default=t0) + raw.interval, sent=tsent, answers=tanswers)
    return Window(udp=udp, tcp=tcp, tcp_breaks=sum(1 for b in raw.tcp.breaks if t0 <= b < t1))


# ----- the probe process -----

class _Prober:
    def __init__(self, server: str, port: int, interval: float) -> None:
        self.server, self.port, self.interval = server, port, interval
        self.family = socket.AF_INET6 if ":" in server else socket.AF_INET
        self.stop = threading.Event()
        self.udp_sent: dict[int, float] = {}
        self.udp_answers: dict[int, tuple[float, str]] = {}
        self.tcp_sent: dict[int, float] = {}
        self.tcp_answers: dict[int, tuple[float, str]] = {}
        self.breaks: list[float] = []
        self.udp_sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.udp_sock.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", 0))
        self.udp_sock.settimeout(0.05)
        self.tcp_sock: socket.socket | None = None
        self.lock = threading.Lock()

    @staticmethod
    def _parse(line: bytes) -> tuple[int, str]:
        head, _, src = line.partition(b"|")
        return int(head.split(b" ")[0]), src.decode().strip()

    def udp_receive(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.udp_sock.recv(2048)
            except (TimeoutError, OSError):
                continue
            seq, src = self._parse(data)
            self.udp_answers.setdefault(seq, (time.time(), src))

    def tcp_receive(self, s: socket.socket) -> None:
        buf = b""
        while not self.stop.is_set():
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                with self.lock:
                    if self.tcp_sock is s:
                        self.breaks.append(time.time())
                        self.tcp_sock = None
                        s.close()
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            now = time.time()
            for line in lines:
                seq, src = self._parse(line)
                self.tcp_answers.setdefault(seq, (now, src))

    def tcp_send(self, seq: int, now: float) -> None:
        with self.lock:
            s = self.tcp_sock
            if s is None:
                try:
                    s = socket.create_connection((self.server, self.port), timeout=0.5)
                except OSError:
                    return
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.2)
                self.tcp_sock = s
                threading.Thread(target=self.tcp_receive, args=(s,), daemon=True).start()
            try:
                s.sendall(b"%d %.6f\n" % (seq, now))
            except OSError:
                self.breaks.append(time.time())
                self.tcp_sock = None
                s.close()

    def _loop(self, send: Any) -> None:
        start = time.monotonic()
        seq = 0
        while not self.stop.is_set():
            send(seq, time.time())
            seq += 1
            delay = start + seq * self.interval - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)

    def udp_send(self, seq: int, now: float) -> None:
        self.udp_sent[seq] = now
        with contextlib.suppress(OSError):
            self.udp_sock.sendto(b"%d %.6f" % (seq, now), (self.server, self.port))

    def run(self) -> None:
        """UDP and TCP each in their own send loop: a TCP reconnect never delays the UDP probes."""
        threading.Thread(target=self.udp_receive, daemon=True).start()
        tcp = threading.Thread(target=self._loop, args=(self._tcp_send_recorded,), daemon=True)
        tcp.start()
        self._loop(self.udp_send)
        tcp.join(2.0)
        time.sleep(0.3)  # late answers

    def _tcp_send_recorded(self, seq: int, now: float) -> None:
        self.tcp_sent[seq] = now
        self.tcp_send(seq, now)

    def dump(self) -> dict[str, Any]:
        return {
            "server": self.server, "interval": self.interval,
            "udp": {"sent": list(self.udp_sent.items()),
                    "answers": [[s, t, src] for s, (t, src) in self.udp_answers.items()]},
            "tcp": {"sent": list(self.tcp_sent.items()),
                    "answers": [[s, t, src] for s, (t, src) in self.tcp_answers.items()], "breaks": self.breaks},
        }


class RawProbe:
    """`python -m lab.bench.probes` inside a lab node; stop() returns every probe's fate."""

    def __init__(self, lab: ProbeHost, node: str, *, server: str, port: int = DEFAULT_PORT,
                 interval_ms: float = 10.0) -> None:
        self.lab, self.node = lab, node
        self.argv = [sys.executable, "-m", "lab.bench.probes", "--server", server, "--port", str(port),
                     "--interval-ms", str(interval_ms)]
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 10.0) -> RawProbe:
        self.proc = start_sending(self.lab, self.node, self.argv, ready="lab.bench.probes: sending", timeout=timeout)
        return self

    def stop(self, timeout: float = 30.0) -> RawRun:
        return RawRun.from_json(stop_for_json(self.proc, self.node, timeout=timeout))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bench.probes", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    prober = _Prober(args.server, args.port, args.interval_ms / 1000.0)
    signal.signal(signal.SIGTERM, lambda *_: prober.stop.set())
    signal.signal(signal.SIGINT, lambda *_: prober.stop.set())
    print(f"lab.bench.probes: sending to {args.server}:{args.port}", file=sys.stderr, flush=True)
    prober.run()
    print(json.dumps(prober.dump()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
