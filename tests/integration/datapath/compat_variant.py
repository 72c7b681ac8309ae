"""Running a data-path test module again with the COMPAT nftables ruleset (plan.nft_variant).

`compat_fixture(module)` is a module-scoped autouse fixture for a `*_compat_netns.py` module that imports the shared
module's tests (and its `bed` fixture): while it is active, every `DataPathApplier(...)` the shared module builds
renders the COMPAT ruleset. The traffic assertions stay the shared module's own, so both variants must satisfy them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.plan.nft_variant import RulesetVariant


def compat_fixture(module: ModuleType) -> Callable[[], Iterator[None]]:
    @pytest.fixture(scope="module", autouse=True)
    def compat_variant() -> Iterator[None]:
        original = module.DataPathApplier
        module.DataPathApplier = functools.partial(DataPathApplier, variant=RulesetVariant.COMPAT)
        try:
            yield
        finally:
            module.DataPathApplier = original

    return compat_variant


def pod_churn_was_small(changes: tuple[str, ...], applier: DataPathApplier) -> bool:
    """A pod-churn pass took the fast path (MODERN: `nft N element lines`), or with COMPAT - whose every pass takes
    the full plan - converged by an element delta, not a table replacement."""
    if any(c.endswith(" element lines") for c in changes):
        return True
    return applier.variant is RulesetVariant.COMPAT and any(c.endswith("element/counter changes") for c in changes)
