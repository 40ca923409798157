"""No config that Envoy would refuse, or that names something it lacks, leaves the translators
unnoticed (issue 11, point 2): the consistency check finds each kind of break, and a Service
with two ports of one name is refused at the source instead of duplicating filter chains."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envoy.config.core.v3 import address_pb2
from zpilot import contract
from zpilot.envoy_binary import validate
from zpilot.synthetic import Shape, node_name
from zpilot.translators import NodeResources, TranslateOptions, consistency, names, translate_node
from zpilot.translators.static import static_bootstrap

from .render_util import ARTICLE, NODE_A, NODE_B, render, synthetic_index

SLEEP_CHAIN = "spiffe://cluster.local/ns/default/sa/sleep_to_http_productpage.default.svc.cluster.local_outbound_internal"
#: The report's Service: port 80 named "http", then a second port of the same name.
SAME_NAME_PORTS = """\
apiVersion: v1
kind: Service
metadata: {name: twin, namespace: default}
spec:
  clusterIP: 10.8.0.77
  selector: {app: productpage}
  ports:
  - {name: http, port: 80, targetPort: 9080}
  - {name: http, port: 8080, targetPort: 9080}
"""
#: ... and the other one: a port named like another port's number (it rendered as "80" twice).
NAME_LIKE_A_NUMBER = """\
apiVersion: v1
kind: Service
metadata: {name: twin, namespace: default}
spec:
  clusterIP: 10.8.0.77
  selector: {app: productpage}
  ports:
  - {port: 80, targetPort: 9080}
  - {name: "80", port: 8080, targetPort: 9080}
