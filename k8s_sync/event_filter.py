"""Which Kubernetes Events are worth a request: a per-object budget and no repeats.

A rollout flips policies between Ready and Pending many times a minute; posting an Event for every flip costs the API
server one request per pod event (measured by `egressgw bench scale`: ~7 Events per pod event at 10k pods). Like
client-go's event correlator, the writer posts an Event only when
- the same (object, reason, message) was not posted within `repeat_window_s` (default 10 min), and
- the object has budget left: a bucket of `burst` Events (default 5) refilled at one per `refill_s` (default 60 s).
What is filtered out is still in the log (`event.suppressed` at debug level) and the object's status conditions always
carry the current state, so nothing is lost but the request.

Pure state machine: the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.core.snapshot import ObjectRef
from k8s_sync.status_planning import EventSpec


@dataclass(slots=True)
class EventFilter:
    burst: int = 5
    refill_s: float = 60.0
    repeat_window_s: float = 600.0
    _tokens: dict[ObjectRef, tuple[float, float]] = field(default_factory=dict)  # ref -> (tokens, at)
    _posted: dict[tuple[ObjectRef, str, str], float] = field(default_factory=dict)

    def admit(self, event: EventSpec, now: float) -> bool:
        """True when `event` should be posted now (and counts it against the object's budget)."""
        key = (event.ref, str(event.reason), event.message)
        last = self._posted.get(key)
        if last is not None and now - last < self.repeat_window_s:
            return False
        tokens, at = self._tokens.get(event.ref, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) / self.refill_s)
        if tokens < 1.0:
            self._tokens[event.ref] = (tokens, now)
            return False
        self._tokens[event.ref] = (tokens - 1.0, now)
        self._posted[key] = now
        if len(self._posted) > 4096:
            self._forget(now)
        return True

    def _forget(self, now: float) -> None:
        """Drop what no longer filters anything (bounded memory across a long run)."""
        self._posted = {k: t for k, t in self._posted.items() if now - t < self.repeat_window_s}
        full = float(self.burst)
        self._tokens = {r: (tk, at) for r, (tk, at) in self._tokens.items()
                        if tk + (now - at) / self.refill_s < full}
