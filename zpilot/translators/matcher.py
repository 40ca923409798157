"""Builders for ``filter_chain_matcher`` trees (xds.type.matcher.v3), the article's way of picking
a filter chain by destination port, source IP and destination IP.

Note the types: inputs and actions are ``xds.core.v3.TypedExtensionConfig``, not Envoy's own.
A nested map that finds no key falls back to the enclosing level's ``on_no_match``.

Besides exact maps, :func:`in_ranges` tests an address against a set of CIDR ranges with one
outcome for all of them (``xds.type.matcher.v3.IPMatcher``, which Envoy logs as work in
progress): "is the source one of this node's pods" without repeating what follows per pod.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping

from google.protobuf import any_pb2, wrappers_pb2
from xds.core.v3 import cidr_pb2, extension_pb2
from xds.type.matcher.v3 import ip_pb2, matcher_pb2, regex_pb2, string_pb2

from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2

from .. import protowire
from ..model.addresses import host_prefix_len
from .envoy_common import pack

Matcher = matcher_pb2.Matcher
OnMatch = matcher_pb2.Matcher.OnMatch

_INPUTS = {
    "port": network_inputs_pb2.DestinationPortInput,
    "source-ip": network_inputs_pb2.SourceIPInput,
    "ip": network_inputs_pb2.DestinationIPInput,
}


def chain(name: str) -> OnMatch:
    """Select the filter chain called ``name``."""
    on_match = OnMatch()
    action = on_match.action
    action.name = name
    # pack(StringValue(value=name)), set in place (tens of thousands of chains at R)
    action.typed_config.type_url = _STRING_VALUE_URL
    action.typed_config.value = protowire.field_str(_STRING_VALUE_FIELD, name)
    return on_match


_STRING_VALUE_URL = f"type.googleapis.com/{wrappers_pb2.StringValue.DESCRIPTOR.full_name}"
_STRING_VALUE_FIELD = wrappers_pb2.StringValue.DESCRIPTOR.fields_by_name["value"].number


def nested(matcher: Matcher) -> OnMatch:
    return OnMatch(matcher=matcher)


def exact(input_name: str, cases: Mapping[str, OnMatch], on_no_match: OnMatch | None = None) -> Matcher:
    """``input_name`` is one of "port" (destination port), "source-ip" and "ip" (destination IP)."""
    matcher = Matcher()
    tree = matcher.matcher_tree
    tree.input.CopyFrom(_input(input_name))
    tree.exact_match_map.SetInParent()
    entries = tree.exact_match_map.map
    for key, on_match in cases.items():  # copied in place: a map given whole is copied twice
        entries[key].CopyFrom(on_match)
    if on_no_match is not None:
        matcher.on_no_match.CopyFrom(on_no_match)
    return matcher


@functools.lru_cache(maxsize=None)
def _input(input_name: str) -> extension_pb2.TypedExtensionConfig:
    """A matcher's input (never modified: copied)."""
    return extension_pb2.TypedExtensionConfig(name=input_name, typed_config=pack(_INPUTS[input_name]()))


#: The name of the IP range matcher extension (a ``custom_match`` of a matcher tree).
IP_RANGE_MATCHER = "envoy.matching.custom_matchers.ip_range_matcher"


def serialized_ranges(ips: tuple[str, ...]) -> bytes:
    """An ``IPRangeMatcher`` holding only the ranges of ``ips`` (as :func:`_range` makes them),
    serialized (see :func:`in_ranges`): written on the wire format, each range once per address,
    the very bytes the generated class writes (every node's pods, in two of its matchers: made
    as messages, 20,000 ranges were a tenth of a cold generation at R)."""
    return b"".join(map(_range_field, ips))


#: The tags of ``IPRangeMatcher.ranges``, ``CidrRange.address_prefix``, ``CidrRange.prefix_len``
#: (length-delimited) and ``UInt32Value.value`` (a varint).
_RANGES_TAG, _PREFIX_TAG, _LENGTH_TAG = (
    protowire.varint(number << 3 | protowire.LENGTH_DELIMITED)
    for number in (
        ip_pb2.IPMatcher.IPRangeMatcher.DESCRIPTOR.fields_by_name["ranges"].number,
        cidr_pb2.CidrRange.DESCRIPTOR.fields_by_name["address_prefix"].number,
        cidr_pb2.CidrRange.DESCRIPTOR.fields_by_name["prefix_len"].number,
    )
)
_VALUE_TAG = protowire.varint(wrappers_pb2.UInt32Value.DESCRIPTOR.fields_by_name["value"].number << 3)