"""


@pytest.fixture
def article(tmp_path: Path) -> Path:
    target = tmp_path / "manifests"
    shutil.copytree(ARTICLE, target)
    return target


LAYOUTS = ["article", "linear"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bad", [SAME_NAME_PORTS, NAME_LIKE_A_NUMBER], ids=["same-name", "name-like-a-number"])
def test_a_service_with_clashing_port_names_is_refused_and_outbound_stays_valid(article: Path, bad: str, layout: str) -> None:
    (article / "twin.yaml").write_text(bad)
    resources, secrets, problems = render(article, NODE_A, TranslateOptions(layout=layout))
    chains = [c.name for c in resources.listeners["ztunnel_outbound"].filter_chains]
    assert len(chains) == len(set(chains)), "duplicate filter chain names: Envoy refuses the listener"
    assert not any("twin" in c for c in chains)
    assert any(p.subject.endswith("Service default/twin") and "spec.ports[" in p.reason for p in problems), [
        str(p) for p in problems
    ]
    assert consistency.findings(resources) == []


@pytest.mark.envoy
@pytest.mark.parametrize("layout", LAYOUTS)
def test_envoy_accepts_the_article_with_the_bad_service_beside_it(article: Path, layout: str) -> None:
    (article / "twin.yaml").write_text(SAME_NAME_PORTS)
    resources, secrets, _ = render(article, NODE_A, TranslateOptions(layout=layout))
    result = validate(json_format.MessageToDict(static_bootstrap(resources, secrets, admin_port=0)))
    assert result.ok, result.output[-2000:]


# -- the check itself: each break it must find ---------------------------------------------------


def _broken(change: Callable[[NodeResources], None], layout: str = "article") -> list[str]:
    resources, _, _ = render(ARTICLE, NODE_A, TranslateOptions(layout=layout))
    assert consistency.findings(resources) == []
    change(resources)
    return consistency.findings(resources)


def _duplicate_chain(r: NodeResources) -> None:
    outbound = r.listeners["ztunnel_outbound"]
    outbound.filter_chains.add().CopyFrom(next(c for c in outbound.filter_chains if c.name == SLEEP_CHAIN))


def _drop_chain(r: NodeResources) -> None:
    outbound = r.listeners["ztunnel_outbound"]
    keep = [c for c in outbound.filter_chains if c.name != SLEEP_CHAIN]
    del outbound.filter_chains[:]
    outbound.filter_chains.extend(keep)


def _same_inbound_match(r: NodeResources) -> None:
    """Two IPv6 pods under a /32 prefix: one range, as Envoy sees it."""
    inbound = r.listeners["ztunnel_inbound"]  # (the plaintext listener picks chains by a matcher)
    for chain, ip in zip(inbound.filter_chains, ("2001:db8::1", "2001:db8::2")):
        chain.filter_chain_match.prefix_ranges[0].address_prefix = ip


def _internal_address(r: NodeResources) -> None:
    cla = r.endpoints[SLEEP_CHAIN]
    cla.endpoints[0].lb_endpoints[0].endpoint.address.envoy_internal_address.server_listener_name = "gone"


def _same_address(r: NodeResources) -> None:
    r.listeners["ztunnel_inbound"].address.CopyFrom(r.listeners["ztunnel_outbound"].address)


CASES = {
    "duplicate chain": (_duplicate_chain, f"listener 'ztunnel_outbound' has 2 filter chains named '{SLEEP_CHAIN}'"),
    "matcher to a missing chain": (_drop_chain, f"matcher selects chain '{SLEEP_CHAIN}', which does not exist"),
    "missing cluster": (lambda r: r.clusters.pop("PassthroughCluster"), "sends to cluster 'PassthroughCluster', which"),
    "missing endpoints": (lambda r: r.endpoints.pop(SLEEP_CHAIN), f"cluster '{SLEEP_CHAIN}' has no endpoints resource"),
    "missing secret": (lambda r: r.secrets.pop("ROOTCA"), "uses secret 'ROOTCA', which is not served"),
    "missing internal listener": (_internal_address, "name internal listener 'gone', which does not exist"),
    "misfiled": (lambda r: r.clusters.__setitem__("x", r.clusters["BlackHoleCluster"]), "stored as 'x' is named"),
    "same address": (_same_address, "binds 0.0.0.0:15001 like listener"),
    "same match": (_same_inbound_match, "has 2 filter chains matching the same connections"),
    "route to a missing cluster": (  # the CONNECT terminator's route (inside the HCM)
        lambda r: r.clusters.pop("virtual_inbound"),
        "listener 'ztunnel_inbound' chain 'inbound_10.4.4.19' sends to cluster 'virtual_inbound'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_break_is_found_and_named(case: str) -> None:
    change, expected = CASES[case]
    found = _broken(change)
    assert any(expected in f for f in found), found


PRODUCTPAGE_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
SLEEP_TUNNEL = names.linear_tunnel_chain("spiffe://cluster.local/ns/default/sa/sleep")


def _drop_tunnel_chain(r: NodeResources) -> None:
    """A chain only the internal listener's IP range matcher selects (custom_match, inside an Any)."""
    tunnel = r.listeners[contract.LINEAR_TUNNEL_LISTENER]
    keep = [c for c in tunnel.filter_chains if c.name != SLEEP_TUNNEL]
    del tunnel.filter_chains[:]
    tunnel.filter_chains.extend(keep)


NODE_B_PODS = names.pods_on_node(NODE_B)


def _pod_select_to_nowhere(r: NodeResources) -> None:
    cluster = r.clusters[names.POD_SELECT_CLUSTER]
    cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.envoy_internal_address.server_listener_name = "gone"


def _node_pods_to_nowhere(r: NodeResources) -> None:
    endpoint = r.endpoints[NODE_B_PODS].endpoints[0].lb_endpoints[0]
    endpoint.endpoint.address.envoy_internal_address.server_listener_name = "gone"


def _drop_node_cluster(r: NodeResources) -> None:
    """The cluster only a PROXY protocol TLV of the node's chain names (the pod-select listener goes there)."""
    del r.clusters[NODE_B_PODS]
    del r.endpoints[NODE_B_PODS]


