"""Protobuf wire encoding for the few envelopes the server assembles from cached bytes.

A node's resources are serialized once, when the producer caches them; each response is then
the concatenation of those bytes with a handful of small fields (nonce, version, type URL).
Protobuf allows a message to be written as its fields in any order, each as tag + payload, so
joining pre-encoded fields is a valid encoding. This is what made serving a large node cheap
(scalable-layout-notes.md: joining cached fragments was 15-20x faster than re-serializing).
The envelope layouts are checked against the generated classes in tests/xds/test_wire.py.
"""

from __future__ import annotations

import functools
from typing import Iterable

from ..protowire import LENGTH_DELIMITED as _LENGTH_DELIMITED
from ..protowire import field_bytes, field_str, varint

__all__ = ["field_bytes", "field_str", "varint"]


# google.protobuf.Any
_ANY_TYPE_URL = 1
_ANY_VALUE = 2


def any_bytes(type_url: str, value: bytes) -> bytes:
    """A serialized ``google.protobuf.Any`` wrapping an already serialized message."""
    return field_str(_ANY_TYPE_URL, type_url) + field_bytes(_ANY_VALUE, value)


# envoy.service.discovery.v3.DiscoveryResponse
_R_VERSION_INFO, _R_RESOURCES, _R_TYPE_URL, _R_NONCE, _R_CONTROL_PLANE = 1, 2, 4, 5, 6
# envoy.service.discovery.v3.DeltaDiscoveryResponse
_D_SYSTEM_VERSION, _D_RESOURCES, _D_TYPE_URL, _D_NONCE, _D_REMOVED, _D_CONTROL_PLANE = 1, 2, 4, 5, 6, 7
# envoy.service.discovery.v3.Resource
_RES_VERSION, _RES_RESOURCE, _RES_NAME = 1, 2, 3
# envoy.config.core.v3.ControlPlane
_CP_IDENTIFIER = 1


def control_plane(identifier: str) -> bytes:
    return field_bytes(_CP_IDENTIFIER, identifier.encode("utf-8"))


def response_resource(any_value: bytes) -> bytes:
    """One entry of ``DiscoveryResponse.resources`` (tag, length, the serialized ``Any``), cacheable."""
    return field_bytes(_R_RESOURCES, any_value)


def response_resource_header(type_url: str, value_size: int) -> tuple[int, bytes]:
    """What goes in front of a serialized message of ``value_size`` bytes to make it a
    :func:`response_resource` (the entry's tag and length, the ``Any``'s type URL and value
    header), and the length of the entry's own tag and length within it."""
    type_field = field_str(_ANY_TYPE_URL, type_url)
    value_header = varint((_ANY_VALUE << 3) | _LENGTH_DELIMITED) + varint(value_size)
    any_length = len(type_field) + len(value_header) + value_size
    header = varint((_R_RESOURCES << 3) | _LENGTH_DELIMITED) + varint(any_length)
    return len(header), header + type_field + value_header


def discovery_response(
    *, version_info: str, resources: Iterable[bytes], type_url: str, nonce: str, control_plane_id: str = ""
) -> bytes:
    """A serialized DiscoveryResponse; ``resources`` are serialized ``Any`` messages."""
    return discovery_response_from_entries(
        version_info=version_info,
        entries=b"".join(response_resource(r) for r in resources),
        type_url=type_url,
        nonce=nonce,
        control_plane_id=control_plane_id,
    )


def discovery_response_from_entries(
    *, version_info: str, entries: bytes, type_url: str, nonce: str, control_plane_id: str = ""
) -> bytes:
    """A serialized DiscoveryResponse from pre-encoded :func:`response_resource` entries (joined)."""
    return b"".join(discovery_response_chunks(version_info=version_info, entries=[entries], type_url=type_url,
                                              nonce=nonce, control_plane_id=control_plane_id))


@functools.lru_cache(maxsize=64)
def _response_field(number: int, text: str) -> bytes:
    """A string field of DiscoveryResponse whose value a change's responses share (its version,
    type URL, the control plane's identifier): encoded once, not for each of a hundred streams.
    (DeltaDiscoveryResponse's type URL is the same field: number 4, a string.)"""
    if number == _R_CONTROL_PLANE:
        return field_bytes(_R_CONTROL_PLANE, control_plane(text)) if text else b""
    return field_str(number, text)