@functools.lru_cache(maxsize=1 << 16)
def _range_field(ip: str) -> bytes:
    """:func:`_range` of ``ip`` as an ``IPRangeMatcher.ranges`` field."""
    address, slash, length = ip.partition("/")
    prefix_len = int(length) if slash else host_prefix_len(ip)
    if not 0 <= prefix_len < 1 << 32:
        raise ValueError(f"prefix length {prefix_len} of {ip!r} is not a uint32")
    value = _VALUE_TAG + protowire.varint(prefix_len) if prefix_len else b""  # proto3: a zero is not written
    prefix = address.encode("utf-8")
    cidr = b"".join(
        (_PREFIX_TAG, protowire.varint(len(prefix)), prefix, _LENGTH_TAG, protowire.varint(len(value)), value)
        if prefix  # proto3: an empty string is not written
        else (_LENGTH_TAG, protowire.varint(len(value)), value)
    )
    return b"".join((_RANGES_TAG, protowire.varint(len(cidr)), cidr))


def _ranges(ips) -> list[cidr_pb2.CidrRange]:
    """Each a host range, or, written ``address/length``, that prefix."""
    return [_range(ip) for ip in ips]


def _range(ip: str) -> cidr_pb2.CidrRange:
    address, slash, length = ip.partition("/")
    prefix_len = int(length) if slash else host_prefix_len(ip)
    return cidr_pb2.CidrRange(address_prefix=address, prefix_len=wrappers_pb2.UInt32Value(value=prefix_len))


def in_ranges(
    input_name: str,
    ips: list[str],
    on_match: OnMatch | bytes,
    on_no_match: OnMatch | None = None,
    *,
    ranges: bytes | None = None,
) -> Matcher:
    """``on_match`` if the address ``input_name`` ("source-ip" or "ip") is one of ``ips`` (each a
    host range: /32), else ``on_no_match``.

    ``on_match`` may be given serialized (deterministically, see :func:`serialized`): a large one
    that many nodes share (every destination of the cluster) is then joined as bytes into this
    node's range matcher, instead of being copied and serialized again for each node. The result
    is the same message, byte for byte. With it, ``ranges`` may be :func:`serialized_ranges` of
    ``ips`` made before (a node's pods change less often than the destinations)."""
    if isinstance(on_match, bytes):
        # IPRangeMatcher: its ranges (field 1) then on_match (field 2), as deterministic serialization orders them
        ranges_bytes = ranges if ranges is not None else serialized_ranges(tuple(ips))
        on_match_header = protowire.field_header(_ON_MATCH_FIELD, len(on_match))
        range_matcher_header = protowire.field_header(
            _RANGE_MATCHERS_FIELD, len(ranges_bytes) + len(on_match_header) + len(on_match)
        )
        typed_config = any_pb2.Any(
            type_url=f"type.googleapis.com/{ip_pb2.IPMatcher.DESCRIPTOR.full_name}",
            value=b"".join((range_matcher_header, ranges_bytes, on_match_header, on_match)),
        )
    else:
        typed_config = pack(
            ip_pb2.IPMatcher(range_matchers=[ip_pb2.IPMatcher.IPRangeMatcher(ranges=_ranges(ips), on_match=on_match)])
        )
    matcher = Matcher()
    tree = matcher.matcher_tree
    tree.input.CopyFrom(_input(input_name))
    tree.custom_match.name = IP_RANGE_MATCHER
    tree.custom_match.typed_config.CopyFrom(typed_config)
    if on_no_match is not None:
        matcher.on_no_match.CopyFrom(on_no_match)
    return matcher


def by_ranges(
    input_name: str, outcomes: list[tuple[list[str], OnMatch]], on_no_match: OnMatch | None = None
) -> Matcher:
    """Per set of addresses its own outcome: ``(ips, on_match)`` pairs (each IP a host range, or a
    prefix written ``address/length``), else ``on_no_match``. Where ranges overlap, the longest
    prefix that holds the address decides (Envoy's IP matcher is a trie). One ``IPMatcher`` whose range matchers each hold a set: an
    outcome shared by thousands of addresses (the pod IPs of one identity) is written once, not
    once per address as an exact map would."""
    tree = Matcher.MatcherTree(
        input=_input(input_name),
        custom_match=extension_pb2.TypedExtensionConfig(
            name=IP_RANGE_MATCHER,
            typed_config=pack(
                ip_pb2.IPMatcher(
                    range_matchers=[
                        ip_pb2.IPMatcher.IPRangeMatcher(ranges=_ranges(ips), on_match=on_match) for ips, on_match in outcomes
                    ]
                )
            ),
        ),
    )
    matcher = Matcher(matcher_tree=tree)
    if on_no_match is not None:
        matcher.on_no_match.CopyFrom(on_no_match)
    return matcher


