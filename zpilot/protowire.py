"""The protobuf wire format, the little of it zpilot writes and reads by hand.

A message is its fields, each a tag and a payload, in any order; a length-delimited field (a
string, bytes or an embedded message) is the tag, the payload's length and the payload. So a
message can be written by joining the bytes of parts serialized before, and a field found in
serialized bytes without parsing the rest: what lets a control plane handle megabytes of config
as byte strings instead of rebuilding them (the server's responses, a large matcher shared by
every node's listener). Checked against the generated classes in the tests.
"""

from __future__ import annotations

from typing import Iterator

LENGTH_DELIMITED = 2
_VARINT, _FIXED64, _FIXED32 = 0, 1, 5


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer."""
    if value < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def field_header(number: int, size: int) -> bytes:
    """The tag and length of a length-delimited field of ``size`` bytes (its payload follows)."""
    return varint((number << 3) | LENGTH_DELIMITED) + varint(size)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or embedded message)."""
    return field_header(number, len(payload)) + payload


def field_str(number: int, text: str) -> bytes:
    """A string field; empty strings are omitted as proto3 does."""
    return field_bytes(number, text.encode("utf-8")) if text else b""


def _read_varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated or oversized varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def length_delimited(data: bytes | memoryview, number: int) -> Iterator[memoryview]:
    """The payloads of the length-delimited fields ``number`` of a serialized message, in order,
    as views into ``data`` (nothing is copied or parsed). Raises ValueError on malformed input."""
    view = memoryview(data)
    at = 0
    while at < len(view):
        key, at = _read_varint(view, at)
        wire_type = key & 7
        if wire_type == _VARINT:
            _, at = _read_varint(view, at)
        elif wire_type == _FIXED64:
            at += 8
        elif wire_type == _FIXED32:
            at += 4
        elif wire_type == LENGTH_DELIMITED:
            size, at = _read_varint(view, at)
            if at + size > len(view):
                raise ValueError("truncated length-delimited field")
            if key >> 3 == number:
                yield view[at : at + size]
            at += size
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if at != len(view):
        raise ValueError("truncated field")
