"""decode.py reads what the generated classes would, for any request, and refuses beyond limits."""

from __future__ import annotations

import grpc
import pytest
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from zpilot.protowire import leading_field_end
from zpilot.xds.decode import RequestError, decode, decode_sotw
from zpilot.xds.limits import NACK_MESSAGE_CHARS, Limits

from .ads_client import node

text = st.text(max_size=20)
names = st.lists(text, max_size=5)


def node_fields(request, node_id: str, metadata: dict, agent: tuple[str, str]) -> None:
    request.node.id = node_id
    request.node.metadata.update(metadata)
    request.node.user_agent_name, request.node.user_agent_version = agent
    request.node.cluster = "ignored"
    request.node.locality.zone = "ignored"
    request.node.client_features.append("ignored")


metadata = st.dictionaries(st.sampled_from(["NODE_NAME", "OTHER"]),
                           st.one_of(text, st.integers(0, 9), st.none(), st.just({"k": "v"})), max_size=2)


def expected_metadata_name(meta: dict) -> str | None:
    if "NODE_NAME" not in meta:
        return None
    return meta["NODE_NAME"] if isinstance(meta["NODE_NAME"], str) else ""


@settings(max_examples=200, deadline=None)
@given(version=text, names=names, type_url=text, nonce=text, nack=st.none() | st.tuples(st.integers(0, 16), text),
       node_id=text, meta=metadata, agent=st.tuples(text, text), with_node=st.booleans())
def test_sotw_requests_decode_as_the_generated_class_reads_them(version, names, type_url, nonce, nack, node_id,
                                                                 meta, agent, with_node):
    request = DiscoveryRequest(version_info=version, resource_names=names, type_url=type_url, response_nonce=nonce)
    request.resource_locators.add().name = "ignored"
    if nack is not None:
        request.error_detail.code, request.error_detail.message = nack
    if with_node:
        node_fields(request, node_id, meta, agent)
    got = decode(request.SerializeToString(), delta=False, limits=Limits())
    assert (got.version_info, list(got.names), got.type_url, got.nonce) == (version, names, type_url, nonce)
    assert (None if got.nack is None else (got.nack.code, got.nack.message)) == nack
    if with_node:
        assert (got.node.id, got.node.metadata_name) == (node_id, expected_metadata_name(meta))
        assert got.node.user_agent == "/".join(p for p in agent if p)
    else:
        assert got.node is None


@settings(max_examples=200, deadline=None)
@given(subscribe=names, unsubscribe=names, initial=st.dictionaries(text, text, max_size=5), nonce=text,
       nack=st.none() | st.tuples(st.integers(0, 16), text))
def test_delta_requests_decode_as_the_generated_class_reads_them(subscribe, unsubscribe, initial, nonce, nack):
    request = DeltaDiscoveryRequest(type_url="t", resource_names_subscribe=subscribe,
                                    resource_names_unsubscribe=unsubscribe, initial_resource_versions=initial,
                                    response_nonce=nonce, node=node("n"))
    if nack is not None:
        request.error_detail.code, request.error_detail.message = nack
    got = decode(request.SerializeToString(), delta=True, limits=Limits())
    assert (list(got.subscribe), list(got.unsubscribe), got.initial_versions) == (subscribe, unsubscribe, initial)
    assert (got.nonce, got.node.metadata_name) == (nonce, "n")
    assert (None if got.nack is None else (got.nack.code, got.nack.message)) == nack


def fields(request) -> tuple:
    nack = None if request.nack is None else (request.nack.code, request.nack.message)
    return request.version_info, request.names, request.type_url, request.nonce, nack, request.node


@settings(max_examples=300, deadline=None)
@given(first=names, second=names | st.none(), type_url=st.sampled_from(["a", "b"]), version=text, nonce=text,
       nack=st.none() | st.tuples(st.integers(0, 16), text), order=st.permutations(range(4)),
       canonical=st.booleans())
