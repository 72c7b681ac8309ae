"""`egressgw migrate`: spidernet-io v1beta1 manifests become valid egressgw.io/v1alpha1 ones."""

from __future__ import annotations

import io
from pathlib import Path

import yaml

from appliance.api.validation import validate_all
from appliance.cli.migrate import migrate_files

SAMPLE = Path(__file__).parent / "migrate" / "spidernet.yaml"


def migrate(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = migrate_files([path], out, err)
    return code, out.getvalue(), err.getvalue()


def test_converts_every_shared_kind_and_the_output_validates() -> None:
    code, out, err = migrate(SAMPLE)
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    kinds = [(d["apiVersion"], d["kind"]) for d in docs]
    assert kinds == [("egressgw.io/v1alpha1", "EgressGateway"), ("egressgw.io/v1alpha1", "EgressPolicy"),
                     ("egressgw.io/v1alpha1", "EgressClusterPolicy"), ("egressgw.io/v1alpha1", "EgressClusterInfo"),
                     ("v1", "Namespace")]
    result = validate_all(docs)
    assert not result.problems
    (gw,) = result.gateways
    assert gw.cluster_default and gw.ipv4_pool.size == 4 and str(gw.ipv6_default_eip) == "2001:db8:e1::2"
    assert {str(p.ref) for p in result.policies} == {"EgressPolicy/shop/app", "EgressClusterPolicy/data"}


def test_drops_what_has_no_counterpart_with_warnings() -> None:
    _, out, err = migrate(SAMPLE)
    gw = next(yaml.safe_load_all(out))
    assert gw["metadata"] == {"name": "default"}  # uid, resourceVersion, finalizers... are gone
    assert gw["spec"]["nodeSelector"] == {"selector": {"matchLabels": {"egressgateway": "true"}}}
    assert "status" not in gw
    assert "dropped spec.nodeSelector.policy" in err
    assert "EgressTunnel/worker1: skipped" in err
    assert "# warning: EgressTunnel/worker1: skipped" in out  # also recorded in the output


def test_namespace_default_label_is_translated() -> None:
    _, out, _ = migrate(SAMPLE)
    ns = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["egressgw.io/default-gateway"] == "default"
    assert "spidernet.io/egressgateway-default" in out.splitlines()[1]


def test_invalid_result_exits_1_and_unreadable_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: egressgateway.spidernet.io/v1beta1\nkind: EgressPolicy\n"
                   "metadata: {name: p, namespace: x}\n"
                   "spec: {egressGatewayName: gw, priority: 99999999999, appliedTo: {podSubnet: [10.0.0.1/8]}}\n")
    code, out, err = migrate(bad)
    assert code == 1
    assert "<output>: EgressPolicy/x/p: spec.priority:" in err
    assert "kind: EgressPolicy" in out
    assert migrate(tmp_path / "missing.yaml")[0] == 2
