"""When a restarting member's resync from a peer counts as done (`StateSyncDaemons`), with a scripted peer behind a
fake conntrackd (no process: `_spawn`/`_call` replaced), on an injected clock.

The bug this guards against: the drain benchmark's returning member saw its resync time out on every restart (the
peer's live updates never let the received counter hold still for an interval), so the announcement gate always
fell back to its 5 s timer and announced without knowing whether the peer's table had arrived. And its follow-up:
an idle peer (no flows, so no answer to the request, only a keep-alive a second) was asked again at each of its
keep-alives when the statistics were read more often than that, so its resync never finished either."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

import pytest

from appliance.datapath.apply.state_sync import ResyncState, StateSyncDaemons
from appliance.datapath.plan.state_sync import StateSyncPlan, StateSyncSettings, SyncChannel


@dataclass
class FakeProc:
    pid: int = 4242
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class ScriptedPeer:
    """The peer as our daemon's statistics show it: present from `present_at` on, sending a keep-alive or live update
    every second, `updates_per_s` live updates, and its whole table (`table` entries) right after each resync
    request it gets while present (an empty table: no answer at all)."""

    clock: list[float]
    present_at: float = 0.0
    table: int = 40
    updates_per_s: int = 3
    packets: int = 0
    entries: int = 0
    requests: list[float] = field(default_factory=list)
    _last: float = 0.0

    def advance(self) -> None:
        now = self.clock[0]
        start = max(self._last, self.present_at)
        if now > start:
            whole = int(now) - int(start)
            self.packets += whole
            self.entries += whole * self.updates_per_s
        self._last = now

    def request(self) -> None:
        self.advance()
        self.requests.append(self.clock[0])
        if self.clock[0] >= self.present_at and self.table:  # a peer that is not there never gets the request
            self.packets += 2
            self.entries += self.table

    def stats(self) -> str:
        self.advance()
        return (f"external inject:\nconnections created:\t\t{self.entries}\tfailed:\t0\n"
                f"network statistics:\n  0 Pckts sent  {self.packets} Pckts recv\n")


class FakeDaemons(StateSyncDaemons):
    def __init__(self, tmp: Path, settings: StateSyncSettings, peer: ScriptedPeer, clock: list[float]) -> None:
        super().__init__(tmp, settings, member="gw2", interface_of=lambda _p, _l: "eth1", clock=lambda: clock[0])
        self.peer = peer

    def _spawn(self, ch: object) -> FakeProc:  # type: ignore[override]
        return FakeProc()

    def _call(self, ch: object, flag: str) -> str | None:  # type: ignore[override]
        if flag == "-n":
            self.peer.request()
        return self.peer.stats() if flag == "-s" else ""


def run(tmp: Path, peer: ScriptedPeer, clock: list[float], settings: StateSyncSettings,
        seconds: float) -> FakeDaemons:
    d = FakeDaemons(tmp, settings, peer, clock)
    chan = SyncChannel(peer="gw1", peer_address=ip_address("198.51.100.11"),
                       local_address=ip_address("198.51.100.12"), port=3955)
    d.apply(StateSyncPlan(member="gw2", local_address=chan.local_address, channels=(chan,)))
    while clock[0] < seconds and not d.resync_settled():
        d.tick()
        clock[0] = round(clock[0] + 0.2, 3)
    return d


SETTINGS = StateSyncSettings(resync_timeout_s=5.0, stats_interval_s=1.0, refresh_interval_s=0)


def test_resync_done_while_the_peer_keeps_sending_live_updates(tmp_path: Path) -> None:
    clock = [0.0]
    peer = ScriptedPeer(clock, updates_per_s=7)  # a busy primary: its counter never holds still
    d = run(tmp_path, peer, clock, SETTINGS, 10.0)
    (state,) = d.states()
    assert state.resync == ResyncState.DONE
    assert state.resync_seconds is not None and state.resync_seconds < SETTINGS.resync_timeout_s
    assert len(peer.requests) == 2  # asked at the start and once more when the channel was up, never again


def test_a_peer_whose_daemon_comes_late_is_asked_again(tmp_path: Path) -> None:
    # the peer adds our channel only after it sees us in the cluster state: our first request finds nobody
    clock = [0.0]
    peer = ScriptedPeer(clock, present_at=1.5)
    d = run(tmp_path, peer, clock, SETTINGS, 10.0)
    (state,) = d.states()
    assert len(peer.requests) == 2 and peer.requests[1] >= peer.present_at
    assert state.resync == ResyncState.DONE


def test_a_silent_peer_only_times_out(tmp_path: Path) -> None:
    clock = [0.0]
    peer = ScriptedPeer(clock, present_at=1e9)
    d = run(tmp_path, peer, clock, SETTINGS, 20.0)
    (state,) = d.states()
    assert state.resync == ResyncState.TIMED_OUT and not state.up
    assert len(peer.requests) == 1


@pytest.mark.parametrize("stats_interval_s", [0.3, 1.0])
def test_an_idle_peer_does_not_hold_the_resync_until_the_timeout(tmp_path: Path, stats_interval_s: float) -> None:
    # a peer without flows: nothing answers the request, its daemon sends only a keep-alive a second
    clock = [0.0]
    peer = ScriptedPeer(clock, table=0, updates_per_s=0)
    settings = dataclasses.replace(SETTINGS, stats_interval_s=stats_interval_s)
    d = run(tmp_path, peer, clock, settings, 20.0)
    (state,) = d.states()
    assert state.resync == ResyncState.DONE and state.up
    assert state.resync_seconds is not None and state.resync_seconds < settings.resync_timeout_s
    assert len(peer.requests) == 2