def test_a_sotw_request_after_another_decodes_as_the_generated_class_reads_it(first, second, type_url, version, nonce,
                                                                              nack, order, canonical):
    """Whether its names are taken from the request before (same bytes) or decoded, and however
    its fields are ordered (protobuf merges concatenated messages)."""
    limits = Limits()
    before = {}
    earlier, names_bytes = decode_sotw(
        DiscoveryRequest(version_info="v0", resource_names=first, type_url="a", response_nonce="1").SerializeToString(),
        limits, before)
    assert earlier.names == tuple(first)
    if names_bytes is not None:
        before["a"] = names_bytes
    names_ = first if second is None else second
    parts = [DiscoveryRequest(version_info=version), DiscoveryRequest(resource_names=names_),
             DiscoveryRequest(type_url=type_url, response_nonce=nonce), DiscoveryRequest()]
    if nack is not None:
        parts[3].error_detail.code, parts[3].error_detail.message = nack
    raw = b"".join(parts[i].SerializeToString() for i in (range(4) if canonical else order))
    got, _ = decode_sotw(raw, limits, before)
    assert fields(got) == fields(decode(raw, delta=False, limits=limits))


def test_an_ack_repeating_the_names_is_not_decoded_again():
    limits = Limits()
    names_ = [f"outbound|80||svc-{i}.ns.svc.cluster.local" for i in range(100)]
    ask = DiscoveryRequest(resource_names=names_, type_url="eds", response_nonce="")
    request, names_bytes = decode_sotw(ask.SerializeToString(), limits, {})
    assert request.names == tuple(names_) and names_bytes is not None
    ack = DiscoveryRequest(version_info="v1", resource_names=names_, type_url="eds", response_nonce="7")
    again, kept = decode_sotw(ack.SerializeToString(), limits, {"eds": names_bytes})
    assert again.names is request.names and kept is names_bytes  # the same tuple: nothing decoded
    assert (again.version_info, again.nonce, again.nack) == ("v1", "7", None)
    other, _ = decode_sotw(ack.SerializeToString(), limits, {"cds": names_bytes})  # another type's: decoded
    assert other.names == request.names and other.names is not request.names


def test_an_ack_is_read_without_its_names_however_its_other_fields_are_placed():
    """The names of the request before are looked for where names begin (after the version, if
    any); every other field may come before or after them, a NACK's error included."""
    limits = Limits()
    names_ = [f"outbound|80||svc-{i}.ns.svc.cluster.local" for i in range(100)]
    request, names_bytes = decode_sotw(DiscoveryRequest(resource_names=names_, type_url="eds").SerializeToString(),
                                       limits, {})
    listed = DiscoveryRequest(resource_names=names_).SerializeToString()
    nack = DiscoveryRequest(type_url="eds", response_nonce="8")
    nack.error_detail.message = "rejected"
    for raw in (
        listed + DiscoveryRequest(version_info="v2", type_url="eds", response_nonce="8").SerializeToString(),
        DiscoveryRequest(version_info="v2").SerializeToString() + listed + nack.SerializeToString(),
    ):
        got, kept = decode_sotw(raw, limits, {"eds": names_bytes})
        assert got.names is request.names and kept is names_bytes
        assert fields(got) == fields(decode(raw, delta=False, limits=limits))


def test_names_added_after_the_repeated_ones_are_decoded():
    limits = Limits()
    names_ = [f"outbound|80||svc-{i}.ns.svc.cluster.local" for i in range(20)]
    _, names_bytes = decode_sotw(DiscoveryRequest(resource_names=names_, type_url="eds").SerializeToString(), limits, {})
    for more in (names_ + ["outbound|80||new.ns.svc.cluster.local"], names_[:-1], ["first", *names_]):
        raw = DiscoveryRequest(version_info="v1", resource_names=more, type_url="eds",
                               response_nonce="3").SerializeToString()
        got, kept = decode_sotw(raw, limits, {"eds": names_bytes})
        assert got.names == tuple(more) and kept is not names_bytes
    # the same names after a node: a first request, decoded whole (its node is read)
    raw = DiscoveryRequest(node=node("n"), resource_names=names_, type_url="eds").SerializeToString()
    got, _ = decode_sotw(raw, limits, {"eds": names_bytes})
    assert got.node.metadata_name == "n" and got.names == tuple(names_)


