"""Decoding an ADS request: only what the server reads, in time linear in its size, within limits.

The generated classes (``DiscoveryRequest``, ``DeltaDiscoveryRequest``) decode everything a client
sends, maps included (``initial_resource_versions``, the node's metadata ``Struct`` and whatever
Structs its values nest) into hash tables, and protobuf's runtime (upb) builds those at a cost
that grows faster than the input: 3.9 MiB holding 350,000 tiny ``initial_resource_versions``
entries took 5.6 s to decode, holding the GIL (a worker thread would not help), and every stream
of the server waited. So requests are decoded here with *view* messages: the wire format's field
numbers, only the fields the server reads, maps as plain repeated entries, and of the node's
metadata values only a string. What a view leaves out stays undecoded bytes (protobuf keeps
unknown fields as they are). Counts and lengths are then checked against
:class:`~zpilot.xds.limits.Limits` before anything is built from them, so the work a request
causes is bounded by the limits, whatever it contains.

A SotW ACK repeats the names of the request before it (an EDS ACK names 2,100 assignments at R,
a quarter of a millisecond to decode, once per stream per change). :func:`decode_sotw` looks
for the bytes of the names of the request before right where a request's names begin (after
its version, as Envoy and every protobuf library write it) and, when they are there, decodes
only what is around them (version, type URL, nonce, error: a hundred bytes) and takes that
request's names: no name is decoded, nor skipped field by field (upb skipping 2,100 names and
the copies around it took 30 us of the 65 an ACK cost the event loop at R).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from .. import contract
from ..logs import bounded
from ..protowire import field_bytes, field_str, leading_field_end
from .limits import NACK_MESSAGE_CHARS, Limits, explain

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _INT32, _MESSAGE = _F.TYPE_STRING, _F.TYPE_INT32, _F.TYPE_MESSAGE
_PACKAGE = "zpilot.xds.view"

# name -> [(field name, number, type, message type or None, repeated)], the numbers as in
# envoy/service/discovery/v3/discovery.proto, envoy/config/core/v3/base.proto,
# google/protobuf/struct.proto and google/rpc/status.proto.
_VIEWS: dict[str, list[tuple[str, int, int, str | None, bool]]] = {
    "Status": [("code", 1, _INT32, None, False), ("message", 2, _STRING, None, False)],
    "Value": [("string_value", 3, _STRING, None, False)],  # other kinds: left undecoded
    "MetadataField": [("key", 1, _STRING, None, False), ("value", 2, _MESSAGE, "Value", False)],
    "Metadata": [("fields", 1, _MESSAGE, "MetadataField", True)],  # a Struct's map, as entries
    "Node": [
        ("id", 1, _STRING, None, False),
        ("metadata", 3, _MESSAGE, "Metadata", False),
        ("user_agent_name", 6, _STRING, None, False),
        ("user_agent_version", 7, _STRING, None, False),
    ],
    "VersionEntry": [("key", 1, _STRING, None, False), ("value", 2, _STRING, None, False)],
    "DiscoveryRequest": [
        ("version_info", 1, _STRING, None, False),
        ("node", 2, _MESSAGE, "Node", False),
        ("resource_names", 3, _STRING, None, True),
        ("type_url", 4, _STRING, None, False),
        ("response_nonce", 5, _STRING, None, False),
        ("error_detail", 6, _MESSAGE, "Status", False),
    ],
    "DeltaDiscoveryRequest": [
        ("node", 1, _MESSAGE, "Node", False),
        ("type_url", 2, _STRING, None, False),
        ("resource_names_subscribe", 3, _STRING, None, True),
        ("resource_names_unsubscribe", 4, _STRING, None, True),
        ("initial_resource_versions", 5, _MESSAGE, "VersionEntry", True),  # a map, as entries
        ("response_nonce", 6, _STRING, None, False),
        ("error_detail", 7, _MESSAGE, "Status", False),
    ],
}


def _view_classes() -> dict[str, type]:
    proto = descriptor_pb2.FileDescriptorProto(name="zpilot/xds/request_view.proto", package=_PACKAGE,
                                               syntax="proto3")
    for name, fields in _VIEWS.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, message_type, repeated in fields:
            message.field.add(
                name=field_name, number=number, type=kind,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
                type_name=f".{_PACKAGE}.{message_type}" if message_type else None,
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in _VIEWS}


_CLASSES = _view_classes()
SOTW_VIEW = _CLASSES["DiscoveryRequest"]
DELTA_VIEW = _CLASSES["DeltaDiscoveryRequest"]
_SOTW_VERSION, _SOTW_TYPE_URL, _SOTW_NONCE, _SOTW_ERROR = 1, 4, 5, 6


class RequestError(Exception):
    """A request the server refuses; it ends its stream with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason  # metrics label, from a fixed set


