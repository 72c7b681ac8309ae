"""test_policy_drops_netns with the COMPAT nftables ruleset: per-policy drop counters through pod group chains
(tests/integration/datapath/compat_variant.py)."""

from __future__ import annotations

import pytest

from tests.integration.datapath import test_policy_drops_netns as shared
from tests.integration.datapath.compat_variant import compat_fixture
from tests.integration.datapath.test_policy_drops_netns import (  # noqa: F401  (collected here, run with COMPAT)
    bed,
    test_fail_closed_drops_move_only_their_own_policys_counter,
    test_unbound_pods_steered_traffic_counts_for_its_policy,
)

pytestmark = pytest.mark.netns

compat_variant = compat_fixture(shared)
