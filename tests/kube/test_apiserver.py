"""The in-process API server, driven by the real kubernetes-asyncio client: if these pass, a watch source
tested against it meets the list/watch protocol a real kube-apiserver speaks."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client import ApiException

from tests.kube.apiserver import ApiError, ApiServer, seed_article
from tests.kube.apiserver.fixtures import api_client
from tests.kube.apiserver.objects import (container, endpoint, make_authorization_policy, make_endpoint_slice,
                                          make_namespace, make_node, make_pod, make_secret, make_service,
                                          make_service_account, replica_pod_name, service_port)

NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"
NODE_B = "gke-jimmy-cluster-default-pool-d5041909-c1da"
REPO = Path(__file__).resolve().parents[2]


async def take(stream: AsyncIterator[dict[str, Any]], count: int) -> list[tuple[str, dict[str, Any]]]:
    """The next ``count`` events as (type, raw object); a stuck stream fails the test instead of hanging it."""

    async def collect() -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        async for event in stream:
            out.append((event["type"], event["raw_object"]))
            if len(out) == count:
                break
        return out

    return await asyncio.wait_for(collect(), 10)


async def drain(stream: AsyncIterator[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every event until the server ends the stream."""

    async def collect() -> list[tuple[str, dict[str, Any]]]:
        return [(event["type"], event["raw_object"]) async for event in stream]

    return await asyncio.wait_for(collect(), 10)


def names(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(kind, obj["metadata"].get("name", "")) for kind, obj in events]


# -- list ---------------------------------------------------------------------------------------------------

async def test_initial_list_of_the_article_cluster_deserializes_into_models(apiserver: ApiServer) -> None:
    seed_article(apiserver)
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        pods = await v1.list_pod_for_all_namespaces()
        assert pods.metadata.resource_version == str(apiserver.resource_version)
        sleep = next(p for p in pods.items if p.metadata.name == "sleep-5644bdc767-2dfg7")
        assert (sleep.metadata.uid, sleep.status.pod_ip, sleep.spec.service_account_name) == (
            "85c8c34e-7ae3-4d29-9582-0819e2b10c69", "10.4.4.19", "sleep")
        assert len(pods.items) == 12
        services = await v1.list_service_for_all_namespaces()
        by_name = {s.metadata.name: s for s in services.items}
        assert by_name["kubernetes"].spec.cluster_ip == "10.8.0.1"
        assert by_name["productpage"].spec.ports[0].target_port == 9080  # defaulted, as a real server does
        nodes = await v1.list_node()
        assert {n.metadata.name for n in nodes.items} == {NODE_A, NODE_B}
        namespaces = await v1.list_namespace()
        assert {"default", "istio-system", "legacy", "kube-system"} <= {n.metadata.name for n in namespaces.items}
        accounts = await v1.list_service_account_for_all_namespaces()
        assert ("default", "sleep") in {(a.metadata.namespace, a.metadata.name) for a in accounts.items}
        slices = await client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces()
        reviews = [s for s in slices.items if s.metadata.labels["kubernetes.io/service-name"] == "reviews"]
        assert sorted(e.addresses[0] for s in reviews for e in s.endpoints) == ["10.4.3.15", "10.4.3.16", "10.4.4.11"]
        # Built-in list items carry no kind/apiVersion on the wire (clients must not rely on them), as for real.
        raw = await v1.list_namespaced_pod("default", _preload_content=False)
        body = json.loads(await raw.read())
        assert body["kind"] == "PodList" and "kind" not in body["items"][0]