LINEAR_CASES = {
    "range matcher to a missing chain": (
        _drop_tunnel_chain, f"matcher selects chain '{SLEEP_TUNNEL}', which does not exist"
    ),
    "static cluster to a missing internal listener": (
        _pod_select_to_nowhere,
        f"cluster '{names.POD_SELECT_CLUSTER}' names internal listener 'gone', which does not exist",
    ),
    "a node's endpoints to a missing internal listener": (
        _node_pods_to_nowhere, f"endpoints '{NODE_B_PODS}' name internal listener 'gone', which does not exist",
    ),
    "a TLV naming a missing cluster": (
        _drop_node_cluster,
        f"listener 'ztunnel_outbound' chain '{NODE_B_PODS}' sends to cluster '{NODE_B_PODS}', which does not exist",
    ),
}


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_each_break_of_the_linear_layout_is_found_and_named(case: str) -> None:
    change, expected = LINEAR_CASES[case]
    found = _broken(change, layout="linear")
    assert any(expected in f for f in found), found


def test_check_raises_naming_the_node_and_counting_the_rest() -> None:
    resources, _, _ = render(ARTICLE, NODE_A)
    outbound = resources.listeners["ztunnel_outbound"]
    for chain in list(outbound.filter_chains):
        outbound.filter_chains.add().CopyFrom(chain)
    with pytest.raises(consistency.InconsistentResources) as raised:
        consistency.check(resources)
    message = str(raised.value)
    assert message.startswith(f"node {NODE_A}: listener 'ztunnel_outbound' has 2 filter chains named")
    assert f"(and {len(raised.value.findings) - consistency.SHOWN} more)" in message


def test_a_failed_range_parse_is_left_to_envoy() -> None:
    """The check compares ranges; it does not second-guess an address Envoy will report itself."""
    resources, _, _ = render(ARTICLE, NODE_A)
    chain = resources.listeners["ztunnel_inbound"].filter_chains[0]
    chain.filter_chain_match.prefix_ranges[0].CopyFrom(address_pb2.CidrRange(address_prefix="not-an-ip"))
    assert consistency.findings(resources) == []


# -- and what the translators make is always consistent --------------------------------------------

shapes = st.builds(
    Shape,
    nodes=st.integers(1, 3),
    pods=st.integers(0, 30),
    services=st.integers(0, 6),
    namespaces=st.integers(1, 3),
    ports_per_service=st.integers(1, 3),
    service_accounts_per_namespace=st.integers(1, 3),
)


@pytest.mark.parametrize("layout", ["article", "linear"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, which=st.integers(0, 2))
def test_translated_config_is_always_consistent(layout: str, shape: Shape, which: int) -> None:
    index = synthetic_index(shape)
    resources = translate_node(index, node_name(which % shape.nodes), TranslateOptions(layout=layout))
    assert consistency.findings(resources) == []


def test_the_internal_listeners_endpoints_need_are_each_internal_endpoint_s_in_order() -> None:
    """Endpoints of other kinds name no internal listener; an internal one naming none ("") needs
    that one all the same; each listener once, in the order first named (the facts' order)."""
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    from zpilot.translators import consistency

    cla = ClusterLoadAssignment(cluster_name="c")
    mixed = cla.endpoints.add()
    mixed.lb_endpoints.add().endpoint.address.socket_address.address = "10.0.0.1"
    mixed.lb_endpoints.add().endpoint.address.envoy_internal_address.server_listener_name = "b"
    internal = cla.endpoints.add()
    for name in ("a", "b", "a"):
        internal.lb_endpoints.add().endpoint.address.envoy_internal_address.server_listener_name = name
    assert consistency._internal_needs(("endpoints", "c"), cla) == [
        ("internal listener", "b", ("endpoints", "c")), ("internal listener", "a", ("endpoints", "c"))
    ]
    unnamed = cla.endpoints.add()
    unnamed.lb_endpoints.add().endpoint.address.envoy_internal_address.endpoint_id = "10.0.0.2:80"
    assert ("internal listener", "", ("endpoints", "c")) in consistency._internal_needs(("endpoints", "c"), cla)