def serialized(on_match: OnMatch) -> bytes:
    """``on_match`` as :func:`in_ranges` takes it already serialized."""
    return on_match.SerializeToString(deterministic=True)


def serialized_exact(input_name: str, cases: Mapping[str, str]) -> bytes:
    """``serialized(nested(exact(input_name, {key: chain(name)})))`` for ``cases`` (key -> chain
    name), written on the wire format from each case's bytes, made once per (key, chain): a
    node's map of its pods changes in one pod at a time, and its hundred entries were made as
    messages, copied and serialized again for each change. Deterministic serialization (upb's)
    writes a map's entries sorted by key: by their UTF-8 bytes, a key that another begins with
    after it (tests/translators/test_matcher_bytes.py holds this to the generated classes)."""
    return bytes(serialized_exact_map(input_name, cases))


@dataclass(frozen=True, eq=False)
class SerializedMap:
    """:func:`serialized_exact`'s bytes as the bytes before its map's entries and each entry (the
    very bytes objects every map with that (key, chain) holds): ``bytes()`` of it is the serialized
    ``OnMatch``. What a consumer derives from each entry (the chain it selects: translators/
    consistency.py) is then derived once per entry, not from the hundred entries of a node's map
    parsed again for each change of one of them."""

    head: bytes
    entries: tuple[bytes, ...]

    def __bytes__(self) -> bytes:
        return b"".join((self.head, *self.entries))


def serialized_exact_map(input_name: str, cases: Mapping[str, str]) -> SerializedMap:
    """:func:`serialized_exact`, as its parts (:class:`SerializedMap`)."""
    entries = tuple([_exact_entry(key, cases[key]) for key in sorted(cases, key=_map_order)])
    size = sum(map(len, entries))
    tree_size = len(_input_field(input_name)) + len(protowire.field_header(_EXACT_MATCH_MAP_FIELD, size)) + size
    head = b"".join((
        protowire.field_header(
            _ON_MATCH_MATCHER_FIELD, len(protowire.field_header(_MATCHER_TREE_FIELD, tree_size)) + tree_size
        ),
        protowire.field_header(_MATCHER_TREE_FIELD, tree_size),
        _input_field(input_name),
        protowire.field_header(_EXACT_MATCH_MAP_FIELD, size),
    ))
    return SerializedMap(head, entries)


def _map_order(key: str) -> bytes:
    """Where upb's deterministic serialization puts a string key among a map's: UTF-8 never has
    the byte 0xff, so a key ends after every key it begins."""
    return key.encode("utf-8") + b"\xff"


@functools.lru_cache(maxsize=1 << 16)
def _exact_entry(key: str, chain_name: str) -> bytes:
    """One entry of an exact match map (``MatchMap.map``): the key, then the chain it selects
    (``serialized(chain(chain_name))``, written here: a cold generation at R writes 30,000 entries,
    each pod's three, and the message made and serialized for each was most of their cost;
    tests/translators/test_matcher_bytes.py holds both to the generated classes)."""
    varint = protowire.varint
    name = chain_name.encode("utf-8")
    if name:  # OnMatch.action: TypedExtensionConfig{name, typed_config: Any{type_url, value: StringValue{value}}}
        value = _TAG_1 + varint(len(name)) + name
        packed = _STRING_VALUE_URL_FIELD + _TAG_2 + varint(len(value)) + value
        action = _TAG_1 + varint(len(name)) + name + _TAG_2 + varint(len(packed)) + packed
    else:  # proto3 omits empty strings: the name and the Any's value
        action = _TAG_2 + varint(len(_STRING_VALUE_URL_FIELD)) + _STRING_VALUE_URL_FIELD
    on_match = _TAG_2 + varint(len(action)) + action
    encoded = key.encode("utf-8")
    entry = (_TAG_1 + varint(len(encoded)) + encoded if encoded else b"") + _TAG_2 + varint(len(on_match)) + on_match
    return protowire.field_bytes(_MAP_FIELD, entry)