async def test_every_helper_object_deserializes_into_the_client_models(apiserver: ApiServer) -> None:
    node = apiserver.create(make_node("node-a", "10.168.0.2", ["10.4.1.0/24"], zone="z1", region="r1"))
    apiserver.create(make_namespace("team", labels={"istio.io/dataplane-mode": "ambient"}))
    apiserver.create(make_service_account("web", "team"))
    apiserver.create(make_pod("web-1", "team", ip="10.4.1.7", node=node, labels={"app": "web"}, service_account="web",
                              ports=[(8080, "http")]))
    apiserver.create(make_pod("agent", "team", node=node, host_network=True, ready=False))
    apiserver.create(make_pod("pending", "team", phase="Pending"))
    apiserver.create(make_service("web", "team", selector={"app": "web"}, ports=[service_port(80, "http", "http")],
                                  publish_not_ready=True, internal_traffic_policy="Local"))
    apiserver.create(make_service("web-headless", "team", selector={"app": "web"}, headless=True, ports=[80]))
    apiserver.create(make_service("external", "team", type="ExternalName", external_name="example.com"))
    apiserver.create(make_endpoint_slice("manual", "external", "team", endpoints=[endpoint("2001:db8::1", zone="z1")],
                                         ports=[{"name": "https", "port": 443, "protocol": "TCP"}]))
    apiserver.create(make_secret("s", "team", data={"k": b"v"}))
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        pods = {p.metadata.name: p for p in (await v1.list_namespaced_pod("team")).items}
        assert pods["agent"].status.pod_ip == "10.168.0.2" and pods["agent"].status.host_ip == "10.168.0.2"
        assert pods["web-1"].status.host_ip == "10.168.0.2" and pods["pending"].status.pod_ip is None
        services = {s.metadata.name: s for s in (await v1.list_namespaced_service("team")).items}
        assert services["web"].spec.cluster_ip.startswith("10.8.") and services["web-headless"].spec.cluster_ip == "None"
        assert services["external"].spec.cluster_ip is None
        assert (await v1.read_node("node-a")).metadata.labels["topology.kubernetes.io/zone"] == "z1"
        assert (await v1.read_namespace("team")).metadata.labels["kubernetes.io/metadata.name"] == "team"
        assert (await v1.read_namespaced_secret("s", "team")).data == {"k": "dg=="}
        assert {a.metadata.name for a in (await v1.list_namespaced_service_account("team")).items} == {"default", "web"}
        slices = (await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice("team")).items
        by_service = {s.metadata.labels["kubernetes.io/service-name"]: s for s in slices}
        assert by_service["external"].address_type == "IPv6"
        # publishNotReadyAddresses: the not-ready hostNetwork pod has no app label; web-1 is ready anyway.
        assert [e.addresses for e in by_service["web"].endpoints] == [["10.4.1.7"]]
        assert by_service["web-headless"].metadata.labels["service.kubernetes.io/headless"] == ""


async def test_paged_list_is_one_snapshot_and_exact_list_rebuilds_the_past(apiserver: ApiServer) -> None:
    for i in range(5):
        apiserver.create(make_pod(f"p-{i}", ip=f"10.0.0.{i + 1}"))
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        first = await v1.list_namespaced_pod("default", limit=2)
        assert [p.metadata.name for p in first.items] == ["p-0", "p-1"] and first.metadata.remaining_item_count == 3
        apiserver.delete("pods", "p-3")  # a change between pages does not show in the same list
        second = await v1.list_namespaced_pod("default", limit=10, _continue=first.metadata._continue)
        assert [p.metadata.name for p in second.items] == ["p-2", "p-3", "p-4"]
        assert second.metadata.resource_version == first.metadata.resource_version
        past = await v1.list_namespaced_pod("default", resource_version=first.metadata.resource_version,
                                            resource_version_match="Exact")
        assert len(past.items) == 5
        now = await v1.list_namespaced_pod("default")
        assert len(now.items) == 4
        apiserver.compact()
        with pytest.raises(ApiException) as gone:
            await v1.list_namespaced_pod("default", resource_version=first.metadata.resource_version,
                                         resource_version_match="Exact")
        assert gone.value.status == 410
        with pytest.raises(ApiException) as future:
            await v1.list_namespaced_pod("default", resource_version=str(apiserver.resource_version + 10))
        assert future.value.status == 504


# -- watch --------------------------------------------------------------------------------------------------

async def test_watch_from_the_list_version_sees_adds_updates_and_deletes(apiserver: ApiServer) -> None:
    seed_article(apiserver)
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        listed = await v1.list_pod_for_all_namespaces()
        # A change between the list and the watch is not lost: the watch starts from the list's version.
        apiserver.create(make_pod("new-1", "legacy", ip="10.4.3.50", labels={"app": "new"}))
        async with watch.Watch() as w:
            stream = w.stream(v1.list_pod_for_all_namespaces, resource_version=listed.metadata.resource_version,
                              timeout_seconds=30)
            events = await take(stream, 1)
            pod = apiserver.get("pods", "new-1", "legacy")
            pod["metadata"]["labels"]["version"] = "v2"
            apiserver.update(pod)
            with pytest.raises(ApiError) as stale:
                apiserver.update(pod)  # the resourceVersion it carries is no longer current
            assert stale.value.code == 409
            unchanged = apiserver.get("pods", "new-1", "legacy")
            assert apiserver.update(unchanged) == unchanged  # a no-op is not a write: no event, same version
            apiserver.delete("pods", "new-1", "legacy")
            events += await take(stream, 2)
            assert isinstance(w.resource_version, str) and w.resource_version == str(apiserver.resource_version)
    assert names(events) == [("ADDED", "new-1"), ("MODIFIED", "new-1"), ("DELETED", "new-1")]
    versions = [int(obj["metadata"]["resourceVersion"]) for _, obj in events]
    assert versions == sorted(versions) and versions[0] > int(listed.metadata.resource_version)
    assert events[0][1]["kind"] == "Pod" and events[0][1]["apiVersion"] == "v1"