@dataclass(frozen=True)
class ClientNode:
    """What the first request says about its client."""

    id: str
    #: The node-name metadata value (contract.NODE_NAME_METADATA): None when absent, "" when
    #: present but not a string.
    metadata_name: str | None
    user_agent: str  # e.g. ``envoy/1.40.0``, bounded: shown in logs and /debug/connections


@dataclass(frozen=True)
class Nack:
    code: int
    message: str  # the client's text, cut at NACK_MESSAGE_CHARS


@dataclass(frozen=True)
class Request:
    """One decoded request, SotW or delta (the fields of the other protocol stay empty)."""

    type_url: str
    nonce: str
    node: ClientNode | None = None  # set on a stream's first request (Envoy sends it only there)
    nack: Nack | None = None
    version_info: str = ""  # SotW: the last version the client accepted
    names: tuple[str, ...] = ()  # SotW: resource_names
    subscribe: tuple[str, ...] = ()  # delta
    unsubscribe: tuple[str, ...] = ()  # delta
    initial_versions: dict[str, str] = field(default_factory=dict)  # delta, first request of a type


def _too_many(what: str, count: int, limits: Limits) -> RequestError:
    return RequestError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{what}: {count} entries; {explain('max_resource_names', limits.max_resource_names)}",
        "too_many_names",
    )


def _check_lengths(what: str, values: Iterable[str], limits: Limits) -> None:
    longest = max(map(len, values), default=0)  # an EDS request names thousands: no Python loop
    if longest > limits.max_name_length:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{what} of {longest} characters; {explain('max_name_length', limits.max_name_length)}",
            "too_long",
        )


def _node(view: Any, limits: Limits) -> ClientNode:
    _check_lengths("node id", [view.id], limits)
    fields = view.metadata.fields
    if len(fields) > limits.max_node_metadata_fields:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node metadata has {len(fields)} fields; "
            f"{explain('max_node_metadata_fields', limits.max_node_metadata_fields)}",
            "too_long",
        )
    name = None
    for entry in fields:  # a map's last entry of a key wins, as in protobuf
        if entry.key == contract.NODE_NAME_METADATA:
            name = entry.value.string_value
    agent = "/".join(part for part in (view.user_agent_name, view.user_agent_version) if part)
    return ClientNode(id=view.id, metadata_name=name, user_agent=bounded(agent, 128))


def _parse(view_class: Any, raw: bytes, kind: str) -> Any:
    try:
        return view_class.FromString(raw)
    except (DecodeError, ValueError, TypeError) as exc:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"cannot parse envoy.service.discovery.v3.{kind}: {bounded(exc, 200)}",
                           "unparseable") from exc


def _head(view: Any, limits: Limits) -> tuple[ClientNode | None, Nack | None]:
    _check_lengths("type URL, nonce or version", [view.type_url, view.response_nonce,
                                                   getattr(view, "version_info", "")], limits)
    node = _node(view.node, limits) if view.HasField("node") else None
    nack = None
    if view.HasField("error_detail"):
        nack = Nack(view.error_detail.code, bounded(view.error_detail.message, NACK_MESSAGE_CHARS))
    return node, nack


@dataclass(frozen=True)
class NamesBytes:
    """The bytes that held a SotW request's names, and the names decoded from them."""

    raw: bytes
    names: tuple[str, ...]


def _names_bytes(raw: bytes, view: Any) -> bytes | None:
    """Where the names of a request without a node are, when it is written as Envoy (and every
    protobuf library) writes it: its version first, then its names, then type URL, nonce and
    error; None otherwise (then the next request is decoded as a whole)."""
    front = field_str(_SOTW_VERSION, view.version_info)
    back = field_str(_SOTW_TYPE_URL, view.type_url) + field_str(_SOTW_NONCE, view.response_nonce)
    if view.HasField("error_detail"):
        back += field_bytes(_SOTW_ERROR, view.error_detail.SerializeToString())
    if len(front) + len(back) > len(raw) or not raw.startswith(front) or not raw.endswith(back):
        return None
    # Every field-3 entry is in between (the view parsed the rest), so the same bytes there
    # are the same names.
    return raw[len(front) : len(raw) - len(back)]


