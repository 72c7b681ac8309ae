"""The Event filter: repeats within the window and an object's Events beyond its budget are not posted."""

from __future__ import annotations

from appliance.core.snapshot import ObjectRef
from k8s_sync.event_filter import EventFilter
from k8s_sync.status_planning import EventReason, EventSpec, EventType

REF = ObjectRef(kind="EgressPolicy", namespace="shop", name="web")
OTHER = ObjectRef(kind="EgressPolicy", namespace="shop", name="db")


def ev(reason: EventReason, message: str = "m", ref: ObjectRef = REF) -> EventSpec:
    return EventSpec(ref=ref, uid="u", type=EventType.NORMAL, reason=reason, message=message)


def test_a_repeat_within_the_window_is_suppressed_and_posted_again_after_it() -> None:
    f = EventFilter(repeat_window_s=600)
    assert f.admit(ev(EventReason.POLICY_READY), 0.0)
    assert not f.admit(ev(EventReason.POLICY_READY), 10.0)
    assert f.admit(ev(EventReason.POLICY_READY, "other message"), 10.0)
    assert f.admit(ev(EventReason.POLICY_READY), 601.0)


def test_a_flapping_object_gets_its_burst_then_one_event_per_refill() -> None:
    f = EventFilter(burst=3, refill_s=60, repeat_window_s=0)
    flips = [ev(EventReason.POLICY_READY if i % 2 else EventReason.POLICY_PENDING, f"n{i}") for i in range(20)]
    posted = [f.admit(e, 1.0 + i * 0.1) for i, e in enumerate(flips)]
    assert posted.count(True) == 3 and posted[:3] == [True, True, True]
    assert f.admit(ev(EventReason.POLICY_INVALID, "later"), 1.0 + 61.0)
    assert not f.admit(ev(EventReason.POLICY_INVALID, "later still"), 1.0 + 62.0)
    # another object has its own budget
    assert f.admit(ev(EventReason.POLICY_READY, ref=OTHER), 2.0)


def test_memory_stays_bounded_over_a_long_run() -> None:
    f = EventFilter(burst=1, refill_s=1, repeat_window_s=1)
    for i in range(10_000):
        f.admit(ev(EventReason.POLICY_READY, f"m{i}", ref=ObjectRef(kind="EgressPolicy", namespace="n",
                                                                   name=f"p{i}")), float(i))
    assert len(f._posted) <= 4097 and len(f._tokens) <= 4097
