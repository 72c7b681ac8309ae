"""Exponential back-off with optional jitter: the one implementation every retry loop uses.

Who retries: the reconcile loop after a failed pass, the reflectors after a failed list/watch, the ExaBGP and BFD
supervisors after their child exited, the Lease renewals. They differ only in their numbers, so the numbers are
settings and the arithmetic lives here once.

The delay after the n-th failure in a row (n >= 1) is `min(maximum, initial * factor**(n-1))`, multiplied by a
uniform draw from `[1 - jitter, 1]` when `jitter > 0`. Jitter only ever shortens a delay, so `maximum` stays a real
upper bound; it spreads retries of many processes that failed together (an API server restart) over time.

Pure: the random source is injected (`random.Random`), so tests get the same delays every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: the exponent is capped so that huge failure counts never overflow a float
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    """The numbers of one retry loop."""

    #: delay after the first failure (seconds)
    initial: float
    #: no delay is ever longer than this (seconds)
    maximum: float
    #: growth per further failure in a row
    factor: float = 2.0
    #: fraction of the delay that is random: 0 = deterministic, 0.5 = uniform in [delay/2, delay]
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum):
            raise ValueError(f"back-off needs 0 < initial <= maximum, got {self.initial}, {self.maximum}")
        if self.factor < 1:
            raise ValueError(f"back-off factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"back-off jitter must be within [0, 1], got {self.jitter}")


def backoff_delay(policy: BackoffPolicy, failures_in_a_row: int, rng: random.Random | None = None) -> float:
    """The delay before the next attempt after `failures_in_a_row` (>= 1) consecutive failures."""
    exponent = min(max(failures_in_a_row, 1) - 1, _MAX_EXPONENT)
    delay = min(policy.maximum, policy.initial * policy.factor**exponent)
    if policy.jitter > 0:
        delay *= (rng or random).uniform(1.0 - policy.jitter, 1.0)
    return float(delay)


class Backoff:
    """A retry loop's failure counter: `next()` after a failure returns the delay, `reset()` after a success."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        self.failures += 1
        return backoff_delay(self.policy, self.failures, self._rng)

    def reset(self) -> None:
        self.failures = 0
