"""The API watch source against the in-process API server, with the real kubernetes-asyncio client.

Each test changes the cluster (through the server's Python API, which writes what a kubectl or a
controller would) and waits for the model the source yields; requests the server recorded show
what the client asked (a re-list or a resumed watch, selectors, the spacing of retries).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from zpilot.kube.api_resources import control_plane_watches
from zpilot.kube.manifests import load_manifests
from zpilot.kube.source import first_model

from .apiserver import ARTICLE, ApiServer, seed_article
from .apiserver.objects import make_namespace, make_pod, make_secret, make_service, service_port
from .watch_util import FAST, Follower, pod_names, requests_of, source_for, wait_for

NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"
NODE_B = "gke-jimmy-cluster-default-pool-d5041909-c1da"


@pytest.fixture
def bare(tmp_path):
    """A server holding exactly the article (no bootstrap objects, no controllers)."""
    with ApiServer(tmp_path / "bare", bootstrap=False, controllers=False) as server:
        seed_article(server)
        yield server


async def test_initial_model_is_the_manifest_sources_model_of_the_same_objects(bare):
    event = await first_model(source_for(bare))
    assert event.initial
    assert event.index.cluster == load_manifests(ARTICLE).cluster
    # every resource was listed once, then watched from that list's resourceVersion
    for resource in (w.resource.qualified for w in control_plane_watches() if not w.resource.optional):
        assert len(requests_of(bare, "list", resource)) == 1, resource


async def test_a_list_is_read_page_by_page(bare):
    paged = replace(FAST, page_size=3)
    event = await first_model(source_for(bare, settings=paged))
    assert len(event.index.cluster.workloads) == len(load_manifests(ARTICLE).cluster.workloads)
    pages = requests_of(bare, "list", "pods")
    assert len(pages) > 1 and all(p.query.get("limit") == "3" for p in pages)
    assert [bool(p.query.get("continue")) for p in pages] == [False] + [True] * (len(pages) - 1)


async def test_adds_updates_and_deletes_reach_the_model(bare):
    async with Follower(source_for(bare)) as follower:
        await follower.until(lambda m: "web-1" not in pod_names(m))
        bare.create(make_pod("web-1", ip="10.4.4.30", node=NODE_A, labels={"app": "web"}))
        await follower.until(lambda m: "web-1" in pod_names(m))

        bare.patch("pods", "web-1", {"metadata": {"labels": {"app": "web", "version": "v2"}}})
        await follower.until(lambda m: any(w.name == "web-1" and w.labels.get("version") == "v2"
                                           for w in m.cluster.workloads))

        bare.create(make_service("web", selector={"app": "web"}, ports=[service_port(80, 8080, "http")]))
        model = await follower.until(lambda m: any(s.name == "web" for s in m.cluster.services))
        web = next(s for s in model.cluster.services if s.name == "web")
        assert [e.workload.name for e in model.endpoints(web, web.ports[0])] == ["web-1"]

        bare.delete("pods", "web-1")
        await follower.until(lambda m: "web-1" not in pod_names(m))
        bare.delete("services", "web")
        await follower.until(lambda m: not any(s.name == "web" for s in m.cluster.services))


async def test_a_change_the_model_does_not_see_produces_no_event(bare):
    async with Follower(source_for(bare)) as follower:
        await follower.until(lambda m: True)
        bare.create(make_pod("web-1", ip="10.4.4.30", node=NODE_A))
        await follower.until(lambda m: "web-1" in pod_names(m))
        count = len(follower.events)
        bare.patch("pods", "web-1", {"metadata": {"annotations": {"note": "not in the model"}}})
        bare.create(make_pod("web-2", ip="10.4.4.31", node=NODE_A))  # a change after it, to know it was read
        await follower.until(lambda m: "web-2" in pod_names(m))
        assert len(follower.events) == count + 1


async def test_a_dropped_watch_is_resumed_from_its_version_without_a_relist(bare):
    async with Follower(source_for(bare)) as follower:
        await follower.until(lambda m: True)
        await bare.wait_for_watchers("pods")
        bare.drop_watches("pods")  # the connection breaks mid-stream
        bare.create(make_pod("web-1", ip="10.4.4.30", node=NODE_A))
        await follower.until(lambda m: "web-1" in pod_names(m))
        cut = bare.inject(drop_after_events=1, verb="watch", resource="pods")  # the next watch: cut after one event
        await bare.wait_for_watchers("pods")
        bare.end_watches("pods")
        bare.create(make_pod("web-2", ip="10.4.4.31", node=NODE_A))
        bare.create(make_pod("web-3", ip="10.4.4.32", node=NODE_A))
        await follower.until(lambda m: {"web-2", "web-3"} <= pod_names(m))
        assert cut.hits == 1
    assert len(requests_of(bare, "list", "pods")) == 1
    watches = requests_of(bare, "watch", "pods")  # recorded as each ends (the dropped one and the cut one at least)
    assert len(watches) >= 2
    assert all(w.query.get("allowWatchBookmarks") in ("true", "True") and w.query.get("timeoutSeconds")
               for w in watches)
    versions = [int(w.query["resourceVersion"]) for w in watches]
    assert versions == sorted(versions) and versions[0] > 0


@pytest.mark.parametrize("expired_as", ["event", "http"])
async def test_compaction_while_disconnected_relists_and_diffs(bare, expired_as, caplog):
    """Deleted while the client was away, behind a compaction: the re-list must still delete them."""
    bare.expired_watch_as = expired_as
    bare.create(make_pod("stays", ip="10.4.4.40", node=NODE_A, labels={"v": "1"}))
    bare.create(make_pod("goes", ip="10.4.4.41", node=NODE_A))
    bare.create(make_namespace("doomed"))
    async with Follower(source_for(bare)) as follower:
        await follower.until(lambda m: {"stays", "goes"} <= pod_names(m))
        await bare.wait_for_watchers("pods")
        bare.stop()  # the client is cut off: connection refused while it retries
        bare.delete("pods", "goes")
        bare.delete("namespaces", "doomed", None)
        bare.patch("pods", "stays", {"metadata": {"labels": {"v": "2"}}})
        bare.create(make_pod("new", ip="10.4.4.42", node=NODE_A))
        bare.compact()  # the history the watch would resume from is gone
        with caplog.at_level(logging.INFO, logger="zpilot.kube.watch"):
            await asyncio.sleep(0.3)
            bare.start()
            model = await follower.until(lambda m: "new" in pod_names(m) and "goes" not in pod_names(m)
                                         and "doomed" not in m.namespaces)
    stays = next(w for w in model.cluster.workloads if w.name == "stays")
    assert stays.labels["v"] == "2"
    assert len(requests_of(bare, "list", "pods")) == 2  # the initial list and the re-list after 410
    # nothing leaked, nothing lost: the same model a fresh read of the cluster gives
    assert model.cluster == (await first_model(source_for(bare))).index.cluster
    assert any("410 Gone" in r.getMessage() and "listing again" in r.getMessage() for r in caplog.records)
    refused = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert refused and all(bare.url in line for line in refused)


async def test_a_resync_that_finds_nothing_new_pushes_nothing(bare):
    async with Follower(source_for(bare)) as follower:
        await follower.until(lambda m: True)
        count = len(follower.events)
        await bare.wait_for_watchers("pods")
        bare.stop()
        bare.create(make_secret("unwatched"))  # history moves on (no watched object changes), then is forgotten
        bare.compact()
        bare.start()
        await wait_for(lambda: len(requests_of(bare, "list", "pods")) == 2)
        await bare.wait_for_watchers("pods")
        bare.create(make_pod("web-1", ip="10.4.4.30", node=NODE_A))  # a change after the resync, to know it is over
        await follower.until(lambda m: "web-1" in pod_names(m))
        assert len(follower.events) == count + 1


async def test_server_errors_are_retried_with_backoff_and_logged_with_the_server(bare, caplog):
    bare.inject(status=500, verb="list", resource="services", times=3)
    with caplog.at_level(logging.DEBUG, logger="zpilot.kube.watch"):
        event = await first_model(source_for(bare))
    assert any(s.name == "productpage" for s in event.index.cluster.services)
    lists = requests_of(bare, "list", "services")
    assert [r.status for r in lists] == [500, 500, 500, 200]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(bare.url in w and "HTTP 500" in w and "services" in w for w in warnings), warnings
    # the same reason is logged once (then at debug level), and the recovery is
    assert len([w for w in warnings if "HTTP 500" in w]) == 1
    assert any("working again after 3 failed attempts" in w for w in warnings)


async def test_429_retry_after_is_honoured(bare, caplog):
    async with Follower(source_for(bare)) as follower:
        await follower.until(lambda m: True)
        await bare.wait_for_watchers("pods")
        bare.inject(status=429, retry_after=1, verb="watch", resource="pods")
        with caplog.at_level(logging.WARNING, logger="zpilot.kube.watch"):
            bare.end_watches("pods")
            await wait_for(lambda: any(r.status == 429 for r in requests_of(bare, "watch", "pods")))
            bare.create(make_pod("web-1", ip="10.4.4.30", node=NODE_A))  # only a watch after the pause can see it
            await follower.until(lambda m: "web-1" in pod_names(m))
        seen_at = follower.events[-1].changed_at  # when the informer got the pod: on the watch after the pause
    refused = next(r for r in requests_of(bare, "watch", "pods") if r.status == 429)
    assert seen_at - refused.time >= 1.0
    assert any("429 Too Many Requests" in r.getMessage() and bare.url in r.getMessage() for r in caplog.records)


async def test_a_slow_server_is_waited_for_or_timed_out_and_retried(bare, caplog):
    slow = replace(FAST, timeouts=replace(FAST.timeouts, list=2.0))
    bare.inject(delay=4.0, verb="list", resource="pods")  # longer than the list timeout: given up, retried
    bare.inject(delay=0.3, verb="list", resource="nodes")  # slow but within it: just waited for
    with caplog.at_level(logging.WARNING, logger="zpilot.kube.watch"):
        event = await first_model(source_for(bare, settings=slow))
    assert len(event.index.cluster.workloads) == len(load_manifests(ARTICLE).cluster.workloads)
    assert len(requests_of(bare, "list", "pods")) >= 2
    assert len(requests_of(bare, "list", "nodes")) == 1
    assert any("no answer within 2 s" in r.getMessage() and bare.url in r.getMessage() for r in caplog.records)
