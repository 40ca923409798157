"""Properties of every node's config and CNI plan, for random hostile clusters (issue 11).

Each example is a cluster of Kubernetes manifests (``clusters.py``), written to a file and read back by
the real loader and converter, indexed, and then, for every node:

- its xDS resources are consistent: each stored under its own name, as many of each as there are
  distinct sources (so no name was given twice), no filter-chain name twice in a listener, every name
  the outbound matcher selects is a chain of that listener, every EDS cluster has its load assignment
  with at least one endpoint (a captured VIP always has somewhere to go), each locality and endpoint
  once, every referenced secret exists;
- no IPv6 address of the input reaches the config or the plan (the mesh is IPv4-only);
- the CNI plan never raises (given the facts a node has), holds each set entry, route and chain once,
  and meshes exactly the pods the xDS side has inbound chains for;
- a real Envoy accepts it (``envoy --mode validate``): all nodes of all examples are rendered first, as
  static bootstraps, and validated afterwards, distinct configs once each, two Envoys at a time.

The examples are derandomized (the same on every run, as CI needs); ``ZPILOT_HYPOTHESIS_EXPLORE=1``
draws fresh ones, five times as many.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from xds.core.v3 import extension_pb2

from zpilot.certs.ca import CertificateAuthority
from zpilot.certs.identity import IdentityCache
from zpilot.certs.secrets import build_secrets
from zpilot.cni.desired import Mode, TunnelKind
from zpilot.cni.plan import NodeFacts, PlanError, build_plan
from zpilot.cni.render import render_plan
from zpilot.contract import INBOUND_LISTENER, INBOUND_PLAINTEXT_LISTENER, LINEAR_TUNNEL_LISTENER, OUTBOUND_LISTENER
from zpilot.envoy_binary import validate
from zpilot.kube.manifests import load_manifests
from zpilot.model import MeshIndex, Problems
from zpilot.translators import NodeResources, TranslateOptions, translate_node
from zpilot.translators.inputs import MeshInput
from zpilot.translators.static import rewrite, static_bootstrap
from zpilot.xds.push import model_nodes

from .clusters import IPV6_ADDRESSES, GeneratedCluster, clusters

EXPLORE = os.environ.get("ZPILOT_HYPOTHESIS_EXPLORE") == "1"


def examples(n: int) -> settings:
    return settings(
        max_examples=n * 5 if EXPLORE else n,
        derandomize=not EXPLORE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


_IPV6 = re.compile("|".join(re.escape(ip) + r"(?![0-9a-f])" for ip in IPV6_ADDRESSES))
ZTUNNEL_VETH = "vethzt0"


def load(generated: GeneratedCluster) -> tuple[MeshIndex, str]:
    """The cluster as the loader reads it from a manifest file; also that file's text (for failure messages)."""
    text = yaml.safe_dump_all(generated.docs, sort_keys=False)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "cluster.yaml"
        path.write_text(text)
        loaded = load_manifests(path)
    return MeshIndex.build(loaded.cluster, loaded.problems), text


def _collect(message: Message, kind: type) -> list:
    found: list = []
    rewrite(message, lambda m: found.append(m) if isinstance(m, kind) else None)
    return found