#: The tags of the length-delimited fields 1 and 2 (each message :func:`_exact_entry` writes has its
#: strings and messages there: ``MatchMap.map``'s entry, ``OnMatch.action``, ``TypedExtensionConfig``,
#: ``Any`` and ``StringValue``; asserted below).
_TAG_1, _TAG_2 = protowire.varint(1 << 3 | protowire.LENGTH_DELIMITED), protowire.varint(2 << 3 | protowire.LENGTH_DELIMITED)
_STRING_VALUE_URL_FIELD = _TAG_1 + protowire.varint(len(_STRING_VALUE_URL.encode())) + _STRING_VALUE_URL.encode()
assert (
    OnMatch.DESCRIPTOR.fields_by_name["action"].number,
    extension_pb2.TypedExtensionConfig.DESCRIPTOR.fields_by_name["name"].number,
    extension_pb2.TypedExtensionConfig.DESCRIPTOR.fields_by_name["typed_config"].number,
    any_pb2.Any.DESCRIPTOR.fields_by_name["type_url"].number,
    any_pb2.Any.DESCRIPTOR.fields_by_name["value"].number,
    wrappers_pb2.StringValue.DESCRIPTOR.fields_by_name["value"].number,
) == (2, 1, 2, 1, 2, 1)


@functools.lru_cache(maxsize=None)
def _input_field(input_name: str) -> bytes:
    """A matcher tree's ``input`` field (never modified)."""
    return protowire.field_bytes(_INPUT_FIELD, _input(input_name).SerializeToString(deterministic=True))


_ON_MATCH_MATCHER_FIELD = OnMatch.DESCRIPTOR.fields_by_name["matcher"].number
_MATCHER_TREE_FIELD = Matcher.DESCRIPTOR.fields_by_name["matcher_tree"].number
_INPUT_FIELD = Matcher.MatcherTree.DESCRIPTOR.fields_by_name["input"].number
_EXACT_MATCH_MAP_FIELD = Matcher.MatcherTree.DESCRIPTOR.fields_by_name["exact_match_map"].number
_MAP_FIELD = Matcher.MatcherTree.MatchMap.DESCRIPTOR.fields_by_name["map"].number


_ON_MATCH_FIELD = ip_pb2.IPMatcher.IPRangeMatcher.DESCRIPTOR.fields_by_name["on_match"].number
_RANGE_MATCHERS_FIELD = ip_pb2.IPMatcher.DESCRIPTOR.fields_by_name["range_matchers"].number

#: Where the ``on_match`` of a matcher :func:`in_ranges` made is in its serialized form: field
#: numbers from the ``Matcher`` down (its tree's custom match, that one's ``Any``, its value:
#: the ``IPMatcher``, its one range matcher, its ``on_match``).
IN_RANGES_ON_MATCH: tuple[int, ...] = (
    Matcher.DESCRIPTOR.fields_by_name["matcher_tree"].number,
    Matcher.MatcherTree.DESCRIPTOR.fields_by_name["custom_match"].number,
    extension_pb2.TypedExtensionConfig.DESCRIPTOR.fields_by_name["typed_config"].number,
    any_pb2.Any.DESCRIPTOR.fields_by_name["value"].number,
    _RANGE_MATCHERS_FIELD,
    _ON_MATCH_FIELD,
)
#: Where a matcher's ``on_no_match`` leads to a matcher: field numbers from the ``Matcher`` down.
ON_NO_MATCH_MATCHER: tuple[int, ...] = (
    Matcher.DESCRIPTOR.fields_by_name["on_no_match"].number,
    OnMatch.DESCRIPTOR.fields_by_name["matcher"].number,
)


def regex(input_name: str, pattern: str, on_match: OnMatch, on_no_match: OnMatch | None = None) -> Matcher:
    """``on_match`` when the input's value matches ``pattern`` (RE2, the whole value), else
    ``on_no_match``: for what an exact map cannot say briefly, such as a range of ports."""
    predicate = Matcher.MatcherList.Predicate(
        single_predicate=Matcher.MatcherList.Predicate.SinglePredicate(
            input=_input(input_name),
            value_match=string_pb2.StringMatcher(
                safe_regex=regex_pb2.RegexMatcher(google_re2=regex_pb2.RegexMatcher.GoogleRE2(), regex=pattern)
            ),
        )
    )
    matcher = Matcher(
        matcher_list=Matcher.MatcherList(matchers=[Matcher.MatcherList.FieldMatcher(predicate=predicate, on_match=on_match)])
    )
    if on_no_match is not None:
        matcher.on_no_match.CopyFrom(on_no_match)
    return matcher