async def test_watch_without_a_version_starts_with_the_current_state(apiserver: ApiServer) -> None:
    apiserver.create(make_pod("a", ip="10.0.0.1"))
    apiserver.create(make_pod("b", "kube-system", ip="10.0.0.2"))
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        async with watch.Watch() as w:
            stream = w.stream(v1.list_namespaced_pod, "default", timeout_seconds=30)
            events = await take(stream, 1)
            apiserver.create(make_pod("c", ip="10.0.0.3"))
            events += await take(stream, 1)
    assert names(events) == [("ADDED", "a"), ("ADDED", "c")]


async def test_bookmarks_only_when_allowed(apiserver: ApiServer) -> None:
    apiserver.bookmark_interval = 0.05
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        listed = await v1.list_namespaced_pod("default")
        apiserver.create(make_pod("a", ip="10.0.0.1"))
        async with watch.Watch() as w:
            stream = w.stream(v1.list_namespaced_pod, "default", resource_version=listed.metadata.resource_version,
                              allow_watch_bookmarks=True, timeout_seconds=30)
            events = await take(stream, 3)
        assert events[0][0] == "ADDED"
        assert [kind for kind, _ in events[1:]] == ["BOOKMARK", "BOOKMARK"]
        assert events[1][1]["metadata"]["resourceVersion"] == str(apiserver.resource_version)
        assert events[1][1]["kind"] == "Pod" and w.resource_version == str(apiserver.resource_version)

        async with watch.Watch() as w:
            stream = w.stream(v1.list_namespaced_pod, "default", resource_version=listed.metadata.resource_version,
                              timeout_seconds=30)
            events = await take(stream, 1)  # the watch is open
            apiserver.send_bookmarks()
            await asyncio.sleep(0.3)  # several bookmark intervals: none may arrive
            apiserver.end_watches("pods")
            events += await drain(stream)
        assert names(events) == [("ADDED", "a")]


