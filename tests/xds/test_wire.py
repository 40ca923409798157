"""The hand-assembled envelopes parse exactly as the generated classes would build them."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse
from google.protobuf import any_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from zpilot.xds import wire
from zpilot.xds.order import CLUSTER_TYPE

text = st.text(min_size=0, max_size=40)


# No per-example deadline: CI machines are shared, and these assert encodings, not speed.
relaxed = settings(deadline=None, max_examples=60)


@relaxed
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_matches_protobuf(value):
    from google.protobuf.internal.encoder import _VarintBytes

    assert wire.varint(value) == _VarintBytes(value)


@relaxed
@given(version=text, nonce=text, names=st.lists(st.text(min_size=1, max_size=30), max_size=5), cp=text)
def test_discovery_response(version, nonce, names, cp):
    clusters = [Cluster(name=n) for n in names]
    anys = [wire.any_bytes(CLUSTER_TYPE, c.SerializeToString()) for c in clusters]
    data = wire.discovery_response(version_info=version, resources=anys, type_url=CLUSTER_TYPE, nonce=nonce,
                                   control_plane_id=cp)
    expected = DiscoveryResponse(version_info=version, type_url=CLUSTER_TYPE, nonce=nonce)
    for c in clusters:
        expected.resources.add().Pack(c)
    if cp:
        expected.control_plane.identifier = cp
    assert DiscoveryResponse.FromString(data) == expected


@relaxed
@given(names=st.lists(st.text(min_size=1, max_size=30), max_size=4), removed=st.lists(text, max_size=4),
       version=text, nonce=text)
def test_delta_discovery_response(names, removed, version, nonce):
    clusters = [Cluster(name=n) for n in names]
    resources = [
        wire.delta_resource(c.name, f"v-{c.name}", wire.any_bytes(CLUSTER_TYPE, c.SerializeToString()))
        for c in clusters
    ]
    data = wire.delta_discovery_response(system_version_info=version, resources=resources, removed=removed,
                                         type_url=CLUSTER_TYPE, nonce=nonce, control_plane_id="zp")
    parsed = DeltaDiscoveryResponse.FromString(data)
    assert parsed.system_version_info == version and parsed.nonce == nonce and parsed.type_url == CLUSTER_TYPE
    assert list(parsed.removed_resources) == removed
    assert parsed.control_plane.identifier == "zp"
    for got, c in zip(parsed.resources, clusters, strict=True):
        assert got.name == c.name and got.version == f"v-{c.name}"
        unpacked = Cluster()
        assert got.resource.Unpack(unpacked) and unpacked == c


def test_any_bytes_is_a_packed_any():
    c = Cluster(name="x")
    packed = any_pb2.Any()
    packed.Pack(c)
    assert any_pb2.Any.FromString(wire.any_bytes(CLUSTER_TYPE, c.SerializeToString())) == packed


def test_cached_delta_entries_parse_as_resources():
    from zpilot.xds.snapshot import CachedResource

    clusters = [Cluster(name=n) for n in ("a", "b")]
    cached = [CachedResource.of(CLUSTER_TYPE, c.name, c) for c in clusters]
    data = wire.delta_discovery_response_from_entries(
        system_version_info="s", entries=b"".join(r.delta_entry for r in cached), removed=["gone"],
        type_url=CLUSTER_TYPE, nonce="3")
    parsed = DeltaDiscoveryResponse.FromString(data)
    assert [(r.name, r.version) for r in parsed.resources] == [(r.name, r.version) for r in cached]
    assert list(parsed.removed_resources) == ["gone"] and parsed.nonce == "3"
    for got, c in zip(parsed.resources, clusters):
        unpacked = Cluster()
        assert got.resource.Unpack(unpacked) and unpacked == c


def test_a_delta_entry_shares_the_cached_bytes():
    """A delta stream's entry of a resource adds its own header to the very bytes cached for SotW
    (a view, not a copy: one copy of each resource is held whichever protocol is served)."""
    from zpilot.xds.snapshot import CachedResource

    cached = CachedResource.of(CLUSTER_TYPE, "a", Cluster(name="a"))
    *_, body = cached.delta_parts
    assert isinstance(body, memoryview) and body.obj is cached.parts[0]
    assert bytes(body) == cached.any


def test_every_delta_entry_of_a_composed_set_parses_as_its_resources():
    """A new delta stream's answer carries every resource: a shared set's entries joined once,
    then the node's own."""
    from zpilot.xds.snapshot import CachedResource, TypeResources

    def cached(*names: str) -> dict[str, CachedResource]:
        return {n: CachedResource.of(CLUSTER_TYPE, n, Cluster(name=n)) for n in names}

    shared = TypeResources.of_cached(CLUSTER_TYPE, cached("s1", "s2", "s3"))
    node = TypeResources.composed(CLUSTER_TYPE, [shared], cached("own1", "own2"))
    assert node.parts == (shared,)
    chunks = node.delta_entry_chunks()
    assert chunks[0] is TypeResources.composed(CLUSTER_TYPE, [shared], {}).delta_entry_chunks()[0]  # joined once
    parsed = DeltaDiscoveryResponse.FromString(wire.delta_discovery_response_from_entries(
        system_version_info="s", entries=b"".join(chunks), removed=[], type_url=CLUSTER_TYPE, nonce="1"))
    assert [(r.name, r.version) for r in parsed.resources] == [(n, r.version) for n, r in node.items.items()]
    for got in parsed.resources:
        unpacked = Cluster()
        assert got.resource.Unpack(unpacked) and unpacked.name == got.name


def test_a_composed_set_naming_a_resource_twice_answers_it_once():
    """Two shared sets naming the same resource: the node has the later set's (``TypeResources.composed``),
    and a response carrying every resource names it once, with that version, in SotW and in delta."""
    from zpilot.xds.snapshot import CachedResource, TypeResources

    def cached(version: int, *names: str) -> dict[str, CachedResource]:
        return {n: CachedResource.of(CLUSTER_TYPE, n, Cluster(name=n, connect_timeout={"seconds": version}))
                for n in names}

    first = TypeResources.of_cached(CLUSTER_TYPE, cached(1, "a", "b"))
    later = TypeResources.of_cached(CLUSTER_TYPE, cached(2, "b", "c"))
    node = TypeResources.composed(CLUSTER_TYPE, [first, later], {})
    expected = [(n, r.version) for n, r in node.items.items()]
    assert len(expected) == 3
    sotw = DiscoveryResponse.FromString(wire.discovery_response_from_entries(
        version_info="s", entries=b"".join(node.entry_chunks()), type_url=CLUSTER_TYPE, nonce="1"))
    got = []
    for any_message in sotw.resources:
        cluster = Cluster()
        assert any_message.Unpack(cluster)
        got.append((cluster.name, cluster.connect_timeout.seconds))
    assert sorted(got) == [("a", 1), ("b", 2), ("c", 2)]
    delta = DeltaDiscoveryResponse.FromString(wire.delta_discovery_response_from_entries(
        system_version_info="s", entries=b"".join(node.delta_entry_chunks()), removed=[], type_url=CLUSTER_TYPE,
        nonce="1"))
    assert sorted((r.name, r.version) for r in delta.resources) == sorted(expected)