def discovery_response_chunks(
    *, version_info: str, entries: Iterable[bytes], type_url: str, nonce: str, control_plane_id: str = ""
) -> list[bytes]:
    """A DiscoveryResponse as the byte strings that, joined, serialize it: the cached entries
    (:func:`response_resource`, whole or in parts) as they are, so the response is copied once,
    when it is joined to be written."""
    chunks = [_response_field(_R_VERSION_INFO, version_info), *entries]
    chunks.append(_response_field(_R_TYPE_URL, type_url))
    chunks.append(field_str(_R_NONCE, nonce))
    if control_plane_id:
        chunks.append(_response_field(_R_CONTROL_PLANE, control_plane_id))
    return chunks


def delta_resource(name: str, version: str, any_value: bytes) -> bytes:
    """A serialized ``Resource`` of a DeltaDiscoveryResponse; ``any_value`` is a serialized ``Any``."""
    return field_str(_RES_NAME, name) + field_str(_RES_VERSION, version) + field_bytes(_RES_RESOURCE, any_value)


def delta_response_resource(name: str, version: str, any_value: bytes) -> bytes:
    """One entry of ``DeltaDiscoveryResponse.resources`` (tag, length, the ``Resource``), cacheable."""
    return field_bytes(_D_RESOURCES, delta_resource(name, version, any_value))


def delta_response_resource_header(name: str, version: str, any_size: int) -> bytes:
    """What goes in front of a serialized ``Any`` of ``any_size`` bytes to make it a
    :func:`delta_response_resource`."""
    head = field_str(_RES_NAME, name) + field_str(_RES_VERSION, version)
    head += varint((_RES_RESOURCE << 3) | _LENGTH_DELIMITED) + varint(any_size)
    return varint((_D_RESOURCES << 3) | _LENGTH_DELIMITED) + varint(len(head) + any_size) + head


def delta_discovery_response(
    *,
    system_version_info: str,
    resources: Iterable[bytes],
    removed: Iterable[str],
    type_url: str,
    nonce: str,
    control_plane_id: str = "",
) -> bytes:
    """A serialized DeltaDiscoveryResponse; ``resources`` are serialized ``Resource`` messages."""
    return delta_discovery_response_from_entries(
        system_version_info=system_version_info,
        entries=b"".join(field_bytes(_D_RESOURCES, r) for r in resources),
        removed=removed,
        type_url=type_url,
        nonce=nonce,
        control_plane_id=control_plane_id,
    )


def delta_discovery_response_from_entries(
    *,
    system_version_info: str,
    entries: bytes,
    removed: Iterable[str],
    type_url: str,
    nonce: str,
    control_plane_id: str = "",
) -> bytes:
    """A serialized DeltaDiscoveryResponse from pre-encoded :func:`delta_response_resource` entries."""
    return b"".join(delta_discovery_response_chunks(
        system_version_info=system_version_info, entries=[entries], removed=removed, type_url=type_url, nonce=nonce,
        control_plane_id=control_plane_id))


def delta_discovery_response_chunks(
    *,
    system_version_info: str,
    entries: Iterable[bytes],
    removed: Iterable[str],
    type_url: str,
    nonce: str,
    control_plane_id: str = "",
) -> list[bytes]:
    """A DeltaDiscoveryResponse as byte strings that, joined, serialize it (as
    :func:`discovery_response_chunks`)."""
    chunks = [field_str(_D_SYSTEM_VERSION, system_version_info), *entries]
    chunks.append(_response_field(_D_TYPE_URL, type_url))
    chunks.append(field_str(_D_NONCE, nonce))
    chunks.extend(field_bytes(_D_REMOVED, name.encode("utf-8")) for name in removed)
    if control_plane_id:
        chunks.append(_delta_control_plane(control_plane_id))
    return chunks


@functools.lru_cache(maxsize=8)
def _delta_control_plane(identifier: str) -> bytes:
    """DeltaDiscoveryResponse's control_plane field, the same in every response: encoded once."""
    return field_bytes(_D_CONTROL_PLANE, control_plane(identifier))