async def test_send_initial_events_ends_with_an_annotated_bookmark(apiserver: ApiServer) -> None:
    apiserver.create(make_pod("a", ip="10.0.0.1"))
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        resp = await v1.list_namespaced_pod("default", watch=True, send_initial_events=True, allow_watch_bookmarks=True,
                                            resource_version_match="NotOlderThan", resource_version="",
                                            timeout_seconds=1, _preload_content=False)
        lines = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert [e["type"] for e in lines[:2]] == ["ADDED", "BOOKMARK"]
    assert lines[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


@pytest.mark.parametrize("expired_as", ["event", "http"])
async def test_watch_from_a_compacted_version_is_410(apiserver: ApiServer, expired_as: str) -> None:
    apiserver.expired_watch_as = expired_as
    apiserver.create(make_pod("a", ip="10.0.0.1"))
    old = str(apiserver.resource_version)
    apiserver.delete("pods", "a")
    apiserver.compact()
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        async with watch.Watch() as w:
            with pytest.raises(ApiException) as gone:
                await take(w.stream(v1.list_namespaced_pod, "default", resource_version=old, timeout_seconds=30), 1)
        assert gone.value.status == 410 and "too old resource version" in str(gone.value.reason)
        raw = await v1.list_namespaced_pod("default", watch=True, resource_version=old, _preload_content=False)
        body = await raw.read()
    if expired_as == "event":  # what kube-apiserver's watch cache does: 200, then one ERROR event
        assert raw.status == 200
        event = json.loads(body)
        assert event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    else:
        assert raw.status == 410 and json.loads(body)["kind"] == "Status"
    # The version at the compaction point itself is still watchable.
    async with api_client(apiserver) as api:
        async with watch.Watch() as w:
            stream = w.stream(client.CoreV1Api(api).list_namespaced_pod, "default",
                              resource_version=str(apiserver.resource_version), timeout_seconds=30)
            apiserver.create(make_pod("b", ip="10.0.0.2"))
            assert names(await take(stream, 1)) == [("ADDED", "b")]


async def test_timeout_seconds_ends_the_watch_cleanly(apiserver: ApiServer) -> None:
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        async with watch.Watch() as w:
            events = await drain(w.stream(v1.list_namespaced_pod, "default", resource_version="1", timeout_seconds=1))
    assert events == []
    watches = [r for r in apiserver.requests if r.verb == "watch"]
    assert watches[-1].query["timeoutSeconds"] == "1" and watches[-1].status == 200


async def test_selectors_on_list_and_watch(apiserver: ApiServer) -> None:
    seed_article(apiserver)
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)

        async def listed(**selectors: str) -> set[str]:
            pods = await v1.list_pod_for_all_namespaces(**selectors)
            return {p.metadata.name.split("-")[0] + ("-" + p.metadata.labels["version"] if "version" in (p.metadata.labels or {}) else "")
                    for p in pods.items}

        assert await listed(label_selector="app=reviews") == {"reviews-v1", "reviews-v2", "reviews-v3"}
        assert await listed(label_selector="app in (reviews, ratings),version!=v1") == {"reviews-v2", "reviews-v3"}
        assert await listed(label_selector="app notin (reviews,ratings,details,productpage),!version") == {
            "sleep", "legacy", "ztunnel", "kube", "httpbin"}
        assert await listed(label_selector="version,app==reviews,version notin (v1,v2)") == {"reviews-v3"}
        assert await listed(field_selector=f"spec.nodeName={NODE_B},metadata.namespace=default") == {
            "productpage-v1", "reviews-v2", "reviews-v3", "ratings-v1"}
        assert await listed(field_selector="metadata.name=httpbin-85d76b4bb6-dz6b2") == {"httpbin"}
        assert await listed(field_selector="spec.hostNetwork=true") == {"kube"}
        for bad in ({"field_selector": "spec.containers=x"}, {"label_selector": "app in (a"}, {"label_selector": "=x"}):
            with pytest.raises(ApiException) as err:
                await v1.list_pod_for_all_namespaces(**bad)
            assert err.value.status == 400

        listed_rv = (await v1.list_namespaced_pod("default")).metadata.resource_version
        async with watch.Watch() as w:
            stream = w.stream(v1.list_namespaced_pod, "default", resource_version=listed_rv,
                              label_selector="app=reviews", field_selector=f"spec.nodeName={NODE_A}", timeout_seconds=30)
            pod = apiserver.get("pods", "reviews-v1-9c6bb6658-4jgrh")
            pod["metadata"]["labels"]["app"] = "moved"
            apiserver.update(pod)  # leaves the selection: DELETED, with the state it had
            apiserver.create(make_pod("other", ip="10.4.4.60", node=NODE_A, labels={"app": "sleep"}))  # never in it
            pod = apiserver.get("pods", "reviews-v1-9c6bb6658-4jgrh")
            pod["metadata"]["labels"]["app"] = "reviews"
            apiserver.update(pod)  # enters it again: ADDED
            apiserver.create(make_pod("reviews-on-b", ip="10.4.3.60", node=NODE_B, labels={"app": "reviews"}))
            apiserver.create(make_pod("reviews-on-a", ip="10.4.4.61", node=NODE_A, labels={"app": "reviews"}))
            events = await take(stream, 3)
    assert names(events) == [("DELETED", "reviews-v1-9c6bb6658-4jgrh"), ("ADDED", "reviews-v1-9c6bb6658-4jgrh"),
                             ("ADDED", "reviews-on-a")]
    assert events[0][1]["metadata"]["labels"]["app"] == "reviews"


async def test_a_dropped_watch_fails_mid_stream_and_the_next_one_resumes(apiserver: ApiServer) -> None:
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        rv = (await v1.list_namespaced_pod("default")).metadata.resource_version
        async with watch.Watch() as w:
            stream = w.stream(v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=30)
            apiserver.create(make_pod("a", ip="10.0.0.1"))
            seen = await take(stream, 1)
            apiserver.drop_watches("pods")
            with pytest.raises(aiohttp.ClientPayloadError):
                await take(stream, 1)
        apiserver.inject(drop_after_events=1, verb="watch", resource="pods")
        apiserver.create(make_pod("b", ip="10.0.0.2"))
        async with watch.Watch() as w:
            stream = w.stream(v1.list_namespaced_pod, "default", resource_version=seen[0][1]["metadata"]["resourceVersion"],
                              timeout_seconds=30)
            assert names(await take(stream, 1)) == [("ADDED", "b")]
            apiserver.create(make_pod("c", ip="10.0.0.3"))
            with pytest.raises(aiohttp.ClientPayloadError):
                await take(stream, 1)


