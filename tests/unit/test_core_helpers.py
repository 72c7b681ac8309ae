"""The shared helpers of appliance.core: back-off arithmetic and condition waiting, on a fake clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.core.backoff import Backoff, BackoffPolicy, backoff_delay
from appliance.core.waiting import WaitTimeout, elapsed_until, poll_until, wait_until


def test_backoff_doubles_from_initial_and_is_capped() -> None:
    p = BackoffPolicy(initial=0.5, maximum=10.0)
    assert [backoff_delay(p, n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_counter_resets_after_success() -> None:
    b = Backoff(BackoffPolicy(initial=1.0, maximum=4.0))
    assert [b.next(), b.next(), b.next(), b.next()] == [1.0, 2.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 1.0


@given(n=st.integers(min_value=1, max_value=10_000), seed=st.integers(0, 2**32))
def test_jitter_only_shortens_and_never_exceeds_the_maximum(n: int, seed: int) -> None:
    p = BackoffPolicy(initial=0.2, maximum=30.0, jitter=0.5)
    plain = backoff_delay(BackoffPolicy(initial=0.2, maximum=30.0), n)
    d = backoff_delay(p, n, random.Random(seed))
    assert plain * 0.5 <= d <= plain <= 30.0


def test_jitter_is_reproducible_with_a_seeded_source() -> None:
    p = BackoffPolicy(initial=1.0, maximum=60.0, jitter=0.5)
    a, b = Backoff(p, random.Random(7)), Backoff(p, random.Random(7))
    assert [a.next() for _ in range(6)] == [b.next() for _ in range(6)]


@pytest.mark.parametrize("kw", [dict(initial=0, maximum=1), dict(initial=2, maximum=1),
                                dict(initial=1, maximum=2, factor=0.5), dict(initial=1, maximum=2, jitter=1.5)])
def test_bad_policies_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kw)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_wait_until_returns_the_truthy_value_once_it_appears() -> None:
    clock = FakeClock()
    assert wait_until(lambda: "ready" if clock.now >= 101.0 else None, timeout=5, interval=0.25,
                      clock=clock, sleep=clock.sleep) == "ready"
    assert 101.0 <= clock.now < 101.3


def test_wait_until_names_what_it_waited_for_and_the_last_state() -> None:
    clock = FakeClock()
    with pytest.raises(WaitTimeout, match=r"after 2 s waiting for the EIP route; last seen: no route"):
        wait_until(lambda: False, timeout=2, what="the EIP route", describe=lambda: "no route",
                   clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(102.0)


def test_poll_until_checks_once_more_at_the_deadline_and_with_zero_timeout() -> None:
    clock = FakeClock()
    calls: list[float] = []
    assert poll_until(lambda: calls.append(clock.now), timeout=0, clock=clock, sleep=clock.sleep) is None
    assert calls == [100.0]


def test_elapsed_until_measures_on_the_given_clock() -> None:
    clock = FakeClock()
    took = elapsed_until(lambda: clock.now >= 100.5, timeout=3, interval=0.1, clock=clock, sleep=clock.sleep)
    assert took == pytest.approx(0.5, abs=0.11)
    assert elapsed_until(lambda: False, timeout=1, clock=clock, sleep=clock.sleep) is None
