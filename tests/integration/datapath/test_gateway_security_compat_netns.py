"""test_gateway_security_netns with the COMPAT nftables ruleset: VXLAN (source, VNI) admission by per-VTEP chains,
the selection check by pod group chains, SNAT in `ip`/`ip6 egressgw` (tests/integration/datapath/compat_variant.py).
"""

from __future__ import annotations

import pytest

from tests.integration.datapath import test_gateway_security_netns as shared
from tests.integration.datapath.compat_variant import compat_fixture
from tests.integration.datapath.test_gateway_security_netns import (  # noqa: F401  (collected here, run with COMPAT)
    bed,
    test_echo_probe_answers_known_workers_only,
    test_forged_vxlan_without_the_key_is_dropped_and_counted_while_real_workers_pass,
    test_server_push_after_steering_ends_never_sees_the_pod_ip,
    test_spoofed_inner_source_from_a_worker_is_counted_per_worker_and_reported,
    test_spoofed_vxlan_from_another_interface_is_dropped_and_counted,
)

pytestmark = pytest.mark.netns

compat_variant = compat_fixture(shared)