async def test_a_crd_that_appears_later_is_discovered_listed_and_watched(apiserver: ApiServer) -> None:
    async with api_client(apiserver) as api:
        custom = client.CustomObjectsApi(api)
        groups = await client.ApisApi(api).get_api_versions()
        assert "security.istio.io" not in {g.name for g in groups.groups}
        with pytest.raises(ApiException) as missing:
            await custom.list_namespaced_custom_object("security.istio.io", "v1", "default", "authorizationpolicies")
        assert missing.value.status == 404
        crds = client.ApiextensionsV1Api(api)
        crd_rv = (await crds.list_custom_resource_definition()).metadata.resource_version
        async with watch.Watch() as w:
            crd_events = w.stream(crds.list_custom_resource_definition, resource_version=crd_rv, timeout_seconds=30)
            apiserver.install_istio_crds()
            assert {name for _, name in names(await take(crd_events, 2))} == {
                "authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io"}
        groups = await client.ApisApi(api).get_api_versions()
        istio = next(g for g in groups.groups if g.name == "security.istio.io")
        assert [v.version for v in istio.versions] == ["v1", "v1beta1"]
        resources = await client.CoreApi(api).get_api_versions()
        assert resources.versions == ["v1"]

        listed = await custom.list_namespaced_custom_object("security.istio.io", "v1", "default", "authorizationpolicies")
        async with watch.Watch() as w:
            stream = w.stream(custom.list_namespaced_custom_object, "security.istio.io", "v1", "default",
                              "authorizationpolicies", resource_version=listed["metadata"]["resourceVersion"],
                              timeout_seconds=30)
            await custom.create_namespaced_custom_object(
                "security.istio.io", "v1beta1", "default", "authorizationpolicies",
                make_authorization_policy("deny-all", version="v1beta1"))
            (kind, obj), = await take(stream, 1)
            assert (kind, obj["apiVersion"], obj["metadata"]["generation"]) == ("ADDED", "security.istio.io/v1", 1)
            as_beta = await custom.list_namespaced_custom_object("security.istio.io", "v1beta1", "default",
                                                                 "authorizationpolicies")
            assert as_beta["items"][0]["apiVersion"] == "security.istio.io/v1beta1"
            apiserver.remove_crd("authorizationpolicies.security.istio.io")
            rest = await drain(stream)  # the object goes, then the watch ends
        assert names(rest) == [("DELETED", "deny-all")]
        with pytest.raises(ApiException) as gone:
            await custom.list_namespaced_custom_object("security.istio.io", "v1", "default", "authorizationpolicies")
        assert gone.value.status == 404


# -- writes -------------------------------------------------------------------------------------------------

async def test_secret_create_conflicts_and_replace(apiserver: ApiServer) -> None:
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        await v1.create_namespace(make_namespace("istio-system"))
        body = make_secret("zpilot-ca", "istio-system", data={"ca.crt": b"root"}, string_data={"note": "hi"})
        created = await v1.create_namespaced_secret("istio-system", body)
        assert base64.b64decode(created.data["note"]) == b"hi" and created.metadata.uid
        with pytest.raises(ApiException) as exists:
            await v1.create_namespaced_secret("istio-system", body)
        assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"
        current = await v1.read_namespaced_secret("zpilot-ca", "istio-system")
        current.data["ca.crt"] = base64.b64encode(b"rotated").decode()
        replaced = await v1.replace_namespaced_secret("zpilot-ca", "istio-system", current)
        assert int(replaced.metadata.resource_version) > int(current.metadata.resource_version)
        with pytest.raises(ApiException) as stale:
            await v1.replace_namespaced_secret("zpilot-ca", "istio-system", current)  # the old resourceVersion
        assert stale.value.status == 409 and json.loads(stale.value.body)["reason"] == "Conflict"
        with pytest.raises(ApiException) as no_ns:
            await v1.create_namespaced_secret("nowhere", make_secret("x", "nowhere"))
        assert no_ns.value.status == 404
        patched = await v1.patch_namespaced_secret("zpilot-ca", "istio-system", {"metadata": {"labels": {"a": "b"}}})
        assert patched.metadata.labels == {"a": "b"}
        patched = await v1.patch_namespaced_secret(  # a list body is sent as a JSON patch
            "zpilot-ca", "istio-system", [{"op": "add", "path": "/metadata/annotations", "value": {"c": "d"}}])
        assert patched.metadata.annotations == {"c": "d"} and patched.metadata.labels == {"a": "b"}
        await v1.delete_namespaced_secret("zpilot-ca", "istio-system")
        with pytest.raises(ApiException) as gone:
            await v1.read_namespaced_secret("zpilot-ca", "istio-system")
        assert gone.value.status == 404


