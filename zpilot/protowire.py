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
    if 0 <= value < 0x80:  # one byte: most tags and lengths
        return _ONE_BYTE[value]
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


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


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


def _fields(view: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """Each top-level field of a serialized message: (number, wire type, where its tag starts,
    where its payload starts, where it ends). Raises ValueError on malformed input."""
    at, end = 0, len(view)
    while at < end:
        start = at
        key = view[at]  # a one-byte tag and length are the common case: read them here
        if key < 0x80:
            at += 1
        else:
            key, at = _read_varint(view, at)
        wire_type = key & 7
        payload = at
        if wire_type == LENGTH_DELIMITED:
            size = view[at] if at < end else 0x80
            if size < 0x80:
                payload = at + 1
            else:
                size, payload = _read_varint(view, at)
            at = payload + size
        elif wire_type == _VARINT:
            _, at = _read_varint(view, at)
        elif wire_type == _FIXED64:
            at += 8
        elif wire_type == _FIXED32:
            at += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if at > end:
            raise ValueError("truncated field")
        yield key >> 3, wire_type, start, payload, at


def length_delimited(data: bytes | memoryview, number: int) -> Iterator[memoryview]:
    """The payloads of the length-delimited fields ``number`` of a serialized message, in order,
    as views into ``data`` (nothing is copied or parsed). Raises ValueError on malformed input."""
    view = memoryview(data)
    for found, wire_type, _start, payload, end in _fields(view):
        if found == number and wire_type == LENGTH_DELIMITED:
            yield view[payload:end]


def leading_field_end(data: bytes, number: int) -> int:
    """Where a serialized message's first top-level field ends when it is the length-delimited
    field ``number``; 0 when the message starts with another field or is empty. Only that one
    field is read, whatever follows it. Raises ValueError when it is malformed."""
    for found, wire_type, _start, _payload, end in _fields(memoryview(data)):
        return end if found == number and wire_type == LENGTH_DELIMITED else 0
    return 0


def field_records(data: bytes, number: int) -> list[bytes]:
    """Each top-level field ``number`` of a serialized message whole (its tag, its length if it
    has one, its payload), in order: what joined back gives those fields of the message as they
    were. Raises ValueError on malformed input."""
    view = memoryview(data)
    return [bytes(view[start:end]) for start, end in field_bounds(view, number)]


def field_bounds(data: bytes | memoryview, number: int) -> list[tuple[int, int]]:
    """Where each top-level field ``number`` of a serialized message starts and ends (its tag
    included): :func:`field_records`' slices, without the bytes."""
    return [(start, end) for found, _wire_type, start, _payload, end in _fields(memoryview(data)) if found == number]


def insertion_point(data: bytes, number: int) -> int:
    """Where fields ``number`` appended to a message serialized in field-number order (as
    deterministic serialization writes it) go: before its first top-level field of a higher number."""
    for found, _wire_type, start, _payload, _end in _fields(memoryview(data)):
        if found > number:
            return start
    return len(data)


#: In :func:`spliced`, where the n-th new payload goes.
Hole = int


def spliced(data: bytes, paths: list[tuple[int, ...]], sizes: list[int]) -> list[bytes | Hole]:
    """``data`` with the payload of the length-delimited field at each of ``paths`` (field
    numbers from the top; at each level the first such field) replaced by one of ``sizes``
    bytes, every enclosing field's length rewritten for it: byte strings, and where the i-th new
    payload goes, ``i``. Joining them with the payloads in place of the holes is the message
    with those payloads, without the payloads ever being copied into it. Raises ValueError
    when a path leads nowhere."""
    out, _size = _spliced(memoryview(data), [(tuple(path), i) for i, path in enumerate(paths)], sizes)
    return out


def _spliced(
    view: memoryview, edits: list[tuple[tuple[int, ...], int]], sizes: list[int]
) -> tuple[list[bytes | Hole], int]:
    whole = [i for path, i in edits if not path]
    if whole:
        if len(edits) > 1:
            raise ValueError("a payload replaced whole and also inside")
        return [whole[0]], sizes[whole[0]]
    by_number: dict[int, list[tuple[tuple[int, ...], int]]] = {}
    for path, i in edits:
        by_number.setdefault(path[0], []).append((path[1:], i))
    out: list[bytes | Hole] = []
    size = 0
    last = 0
    for number, wire_type, start, payload, end in _fields(view):
        inner_edits = by_number.pop(number, None)
        if inner_edits is None:
            continue
        if wire_type != LENGTH_DELIMITED:
            raise ValueError(f"field {number} is not length-delimited")
        inner, inner_size = _spliced(view[payload:end], inner_edits, sizes)
        head = bytes(view[last:start]) + field_header(number, inner_size)
        out.append(head)
        out.extend(inner)
        size += len(head) + inner_size
        last = end
        if not by_number:
            break
    if by_number:
        raise ValueError(f"no field {min(by_number)} to put a payload in")
    out.append(bytes(view[last:]))
    return _merged(out), size + len(view) - last


def _merged(parts: list[bytes | Hole]) -> list[bytes | Hole]:
    """Adjacent byte strings joined, empty ones dropped."""
    out: list[bytes | Hole] = []
    for part in parts:
        if isinstance(part, bytes):
            if not part:
                continue
            if out and isinstance(out[-1], bytes):
                out[-1] += part
                continue
        out.append(part)
    return out
