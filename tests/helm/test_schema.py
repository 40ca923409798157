"""values.schema.json refuses what values.yaml does not document: a typo fails the install (Helm
checks the schema when it renders) instead of being ignored."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from .chart import CHART, VARIANTS, render


@pytest.mark.parametrize("values,where", [
    ({"replicas": 3}, "additional properties 'replicas'"),  # belongs under controlPlane
    ({"controlPlane": {"replica": 3}}, "/controlPlane"),
    ({"controlPlane": {"ports": {"grpc": 15010}}}, "/controlPlane/ports"),
    ({"controlPlane": {"debugApi": {"exposed": True}}}, "/controlPlane/debugApi"),
    ({"ztunnel": {"image": {"tga": "v1.40.0"}}}, "/ztunnel/image"),
    ({"ca": {"provided": {"ca-cert.pem": "x"}}}, "/ca/provided"),
    ({"metrics": {"serviceMonitor": {"enable": True}}}, "/metrics/serviceMonitor"),
    ({"cni": {"failclosed": True}}, "/cni"),
])
def test_an_unknown_value_is_refused_naming_where(values, where):
    with pytest.raises(helm.HelmValuesError) as refused:
        render(values)
    assert where in str(refused.value) and "not allowed" in str(refused.value)


@pytest.mark.parametrize("values", [
    {"cni": {"tunnel": "gre"}},
    {"cni": {"iptables": "nftables"}},
    {"cni": {"cleanupOnExit": "sometimes"}},
    {"cni": {"cleanupOnExit": True}},  # (a mode, not a switch: "always" is what true would mean)
    {"controlPlane": {"layout": "flat"}},
    {"controlPlane": {"replicas": 0}},
    {"controlPlane": {"ports": {"xds": 70000}}},
    {"controlPlane": {"replicas": "2"}},
    {"ztunnel": {"logLevel": "verbose"}},
    {"logFormat": "yaml"},
    {"image": {"pullPolicy": "Sometimes"}},
    {"controlPlane": {"resources": {"requests": {"cpu": "a lot"}}}},
])
def test_a_wrong_value_is_refused(values):
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_every_default_and_every_variant_is_accepted():
    for values in VARIANTS.values():
        render(values)
    # Every key values.yaml documents is in the schema (the schema refuses none of the defaults).
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_global_is_accepted_for_a_parent_chart():
    """Helm hands a subchart its parent's ``global`` values: refusing them would break umbrella charts."""
    render({"global": {"imageRegistry": "registry.example.com"}})