async def test_pod_status_is_a_subresource(apiserver: ApiServer) -> None:
    apiserver.create(make_pod("a", ip="10.0.0.1", ready=True))
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        pod = await v1.read_namespaced_pod("a", "default")
        pod.status.pod_ip = "10.9.9.9"
        pod.metadata.labels = {"x": "y"}
        replaced = await v1.replace_namespaced_pod("a", "default", pod)
        assert replaced.status.pod_ip == "10.0.0.1" and replaced.metadata.labels == {"x": "y"}
        replaced.status.pod_ip = "10.9.9.9"
        updated = await v1.replace_namespaced_pod_status("a", "default", replaced)
        assert updated.status.pod_ip == "10.9.9.9"


async def test_namespace_delete_takes_its_objects(apiserver: ApiServer) -> None:
    apiserver.create(make_namespace("team"))
    apiserver.create(make_pod("a", "team", ip="10.0.0.1"))
    apiserver.create(make_service("s", "team", selector={"app": "a"}, ports=[80]))
    assert [a["metadata"]["name"] for a in apiserver.list("serviceaccounts", "team")] == ["default"]
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        rv = (await v1.list_pod_for_all_namespaces()).metadata.resource_version
        async with watch.Watch() as w:
            stream = w.stream(v1.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=30)
            await v1.delete_namespace("team")
            assert names(await take(stream, 1)) == [("DELETED", "a")]
    assert apiserver.list("services", "team") == [] and apiserver.list("endpointslices", "team") == []


async def test_bad_requests_get_a_status_and_change_nothing(apiserver: ApiServer) -> None:
    before = apiserver.resource_version
    ssl_context = ssl.create_default_context(cafile=str(apiserver.ca_path))
    headers = {"Authorization": f"Bearer {apiserver.admin_token}", "Content-Type": "application/json"}
    pods = f"{apiserver.url}/api/v1/namespaces/default/pods"
    cases = [
        (b"{not json", 400),
        (json.dumps({"metadata": {"name": "x"}, "spec": {"containers": []}}).encode(), 422),
        (json.dumps({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}]}}).encode(), 422),
        (json.dumps({"metadata": {"name": "x", "namespace": "other"}, "spec": {"containers": [{"name": "c"}]}}).encode(), 400),
        (b"[" * 100 + b"]" * 100, 400),
        (b" " * (3 * 1024 * 1024 + 1), 413),
    ]
    async with aiohttp.ClientSession(headers=headers) as session:
        for body, code in cases:
            async with session.post(pods, data=body, ssl=ssl_context) as response:
                status = await response.json()
                assert (response.status, status["kind"], status["code"]) == (code, "Status", code), body[:80]
        async with session.get(f"{pods}?watch=1&timeoutSeconds=-1", ssl=ssl_context) as response:
            assert response.status == 400
    assert apiserver.resource_version == before


# -- the endpointslice controller -----------------------------------------------------------------------------

async def test_endpoint_slices_follow_pods_like_the_controller(apiserver: ApiServer) -> None:
    apiserver.create(make_node("node-a", "10.168.0.2", "10.4.1.0/24", zone="us-west1-a", region="us-west1"))
    svc = apiserver.create(make_service("web", selector={"app": "web"}, ports=[service_port(80, "http", "http")]))
    placeholder = apiserver.list("endpointslices", "default", label_selector="kubernetes.io/service-name=web")
    assert [s["endpoints"] for s in placeholder] == [[]]
    # Two pods number the named port differently: one slice per distinct port set.
    apiserver.create(make_pod(replica_pod_name("web", 0), ip="10.4.1.10", node="node-a", labels={"app": "web"},
                              containers=[container("web", ports=[(8080, "http")])]))
    apiserver.create(make_pod(replica_pod_name("web", 1), ip="10.4.1.11", node="node-a", labels={"app": "web"},
                              containers=[container("web", ports=[(9090, "http")])]))
    async with api_client(apiserver) as api:
        discovery = client.DiscoveryV1Api(api)
        slices = (await discovery.list_namespaced_endpoint_slice("default", label_selector="kubernetes.io/service-name=web")).items
        assert sorted((s.ports[0].port, s.endpoints[0].addresses[0]) for s in slices) == [(8080, "10.4.1.10"), (9090, "10.4.1.11")]
        assert all(s.metadata.owner_references[0].uid == svc["metadata"]["uid"] for s in slices)
        assert {s.endpoints[0].zone for s in slices} == {"us-west1-a"}
        apiserver.terminate("pods", replica_pod_name("web", 0))
        slices = (await discovery.list_namespaced_endpoint_slice("default", label_selector="kubernetes.io/service-name=web")).items
        conditions = {s.endpoints[0].addresses[0]: s.endpoints[0].conditions for s in slices}
        assert (conditions["10.4.1.10"].ready, conditions["10.4.1.10"].serving, conditions["10.4.1.10"].terminating) == (False, True, True)
        assert conditions["10.4.1.11"].ready is True
    apiserver.delete("pods", replica_pod_name("web", 0))
    apiserver.delete("pods", replica_pod_name("web", 1))
    assert [s["endpoints"] for s in apiserver.list("endpointslices", "default", label_selector="kubernetes.io/service-name=web")] == [[]]
    apiserver.delete("services", "web")
    assert apiserver.list("endpointslices", "default", label_selector="kubernetes.io/service-name=web") == []
    # A selector-less Service keeps the slices its owner writes (here, the test).
    apiserver.create(make_service("ext", ports=[service_port(443, 6443, "https")]))
    apiserver.create(make_endpoint_slice("ext-1", "ext", endpoints=[endpoint("192.0.2.1")],
                                         ports=[{"name": "https", "port": 6443, "protocol": "TCP"}]))
    assert [s["metadata"]["name"] for s in apiserver.list("endpointslices", "default", label_selector="kubernetes.io/service-name=ext")] == ["ext-1"]


