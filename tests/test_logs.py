"""The two log formats: text as people read it, JSON lines with the fields people filter on."""

from __future__ import annotations

import io
import json
import logging

import pytest

from zpilot import logs


def emit(formatter: logging.Formatter, *args, exc: bool = False, **extra) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("zpilot.test-logs")
    logger.propagate, logger.level = False, logging.DEBUG
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception(*args, extra=extra)
        else:
            logger.warning(*args, extra=extra)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_line_has_the_record_and_its_fields():
    line = emit(logs.json_formatter(), "sent %s to node=%s", "CDS", "n1",
                node="n1", type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster", version="v1", nonce="7")
    assert line.count("\n") == 1
    record = json.loads(line)
    assert list(record)[:4] == ["time", "level", "logger", "message"]
    assert record["level"] == "WARNING" and record["logger"] == "zpilot.test-logs"
    assert record["message"] == "sent CDS to node=n1"
    assert (record["node"], record["version"], record["nonce"]) == ("n1", "v1", "7")
    assert record["type_url"].endswith("Cluster")
    assert record["time"].endswith("+00:00")  # ISO 8601, UTC


def test_json_fields_and_message_from_a_client_are_bounded():
    huge = "n" * 100_000
    record = json.loads(emit(logs.json_formatter(), "node=%s", huge, node=huge, nonce=huge))
    assert record["node"] == "n" * logs.MAX_FIELD_CHARS + "... (100000 characters)"
    assert record["nonce"] == record["node"]
    assert len(record["message"]) < logs.MAX_MESSAGE_CHARS + 30 and record["message"].endswith("(100005 characters)")


def test_json_keeps_the_traceback_on_one_line():
    line = emit(logs.json_formatter(), "failed", exc=True, node="n1")
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["level"] == "ERROR" and "ValueError: boom" in record["exc_info"]


def test_text_format_shows_the_message_alone_and_bounded():
    line = emit(logs.TextFormatter(), "sent %s", "CDS", node="n1", nonce="7")
    assert line.rstrip().endswith("WARNING zpilot.test-logs: sent CDS")
    line = emit(logs.TextFormatter(), "node=%s", "n" * 100_000)
    assert len(line) < logs.MAX_MESSAGE_CHARS + 100 and line.rstrip().endswith("(100005 characters)")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logs.configure(logging.INFO, "xml")


def test_a_count_of_one_is_said_in_the_singular():
    assert [logs.counted(n, "entry", "entries") for n in (0, 1, 2)] == ["0 entries", "1 entry", "2 entries"]
    assert [logs.counted(n, "rule") for n in (1, 3)] == ["1 rule", "3 rules"]
