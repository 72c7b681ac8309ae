"""Graceful drain: withdraw (or de-prefer) every EIP route, wait until ExaBGP sent it, let the routers settle.

Make before break: the backups are already in the routers' tables (every healthy member announces every EIP), so a
withdrawal only makes a router switch to the next path; our kernel state (EIP addresses, nft SNAT, tunnel) must stay
in place until then, to carry the packets still in flight. The service's order on SIGTERM / `egressgw gateway drain`:

1. mark the member draining (the planner then plans no announcements, health reports Draining);
2. `drain_announcements(speaker, settings.drain)`: set the target set (empty = withdraw), wait for ExaBGP's acks on
   every peer (bounded by `timeout_s`), then sleep `settle_s` so the routers process the UPDATE and re-run best path;
3. remove kernel state;
4. `speaker.stop()` and stop the BFD sidecar (sessions close: nothing of ours is left on the routers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bgp.announcing import Announcement
from bgp.settings import DrainSettings

log = logging.getLogger(__name__)


class Announces(Protocol):
    def set_announcements(self, announcements: frozenset[Announcement]) -> None: ...

    def wait_converged(self, timeout_s: float) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainResult:
    #: True when ExaBGP acknowledged the target set on every peer before the timeout
    acknowledged: bool
    #: seconds spent waiting for the acks
    ack_wait_s: float
    #: seconds spent settling afterwards
    settle_s: float


def drain_announcements(
    speaker: Announces,
    settings: DrainSettings,
    *,
    target: frozenset[Announcement] = frozenset(),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> DrainResult:
    """Converge the speaker to `target` (default: nothing announced), then settle. Never raises on a timeout."""
    start = clock()
    speaker.set_announcements(target)
    log.info("bgp.drain_started target=%d timeout=%.1fs", len(target), settings.timeout_s)
    ok = speaker.wait_converged(settings.timeout_s)
    acked_at = clock()
    if not ok:
        log.warning("bgp.drain_ack_timeout waited=%.1fs (continuing: the routers drop us when the sessions close)",
                    acked_at - start)  # fmt: skip
    settle = min(settings.settle_s, max(0.0, settings.timeout_s - (acked_at - start))) if ok else 0.0
    if settle > 0:
        sleep(settle)
    log.info("bgp.drain_done acknowledged=%s ack_wait=%.3fs settle=%.3fs", ok, acked_at - start, settle)
    return DrainResult(acknowledged=ok, ack_wait_s=acked_at - start, settle_s=settle)