# -- failures -----------------------------------------------------------------------------------------------

async def test_injected_500_429_slow_and_reset(apiserver: ApiServer) -> None:
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        apiserver.inject(status=500, verb="list", resource="pods")
        with pytest.raises(ApiException) as failed:
            await v1.list_namespaced_pod("default")
        assert failed.value.status == 500
        await v1.list_namespaced_pod("default")  # one use only
        apiserver.inject(status=429, retry_after=2, times=2)
        for _ in range(2):
            with pytest.raises(ApiException) as throttled:
                await v1.list_namespace()
            assert throttled.value.status == 429 and throttled.value.headers["Retry-After"] == "2"
        apiserver.inject(delay=2.0, verb="list")
        with pytest.raises(asyncio.TimeoutError):
            await v1.list_namespace(_request_timeout=0.1)
        # A POST: aiohttp retries an idempotent request once after a disconnect, never a create.
        apiserver.inject(reset=True, verb="create")
        with pytest.raises(aiohttp.ClientError):
            await v1.create_namespace(make_namespace("team"))
        await v1.create_namespace(make_namespace("team"))  # the reset one never reached the store
    assert [r.status for r in apiserver.requests if r.verb == "create"] == [0, 201]


async def test_tokens_401_and_403(apiserver: ApiServer) -> None:
    async with api_client(apiserver, token="not-a-token") as api:
        with pytest.raises(ApiException) as unauthorized:
            await client.CoreV1Api(api).list_namespaced_pod("default")
        assert unauthorized.value.status == 401
        with pytest.raises(ApiException) as refused:
            await client.VersionApi(api).get_code()  # bad credentials are refused even where anonymous is allowed
        assert refused.value.status == 401
    ssl_context = ssl.create_default_context(cafile=str(apiserver.ca_path))
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{apiserver.url}/version", ssl=ssl_context) as public:
            assert public.status == 200 and (await public.json())["major"] == "1"
        async with anonymous.get(f"{apiserver.url}/api/v1/pods", ssl=ssl_context) as private:
            assert private.status == 401
    limited = apiserver.add_token(user="system:serviceaccount:istio-system:zpilot",
                                  allow={("list", "pods"), ("watch", "pods"), ("list", "endpointslices.discovery.k8s.io")})
    async with api_client(apiserver, token=limited) as api:
        v1 = client.CoreV1Api(api)
        await v1.list_pod_for_all_namespaces()
        await client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces()
        with pytest.raises(ApiException) as forbidden:
            await v1.list_service_for_all_namespaces()
        status = json.loads(forbidden.value.body)
        assert forbidden.value.status == 403 and status["reason"] == "Forbidden"
        assert 'User "system:serviceaccount:istio-system:zpilot" cannot list resource "services"' in status["message"]
        with pytest.raises(ApiException) as no_create:
            await v1.create_namespaced_pod("default", make_pod("x", ip="10.0.0.1"))
        assert no_create.value.status == 403 and "in the namespace \"default\"" in json.loads(no_create.value.body)["message"]
        assert (await client.CoreApi(api).get_api_versions()).versions == ["v1"]  # discovery: any valid token


