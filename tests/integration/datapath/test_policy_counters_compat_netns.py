"""test_policy_snat_metrics_netns with the COMPAT nftables ruleset: per-policy counters through pod group chains
(tests/integration/datapath/compat_variant.py)."""

from __future__ import annotations

import pytest

from tests.integration.datapath import test_policy_snat_metrics_netns as shared
from tests.integration.datapath.compat_variant import compat_fixture
from tests.integration.datapath.test_policy_snat_metrics_netns import (  # noqa: F401  (collected here, with COMPAT)
    bed,
    test_snat_ports_in_use_follow_the_flows_opened,
    test_traffic_moves_only_its_own_policys_counters,
)

pytestmark = pytest.mark.netns

compat_variant = compat_fixture(shared)
