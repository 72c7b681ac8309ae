"""Wait until a condition holds: the one polling helper of the services, the lab, the benchmarks and the tests.

Tests and benchmarks wait on conditions, never on fixed sleeps (a fixed sleep is either flaky or slow). The clock
and the sleep are injectable, so unit tests run the timing with a fake clock in no time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """The condition did not hold in time; the message says what was awaited and what was seen last."""


def poll_until(condition: Callable[[], T], *, timeout: float, interval: float = 0.05,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> T | None:
    """Call `condition` until it returns something truthy (returned) or `timeout` seconds passed (None).

    The condition is always called at least once, and once more at the deadline, so a timeout of 0 is a plain check.
    """
    deadline = clock() + timeout
    while True:
        value = condition()
        if value:
            return value
        now = clock()
        if now >= deadline:
            return None
        sleep(min(interval, max(deadline - now, 0.0)))


def wait_until(condition: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition",
               describe: Callable[[], object] | None = None,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """Like `poll_until`, but raise `WaitTimeout` naming `what` (and `describe()`, the state seen last) on timeout."""
    value = poll_until(condition, timeout=timeout, interval=interval, clock=clock, sleep=sleep)
    if value:
        return value
    seen = f"; last seen: {describe()}" if describe is not None else ""
    raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{seen}")


def elapsed_until(condition: Callable[[], object], *, timeout: float, interval: float = 0.02,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> float | None:
    """Seconds until `condition` held (measured with `clock`), or None after `timeout`: for benchmarks."""
    start = clock()
    return None if poll_until(condition, timeout=timeout, interval=interval, clock=clock, sleep=sleep) is None \
        else clock() - start
