"""Matcher pieces written on the wire format by hand are the generated classes' serialization.

The producer joins a node's plaintext listener from its parts: the matcher's map of the node's
pods is written from each pod's entry, kept (``matcher.serialized_exact``), not made as
messages for each change. Its bytes must be what serializing the whole matcher gives, or the
listener's content hash would differ from the one a whole build gives (and a whole build is
what every node's first config is)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zpilot.translators import inbound_guard, matcher

#: Keys alike in their beginnings (IPv4 and IPv6 addresses, "10.0.0.1" and "10.0.0.10"), and beyond ASCII.
_KEYS = st.text(alphabet=st.sampled_from("0123456789.:abf\u00e9\u4e2d\U0001f600"), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, st.text(min_size=1, max_size=20), min_size=1, max_size=40))
def test_an_exact_map_written_from_its_entries_is_the_messages_serialization(cases: dict[str, str]) -> None:
    whole = matcher.nested(matcher.exact("ip", {key: matcher.chain(name) for key, name in cases.items()}))
    assert matcher.serialized_exact("ip", cases) == matcher.serialized(whole)


def test_the_plaintext_map_of_pods_is_what_the_whole_matcher_holds() -> None:
    pods = {f"10.0.{i // 200}.{i % 200}": f"inbound_10.0.{i // 200}.{i % 200}" for i in range(250)}
    pods["fd00::1"] = "inbound_fd00::1"
    by_pod = matcher.nested(matcher.exact("ip", {ip: matcher.chain(name) for ip, name in pods.items()}))
    assert inbound_guard.serialized_by_pod(pods) == matcher.serialized(by_pod)
    assert inbound_guard.plaintext_matcher(pods).on_no_match == by_pod
    assert inbound_guard.serialized_by_pod({}) == b"" and not inbound_guard.plaintext_matcher({}).HasField("on_no_match")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_KEYS, st.text(min_size=1, max_size=20), min_size=1, max_size=40))
def test_what_a_map_selects_read_entry_by_entry_is_what_its_bytes_select(cases: dict[str, str]) -> None:
    """A map kept as its entries (``SerializedMap``, served as their join): the consistency check
    reads what it selects entry by entry, each entry once; that is what walking its bytes whole
    finds, and what the map was made to select."""
    from zpilot.translators import consistency

    kept = matcher.serialized_exact_map("ip", cases)
    assert bytes(kept) == matcher.serialized_exact("ip", cases)
    assert consistency._map_targets(kept) == consistency._on_match_targets(bytes(kept)) == frozenset(cases.values())


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200), st.text(max_size=300))
def test_a_map_entry_written_on_the_wire_format_is_the_messages_serialization(key: str, name: str) -> None:
    """Each entry (``matcher._exact_entry``: no message made) is the map's entry of ``chain(name)``
    serialized, for any key (a map key is never empty here: an address) and name (empty, beyond ASCII,
    long enough for two-byte lengths)."""
    from xds.type.matcher.v3 import matcher_pb2

    entry = matcher_pb2.Matcher.MatcherTree.MatchMap()
    entry.map[key].CopyFrom(matcher.chain(name))
    assert matcher._exact_entry.__wrapped__(key, name) == entry.SerializeToString(deterministic=True)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.text(max_size=200), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3))
def test_a_map_entry_s_outcome_read_by_index_is_what_its_fields_hold(key: str, name: str, edits) -> None:
    """The consistency check reads an entry's outcome by index when it has the shape ``_exact_entry``
    writes (``consistency._single_outcome``); whatever the bytes (edited at random), what it reads
    is what walking the entry's fields finds, and it reads nothing where that walk finds no single one."""
    from zpilot import protowire
    from zpilot.translators import consistency

    entry = bytearray(matcher._exact_entry.__wrapped__(key, name))
    for at, byte in edits:
        if entry:
            entry[at % len(entry)] = byte
    entry = bytes(entry)
    try:
        walked = [bytes(v) for item in protowire.length_delimited(entry, consistency._MAP_ENTRY)
                  for v in protowire.length_delimited(item, 2)]
    except ValueError:
        walked = None
    found = consistency._single_outcome(entry)
    assert found is None or walked == [found]
    if not edits and len(entry) < 1 << 14:
        assert found is not None