def test_a_malformed_request_after_an_ack_is_refused_as_before():
    limits = Limits()
    names_ = ["a", "b"]
    _, names_bytes = decode_sotw(DiscoveryRequest(resource_names=names_, type_url="eds").SerializeToString(), limits, {})
    raw = DiscoveryRequest(resource_names=names_, type_url="eds").SerializeToString() + b"\x2a\x05ab"  # truncated nonce
    with pytest.raises(RequestError) as refused:
        decode_sotw(raw, limits, {"eds": names_bytes})
    assert refused.value.reason == "unparseable"
    long_version = DiscoveryRequest(version_info="v" * (limits.max_name_length + 1), resource_names=names_,
                                    type_url="eds").SerializeToString()
    with pytest.raises(RequestError) as refused:
        decode_sotw(long_version, limits, {"eds": names_bytes})
    assert refused.value.reason == "too_long"


def test_a_repeated_map_key_keeps_its_last_value_as_protobuf_does():
    first = DeltaDiscoveryRequest(initial_resource_versions={"c": "1"}, node=node("a")).SerializeToString()
    second = DeltaDiscoveryRequest(initial_resource_versions={"c": "2"}, node=node("b")).SerializeToString()
    got = decode(first + second, delta=True, limits=Limits())  # concatenated messages merge
    assert got.initial_versions == {"c": "2"}
    assert got.node.metadata_name == "b"
    assert DeltaDiscoveryRequest.FromString(first + second).initial_resource_versions["c"] == "2"


def test_a_nack_text_is_cut_not_refused():
    request = DiscoveryRequest(type_url="t")
    request.error_detail.message = "e" * 100_000
    got = decode(request.SerializeToString(), delta=False, limits=Limits())
    assert got.nack.message.startswith("e" * NACK_MESSAGE_CHARS) and got.nack.message.endswith("(100000 characters)")


@pytest.mark.parametrize("request_, delta, code, message", [
    (DiscoveryRequest(resource_names=["n"] * 11), False, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "resource_names: 11 entries; the limit is 10 (zpilot serve --max-resource-names)"),
    (DeltaDiscoveryRequest(initial_resource_versions={str(i): "" for i in range(11)}), True,
     grpc.StatusCode.RESOURCE_EXHAUSTED, "initial_resource_versions: 11 entries; the limit is 10"),
    (DeltaDiscoveryRequest(resource_names_subscribe=["x" * 65]), True, grpc.StatusCode.INVALID_ARGUMENT,
     "a resource name of 65 characters; the limit is 64"),
    (DeltaDiscoveryRequest(initial_resource_versions={"c": "v" * 65}), True, grpc.StatusCode.INVALID_ARGUMENT,
     "a resource name or version in initial_resource_versions of 65 characters"),
    (DiscoveryRequest(response_nonce="n" * 65), False, grpc.StatusCode.INVALID_ARGUMENT,
     "type URL, nonce or version of 65 characters"),
    (DiscoveryRequest(node=node("a", node_id="i" * 65)), False, grpc.StatusCode.INVALID_ARGUMENT,
     "node id of 65 characters"),
    (DiscoveryRequest(node=node("a", node_id="i")), False, grpc.StatusCode.INVALID_ARGUMENT,
     "node metadata has 2 fields; the limit is 1"),
])
def test_requests_beyond_a_limit_are_refused_naming_it(request_, delta, code, message):
    if "metadata has" in message:
        request_.node.metadata["OTHER"] = "x"
    limits = Limits(max_resource_names=10, max_name_length=64, max_node_metadata_fields=1)
    with pytest.raises(RequestError) as refused:
        decode(request_.SerializeToString(), delta=delta, limits=limits)
    assert refused.value.code == code and message in refused.value.message


def test_garbage_is_unparseable():
    with pytest.raises(RequestError, match="cannot parse envoy.service.discovery.v3.DiscoveryRequest") as refused:
        decode(b"\xff\xff\xff\xff", delta=False, limits=Limits())
    assert refused.value.reason == "unparseable"


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="limit max_streams must be a positive integer, not 0"):
        Limits(max_streams=0)


def test_the_end_of_a_leading_field_on_the_wire_format():
    long_version = "v" * 300  # a two-byte length
    for request, end in (
        (DiscoveryRequest(version_info="v1", type_url="t"), 4),
        (DiscoveryRequest(version_info=long_version, resource_names=["a"]), 3 + len(long_version)),
        (DiscoveryRequest(resource_names=["a"], type_url="t"), 0),  # starts with another field
        (DiscoveryRequest(), 0),
    ):
        assert leading_field_end(request.SerializeToString(), 1) == end
    with pytest.raises(ValueError):
        leading_field_end(DiscoveryRequest(version_info="v1").SerializeToString()[:-1], 1)