def _repeating(raw: bytes, limits: Limits, before: Mapping[str, NamesBytes]) -> tuple[Request, NamesBytes] | None:
    """``raw`` read without its names when they are the bytes of ``before``'s names of its type,
    right where a request's names begin (after its version, if any): what is around them is
    decoded, and the request has those names when no other name (and no node) is in it. None
    when it is not such a request (it is then decoded as a whole, which also says what is wrong
    with a malformed one)."""
    try:
        start = leading_field_end(raw, _SOTW_VERSION)
    except ValueError:
        return None
    for type_url, previous in before.items():
        names = previous.raw
        if not names or not raw.startswith(names, start):  # a memcmp: nothing copied or parsed
            continue
        # The names are whole fields starting on a field's boundary, so taking them out leaves
        # the request's other fields, in their order (the last of a repeated field still wins).
        try:
            view = SOTW_VIEW.FromString(raw[:start] + raw[start + len(names):])
        except (DecodeError, ValueError, TypeError):
            return None
        if view.type_url != type_url or view.resource_names or view.HasField("node"):
            continue  # another type's names, or more names than these: decoded as a whole
        node, nack = _head(view, limits)
        return Request(type_url=type_url, nonce=view.response_nonce, nack=nack, version_info=view.version_info,
                       names=previous.names), previous
    return None


def decode_sotw(
    raw: bytes, limits: Limits, before: Mapping[str, NamesBytes]
) -> tuple[Request, NamesBytes | None]:
    """A SotW request, and its names with their bytes (to keep in ``before`` by type URL for the
    next request). When its names are in the same bytes as those of ``before`` of its type (an
    ACK), they are those names, not decoded again."""
    repeating = _repeating(raw, limits, before) if before else None
    if repeating is not None:
        return repeating
    view = _parse(SOTW_VIEW, raw, "DiscoveryRequest")
    request = _sotw(view, limits)
    where = None if request.node is not None else _names_bytes(raw, view)
    return request, None if where is None else NamesBytes(where, request.names)


def _sotw(view: Any, limits: Limits) -> Request:
    node, nack = _head(view, limits)
    if len(view.resource_names) > limits.max_resource_names:
        raise _too_many("resource_names", len(view.resource_names), limits)
    names = tuple(view.resource_names)  # each name made a Python string once, not again to check it
    _check_lengths("a resource name", names, limits)
    return Request(type_url=view.type_url, nonce=view.response_nonce, node=node, nack=nack,
                   version_info=view.version_info, names=names)


def decode(raw: bytes, *, delta: bool, limits: Limits) -> Request:
    """A request of the stream's protocol, or :class:`RequestError` saying why it is refused."""
    if not delta:
        return _sotw(_parse(SOTW_VIEW, raw, "DiscoveryRequest"), limits)
    view = _parse(DELTA_VIEW, raw, "DeltaDiscoveryRequest")
    node, nack = _head(view, limits)
    named = len(view.resource_names_subscribe) + len(view.resource_names_unsubscribe)
    if named > limits.max_resource_names:
        raise _too_many("resource_names_subscribe and _unsubscribe", named, limits)
    if len(view.initial_resource_versions) > limits.max_resource_names:
        raise _too_many("initial_resource_versions", len(view.initial_resource_versions), limits)
    _check_lengths("a resource name", view.resource_names_subscribe, limits)
    _check_lengths("a resource name", view.resource_names_unsubscribe, limits)
    initial = {entry.key: entry.value for entry in view.initial_resource_versions}
    _check_lengths("a resource name or version in initial_resource_versions", [*initial, *initial.values()],
                   limits)
    return Request(type_url=view.type_url, nonce=view.response_nonce, node=node, nack=nack,
                   subscribe=tuple(view.resource_names_subscribe),
                   unsubscribe=tuple(view.resource_names_unsubscribe), initial_versions=initial)
