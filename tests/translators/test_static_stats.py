"""``zpilot render --static`` gives Envoy the stats settings ``zpilot bootstrap`` gives it (the stat tags that
name zpilot's clusters, tcp_proxies and certificates whole, the service ports' stats left out, the traffic
counters made on first use): a static ztunnel's ``/stats/prometheus`` reads as an ADS one's. A real Envoy
validates the static bootstrap in test_envoy_accepts.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zpilot import contract
from zpilot.translators import TranslateOptions
from zpilot.translators.bootstrap import BootstrapOptions, bootstrap_document
from zpilot.translators.static import static_bootstrap_document

from .render_util import ARTICLE, NODE_A, render

STATS_FIELDS = ("stats_config", "deferred_stat_options")


def _ads_stats(**options) -> dict:
    document = bootstrap_document(BootstrapOptions(node=NODE_A, xds="127.0.0.1:15010", **options))
    return {field: document.get(field) for field in STATS_FIELDS}


@pytest.mark.parametrize("pod_cluster_stats", contract.POD_CLUSTER_STATS)
@pytest.mark.parametrize("service_stats", contract.SERVICE_STATS)
def test_a_static_bootstrap_has_the_ads_bootstraps_stats_settings(service_stats, pod_cluster_stats) -> None:
    resources, secrets, _ = render(ARTICLE, NODE_A, TranslateOptions())
    document = static_bootstrap_document(resources, secrets, service_stats=service_stats,
                                         pod_cluster_stats=pod_cluster_stats)
    assert {field: document.get(field) for field in STATS_FIELDS} == _ads_stats(
        service_stats=service_stats, pod_cluster_stats=pod_cluster_stats)
    assert document["stats_config"]["allow_default_tag_overrides"] is True  # Envoy's own extractors would win


def test_render_static_prints_them() -> None:
    proc = subprocess.run([sys.executable, "-m", "zpilot.cli", "render", "--manifests", str(ARTICLE), "--node", NODE_A,
                           "--static", "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    document = json.loads(proc.stdout)
    assert {field: document.get(field) for field in STATS_FIELDS} == _ads_stats()
