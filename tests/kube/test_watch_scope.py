"""What the API watch reads, and when its first model comes: every informer synced, optional CRDs, the
CNI agent's own node only."""

from __future__ import annotations

import asyncio
import logging

import pytest

from zpilot.kube.api_resources import RESOURCES, SOURCE_CONVERTERS, control_plane_watches, node_agent_watches
from zpilot.kube.source import first_model

from .apiserver import ApiServer, seed_article
from .apiserver.objects import (istio_security_crds, make_authorization_policy, make_namespace, make_node,
                                make_peer_authentication, make_pod)
from .watch_util import Follower, pod_names, recorded, requests_of, source_for, wait_for

NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"
NODE_B = "gke-jimmy-cluster-default-pool-d5041909-c1da"


@pytest.fixture
def article(apiserver: ApiServer) -> ApiServer:
    seed_article(apiserver)
    return apiserver


async def test_no_model_until_every_informer_has_listed(article):
    """A resource that keeps failing holds the first model back: never a model without its objects."""
    fault = article.inject(status=503, verb="list", resource="services", times=1000)
    async with Follower(source_for(article)) as follower:
        await asyncio.sleep(1.0)
        assert follower.events == []
        assert all(len(requests_of(article, "list", r)) == 1 for r in ("pods", "nodes", "namespaces"))
        assert len(requests_of(article, "list", "services")) >= 3  # retried meanwhile
        fault.times = 0
        model = await follower.until(lambda m: True)
    assert follower.events[0].initial
    assert any(s.name == "productpage" for s in model.cluster.services)


def test_the_watch_list_is_data_driven_by_converters():
    """A kind is watched once it has a converter: the table may run ahead of the converters."""
    kinds = {w.resource.kind for w in control_plane_watches()}
    assert kinds == {r.kind for r in RESOURCES} & set(SOURCE_CONVERTERS)
    assert kinds == {"Namespace", "Node", "ServiceAccount", "Pod", "Service", "EndpointSlice", "AuthorizationPolicy",
                     "PeerAuthentication"}
    optional = {r.kind for r in RESOURCES if r.optional}
    assert optional == {"AuthorizationPolicy", "PeerAuthentication"}
    assert all(r.group == "security.istio.io" and r.version == "v1" for r in RESOURCES if r.optional)
    fewer = {k: v for k, v in SOURCE_CONVERTERS.items() if k != "PeerAuthentication"}
    assert "PeerAuthentication" not in {w.resource.kind for w in control_plane_watches(fewer)}


def policies(model) -> set[str]:
    return ({p.name for p in model.cluster.peer_authentications}
            | {p.name for p in model.cluster.authorization_policies})


def logged(caplog, text: str, kind: str = "peerauthentications") -> int:
    return sum(text in r.getMessage() and kind in r.getMessage() for r in caplog.records)


async def test_a_crd_that_appears_later_is_watched_and_one_that_goes_takes_its_objects(article, caplog):
    with caplog.at_level(logging.INFO, logger="zpilot.kube.watch"):
        async with Follower(source_for(article)) as follower:
            model = await follower.until(lambda m: True)  # synced without Istio's CRDs
            assert not policies(model)
            await asyncio.sleep(0.5)  # several discovery polls meanwhile
            for kind in ("peerauthentications", "authorizationpolicies"):
                absent = [r.getMessage() for r in caplog.records if "is not served" in r.getMessage()
                          and kind in r.getMessage()]
                assert len(absent) == 1, absent  # logged once, not at every poll
                assert article.url in absent[0]

            article.install_istio_crds()
            article.create(make_peer_authentication("strict", "default"))
            article.create(make_authorization_policy("allow-nothing", "default"))
            model = await follower.until(lambda m: {"strict", "allow-nothing"} <= policies(m))
            assert [p.namespace for p in model.cluster.peer_authentications] == ["default"]
            article.create(make_peer_authentication("other", "default", mode="PERMISSIVE"))
            await follower.until(lambda m: "other" in policies(m))

            crd = next(c for c in istio_security_crds() if c["spec"]["names"]["kind"] == "PeerAuthentication")
            article.remove_crd(crd["metadata"]["name"])
            model = await follower.until(lambda m: not {"strict", "other"} & policies(m))
            assert "allow-nothing" in policies(model)  # the other CRD's objects stay
            # the informer notices (its next watch is refused) before the CRD comes back
            await wait_for(lambda: logged(caplog, "is not served") == 2)
            article.install_istio_crds()
            article.create(make_peer_authentication("again", "default"))
            await follower.until(lambda m: "again" in policies(m))
    assert logged(caplog, "is served now") == 2
    assert logged(caplog, "is not served") == 2  # at the start, and once the CRD was removed
    assert logged(caplog, "is served now", "authorizationpolicies") == 1


async def test_a_crd_present_from_the_start_is_read_in_the_first_model(article):
    article.install_istio_crds()
    article.create(make_peer_authentication("strict", "default"))
    event = await first_model(source_for(article))
    assert "strict" in policies(event.index)


async def test_the_cni_agent_reads_only_its_own_node(article):
    article.create(make_node("gke-other-node", "10.168.15.240"))
    async with Follower(source_for(article, node_agent_watches(NODE_A))) as follower:
        model = await follower.until(lambda m: True)
        assert set(model.nodes) == {NODE_A}
        assert {w.node_name for w in model.cluster.workloads} == {NODE_A}
        assert model.ztunnel_on(NODE_A) is not None  # its ztunnel pod is on the node, so it is read
        assert not model.cluster.services and not model.cluster.service_accounts  # not what a plan needs
        assert {"default", "istio-system"} <= set(model.namespaces)

        article.create(make_pod("elsewhere", ip="10.4.3.50", node=NODE_B))
        article.create(make_pod("here", ip="10.4.4.50", node=NODE_A))
        article.create(make_namespace("late", labels={"istio.io/dataplane-mode": "ambient"}))
        model = await follower.until(lambda m: "here" in pod_names(m) and "late" in m.namespaces)
        assert "elsewhere" not in pod_names(model)
    await recorded(article, "watch", "pods")  # a watch is recorded once it ends: here, as the follower stopped
    await recorded(article, "watch", "nodes")
    for verb in ("list", "watch"):
        pods = requests_of(article, verb, "pods")
        nodes = requests_of(article, verb, "nodes")
        assert pods and all(r.query.get("fieldSelector") == f"spec.nodeName={NODE_A}" for r in pods), verb
        assert nodes and all(r.query.get("fieldSelector") == f"metadata.name={NODE_A}" for r in nodes), verb
    assert {r.resource for r in article.requests if r.verb in ("list", "watch")} == {"pods", "nodes", "namespaces"}
