"""The resync shortcut's decision (`applier.shortcut_decision`): when a pass may trust its verified state."""

from __future__ import annotations

from typing import Any, cast

from appliance.datapath.apply.applier import FULL_OBSERVE_EVERY, FullReason, Verified, shortcut_decision
from appliance.datapath.apply.kernel_fingerprint import Fingerprint
from appliance.datapath.plan.kernel_model import KernelState

FP = Fingerprint(nft_generation=7, routes_sha256="ab")


def verified(shortcuts: int = 0, fp: Fingerprint = FP) -> Verified:
    # the decision reads only the fingerprint and the shortcut count
    return Verified(plan=cast(Any, None), kernel=KernelState(), table=cast(Any, None), fingerprint=fp,
                    shortcuts=shortcuts)


def test_unchanged_fingerprint_after_a_verified_pass_takes_the_shortcut() -> None:
    assert shortcut_decision(verified(), FP) is None


def test_nothing_verified_yet_means_a_full_observation() -> None:
    assert shortcut_decision(None, FP) is FullReason.NOT_VERIFIED


def test_another_nft_commit_or_a_route_change_means_a_full_observation() -> None:
    assert shortcut_decision(verified(), Fingerprint(nft_generation=8, routes_sha256="ab")) is FullReason.KERNEL_CHANGED
    assert shortcut_decision(verified(), Fingerprint(nft_generation=7, routes_sha256="cd")) is FullReason.KERNEL_CHANGED


def test_an_unreadable_fingerprint_means_a_full_observation() -> None:
    assert shortcut_decision(verified(), None) is FullReason.FINGERPRINT_UNAVAILABLE


def test_every_nth_observing_pass_is_full_whatever_the_fingerprint() -> None:
    decisions = [shortcut_decision(verified(shortcuts=n), FP, full_every=4) for n in range(5)]
    assert decisions == [None, None, None, FullReason.SAFETY_NET, FullReason.SAFETY_NET]
    assert shortcut_decision(verified(shortcuts=FULL_OBSERVE_EVERY - 2), FP) is None
    assert shortcut_decision(verified(shortcuts=FULL_OBSERVE_EVERY - 1), FP) is FullReason.SAFETY_NET


def test_full_every_one_disables_the_shortcut() -> None:
    assert shortcut_decision(verified(), FP, full_every=1) is FullReason.SAFETY_NET