async def test_token_review_checks_signature_expiry_audience_and_binding(apiserver: ApiServer) -> None:
    node = apiserver.create(make_node("node-a", "10.168.0.2", "10.4.1.0/24"))
    apiserver.create(make_service_account("sleep"))
    pod = apiserver.create(make_pod("sleep-1", ip="10.4.1.5", node=node, service_account="sleep"))
    good = apiserver.issue_token("default", "sleep", pod="sleep-1", audiences=["istio-ca"])
    async with api_client(apiserver) as api:
        auth = client.AuthenticationV1Api(api)

        async def review(token: str, audiences: list[str] | None = None) -> Any:
            body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=audiences))
            return (await auth.create_token_review(body)).status

        status = await review(good, ["istio-ca"])
        assert status.authenticated and status.audiences == ["istio-ca"]
        assert status.user.username == "system:serviceaccount:default:sleep"
        assert status.user.extra["authentication.kubernetes.io/pod-name"] == ["sleep-1"]
        assert status.user.extra["authentication.kubernetes.io/pod-uid"] == [pod["metadata"]["uid"]]
        assert status.user.extra["authentication.kubernetes.io/node-name"] == ["node-a"]
        wrong_audience = await review(good, ["other"])
        assert not wrong_audience.authenticated and "audiences" in wrong_audience.error
        assert not (await review(good)).authenticated  # default audience: the API server's own
        expired = apiserver.issue_token("default", "sleep", pod="sleep-1", audiences=["istio-ca"], expires_in=-60)
        assert "expired" in (await review(expired, ["istio-ca"])).error
        assert not (await review(good[:-4] + "AAAA", ["istio-ca"])).authenticated  # bad signature
        assert not (await review("garbage", ["istio-ca"])).authenticated
        apiserver.delete("pods", "sleep-1")
        assert "deleted" in (await review(good, ["istio-ca"])).error
        apiserver.create(make_pod("sleep-1", ip="10.4.1.5", node=node, service_account="sleep"))  # same name, new uid
        assert not (await review(good, ["istio-ca"])).authenticated
    no_review = apiserver.add_token(allow={("list", "pods")})
    async with api_client(apiserver, token=no_review) as api:
        with pytest.raises(ApiException) as forbidden:
            await client.AuthenticationV1Api(api).create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=good)))
        assert forbidden.value.status == 403


# -- other ways in ------------------------------------------------------------------------------------------

async def test_stop_refuses_connections_and_start_serves_the_same_state_on_the_same_port(apiserver: ApiServer) -> None:
    apiserver.create(make_pod("a", ip="10.0.0.1"))
    url = apiserver.url
    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        apiserver.stop()
        with pytest.raises(aiohttp.ClientConnectionError):  # a pooled connection may first show as disconnected
            await v1.list_namespaced_pod("default")
        with pytest.raises(aiohttp.ClientConnectorError):  # then nothing listens: connection refused
            await v1.list_namespaced_pod("default")
        apiserver.start()
        assert apiserver.url == url
        assert [p.metadata.name for p in (await v1.list_namespaced_pod("default")).items] == ["a"]


async def test_in_cluster_config(apiserver: ApiServer, tmp_path: Path) -> None:
    env = apiserver.write_in_cluster_files(tmp_path / "sa")
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration, token_filename=str(tmp_path / "sa" / "token"),
                                 cert_filename=str(tmp_path / "sa" / "ca.crt"), environ=env)
    async with client.ApiClient(configuration) as api:
        namespaces = await client.CoreV1Api(api).list_namespace()
    assert "kube-system" in {n.metadata.name for n in namespaces.items}


def test_a_subprocess_reaches_it_through_the_kubeconfig(apiserver: ApiServer) -> None:
    """What a ``zpilot serve`` subprocess does: load the kubeconfig file, verify TLS, list."""
    seed_article(apiserver)
    script = (
        "import asyncio\n"
        "from kubernetes_asyncio import client, config\n"
        "async def main():\n"
        "    await config.load_kube_config()\n"
        "    async with client.ApiClient() as api:\n"
        "        pods = await client.CoreV1Api(api).list_pod_for_all_namespaces(label_selector='app=ztunnel')\n"
        "        print(sorted(p.metadata.name for p in pods.items))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env={"KUBECONFIG": str(apiserver.kubeconfig_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60, check=True, cwd=REPO)
    assert out.stdout.strip() == "['ztunnel-rts54', 'ztunnel-z4qmh']"


def test_plain_http_server(tmp_path: Path) -> None:
    with ApiServer(tmp_path / "plain", tls=False, bootstrap=False) as server:
        async def main() -> list[str]:
            async with api_client(server) as api:
                return [n.metadata.name for n in (await client.CoreV1Api(api).list_namespace()).items]

        assert server.url.startswith("http://") and asyncio.run(main()) == []