def check_config(res: NodeResources) -> None:
    for kind, items, attr in (("listener", res.listeners, "name"), ("cluster", res.clusters, "name"),
                              ("endpoints", res.endpoints, "cluster_name")):
        for key, message in items.items():
            name = getattr(message, attr)
            assert key and name == key, f"{kind} stored as {key!r} is named {name!r}"
    for key, ref in res.secrets.items():
        assert ref.name == key
    for listener in res.listeners.values():
        names = [fc.name for fc in listener.filter_chains]
        assert len(names) == len(set(names)), f"{listener.name}: duplicate filter chains {sorted(names)}"
    outbound = res.listeners[OUTBOUND_LISTENER]
    chains = {fc.name for fc in outbound.filter_chains}
    for action in _collect(outbound.filter_chain_matcher, extension_pb2.TypedExtensionConfig):
        if action.typed_config.type_url.endswith("StringValue"):
            assert action.name in chains, f"the matcher selects a missing chain {action.name!r}"
    for cluster in res.clusters.values():
        if cluster.type == cluster_pb2.Cluster.EDS:
            assert cluster.name in res.endpoints, f"EDS cluster {cluster.name!r} has no load assignment"
    for cla in res.endpoints.values():
        # A captured VIP always has somewhere to go; each locality once, in Envoy's order; each endpoint once.
        assert any(group.lb_endpoints for group in cla.endpoints), f"{cla.cluster_name}: a chain with no endpoint"
        localities = [(g.locality.region, g.locality.zone) for g in cla.endpoints]
        assert localities == sorted(set(localities)), localities
        hosts = [str(lb.endpoint.address) for g in cla.endpoints for lb in g.lb_endpoints]
        assert len(hosts) == len(set(hosts)), f"{cla.cluster_name}: an endpoint listed twice"
    for message in (*res.listeners.values(), *res.clusters.values()):
        for sds in _collect(message, secret_pb2.SdsSecretConfig):
            assert sds.name in res.secrets, f"secret {sds.name!r} is referenced but not named"
    text = "".join(str(m) for m in (*res.listeners.values(), *res.clusters.values(), *res.endpoints.values()))
    assert not _IPV6.search(text), f"an IPv6 address reached the config: {_IPV6.search(text).group()}"


def check_names_are_distinct(index: MeshIndex, node: str, res: NodeResources, layout: str) -> None:
    """A resource stored under a name another one already had would silently replace it: count what
    each distinct source (identity, service port, pod) must have produced."""
    local = index.meshed_workloads_on(node)
    identities = {(w.namespace, w.service_account) for w in local}
    service_ports = {  # those captured here: with an endpoint for this node
        (t.service.namespace, t.service.name, t.port.port) for _, t in index.vips() if index.endpoints(t.service, t.port, node)
    }
    eds_clusters = [name for name, c in res.clusters.items() if c.type == cluster_pb2.Cluster.EDS]
    assert len(res.endpoints) == len(eds_clusters)
    service_clusters = [name for name in eds_clusters if not name.startswith("pods_on_")]
    # one certificate secret per local pod (the article's names) or identity (the linear layout's), and ROOTCA
    assert len(res.secrets) == ((len(local) if layout == "article" else len(identities)) + 1 if local else 0)
    outbound_chains = len(res.listeners[OUTBOUND_LISTENER].filter_chains)
    if layout == "article":
        assert len(service_clusters) == len(identities) * len(service_ports)
        # one pod-IP chain per (local identity, destination's identity and whether it is on this node)
        pod_destinations = {(w.node_name == node, w.namespace, w.service_account) for w in index.meshed_workloads() if w.ip}
        assert outbound_chains == 2 + len(identities) * len(pod_destinations) + len(service_clusters)
        assert len(res.listeners) == 3 + len(identities)
        return
    # linear: one of each per service port; a chain, EDS cluster and endpoints per node with a pod CIDR
    # (pod_select.py, with its two internal listeners) and a pod_direct chain per identity of the pods
    # outside their node's CIDR (which it pins); one internal listener with two chains per local
    # identity; all only where a meshed pod is
    assert len(service_clusters) == (len(service_ports) if identities else 0)
    routes = MeshInput.of(index).pod_routes
    assert len(eds_clusters) - len(service_clusters) == (len(routes.nodes) if identities else 0)
    stray_identities = {(namespace, account) for _ip, namespace, account in routes.strays}
    expected = len(service_clusters) + len(routes.nodes) + len(stray_identities)
    assert outbound_chains == 2 + (expected if identities else 0)
    assert len(res.listeners) == 3 + ((3 if routes.nodes else 1) if identities else 0)
    if identities:
        assert len(res.listeners[LINEAR_TUNNEL_LISTENER].filter_chains) == 2 * len(identities)


def inbound_ips(res: NodeResources) -> set[str]:
    ips = set()
    for name in (INBOUND_LISTENER, INBOUND_PLAINTEXT_LISTENER):
        for fc in res.listeners[name].filter_chains:
            for prefix in fc.filter_chain_match.prefix_ranges:
                assert prefix.prefix_len.value == 32, (fc.name, prefix)
                ips.add(prefix.address_prefix)
    return ips


def check_plan(index: MeshIndex, node: str, res: NodeResources) -> None:
    """The plan with every fact a node has, and with no node address known (a clear error or a plan)."""
    facts = NodeFacts(ztunnel_veth=ZTUNNEL_VETH, host_ip="10.255.0.1", tunnel_kind=TunnelKind.GENEVE)
    plan = build_plan(index, node, facts)
    for side in (plan.node_side, plan.ztunnel_side):
        if side is None:
            continue
        routes = [(r.table, r.dst) for r in side.routes]
        assert len(routes) == len(set(routes)), routes
        chains = [(ch.table, ch.name) for ch in side.chains]
        assert len(chains) == len(set(chains)), chains
        if side.ipset is not None:
            entries = [e.ip for e in side.ipset.entries]
            assert len(entries) == len(set(entries)), entries
    text = render_plan(plan)
    assert not _IPV6.search(text), f"an IPv6 address reached the plan: {_IPV6.search(text).group()}"
    if plan.mode is Mode.REDIRECT:  # the two sides agree on who is meshed here
        assert {e.ip for e in plan.node_side.ipset.entries} == inbound_ips(res)
    try:
        build_plan(index, node, NodeFacts(ztunnel_veth=ZTUNNEL_VETH))
    except PlanError as exc:
        assert f"Node {node}" in str(exc) and "--host-ip" in str(exc), str(exc)


LAYOUTS = ["article", "linear"]


@pytest.mark.parametrize("layout", LAYOUTS)
@examples(60)
@given(generated=clusters())
def test_every_node_s_config_and_plan_are_consistent(layout: str, generated: GeneratedCluster) -> None:
    index, _ = load(generated)
    for node in sorted(model_nodes(index)):
        res = translate_node(index, node, TranslateOptions(layout=layout))
        check_config(res)
        check_names_are_distinct(index, node, res, layout)
        assert inbound_ips(res) == {w.ip for w in index.meshed_workloads_on(node)}
        if node in index.nodes:  # the CNI agent runs on nodes (a pod's node may have no Node object)
            check_plan(index, node, res)


@dataclass(frozen=True)
class Rendered:
    node: str
    config: dict
    manifests: str


@pytest.fixture(scope="module")
def identities() -> IdentityCache:
    """One CA and one certificate per identity for the whole run: equal configs stay equal, and are validated once."""
    return IdentityCache(CertificateAuthority.generate())


@pytest.mark.envoy
@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_envoy_accepts_every_rendered_node(identities: IdentityCache, layout: str) -> None:
    rendered: dict[str, Rendered] = {}

    @examples(40)
    @given(generated=clusters())
    def render_all(generated: GeneratedCluster) -> None:
        index, manifests = load(generated)
        for node in sorted(model_nodes(index)):
            res = translate_node(index, node, TranslateOptions(layout=layout))
            secrets = build_secrets(res.secrets.values(), identities, Problems())
            assert set(secrets) == set(res.secrets), "every referenced secret is served"
            boot = static_bootstrap(res, secrets, admin_port=0)
            boot.node.id = "ztunnel~property"  # the node's name is no part of what is validated
            key = hashlib.sha256(boot.SerializeToString(deterministic=True)).hexdigest()
            if key not in rendered:
                config = json_format.MessageToDict(boot, preserving_proto_field_name=True)
                rendered[key] = Rendered(node, config, manifests)

    render_all()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda r: (r, validate(r.config)), rendered.values()))
    failed = [(r, result) for r, result in results if not result.ok]
    if failed:
        r, result = failed[0]
        pytest.fail(f"{len(failed)} of {len(results)} configs refused; the first, node {r.node!r}:\n"
                    f"{result.output[-2000:]}\nfrom these manifests:\n{r.manifests[:6000]}")
    assert len(results) > 10, "the examples rendered too few distinct configs to mean much"
    print(f"envoy --mode validate accepted {len(results)} distinct node configs")
