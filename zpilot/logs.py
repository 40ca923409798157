"""How the process logs: the text lines people read, or one JSON object per line for log pipelines.

Log calls about one stream, resource type or object pass what people filter on as ``extra=``
(the names in :data:`FIELDS`). The text format shows the message as it always did (the message
already says ``node=... version=...``); the JSON format adds each extra as a field of its own, so
``jq 'select(.node == "gke-...")'`` works without parsing messages.

Many of these values come from a client (a node name, a nonce, a NACK's text): every field is cut
to a bounded length here, whatever the caller passed, so one hostile client cannot write
megabytes into the log.
"""

from __future__ import annotations

import logging
from typing import Any

#: The ``extra=`` names log calls use; other extras (a library's own) are kept too, also bounded.
FIELDS = ("node", "conn", "peer", "type_url", "version", "nonce", "object")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Longest field value in a JSON line (a node name is at most 253 characters in Kubernetes).
MAX_FIELD_CHARS = 512
#: Longest message (or traceback) in a JSON line; a NACK's text is already cut to 4096 at its source.
MAX_MESSAGE_CHARS = 16384


def counted(number: int, noun: str, plural: str = "") -> str:
    """``number`` and ``noun``, in the plural (``plural``, or ``noun`` + "s") unless it is one:
    "1 entry", "2 entries", not "1 entries"."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def bounded(value: Any, limit: int = MAX_FIELD_CHARS) -> Any:
    """``value`` with any text longer than ``limit`` cut, saying how long it was."""
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class TextFormatter(logging.Formatter):
    """The text format, with the message bounded as in JSON (it may quote what a client sent)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = bounded(record.message, MAX_MESSAGE_CHARS)
        return super().formatMessage(record)


def json_formatter() -> logging.Formatter:
    """A formatter writing ``{"time", "level", "logger", "message", <extras>...}`` per record.

    Built on python-json-logger (it merges a record's extras, formats exceptions and times, and
    serializes anything JSON cannot as text); what it lacks is the length bound, added here.
    """
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    class BoundedJsonFormatter(JsonFormatter):
        def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
            out = {"time": log_data.pop("time", None)}  # first, as people read a line left to right
            for key, value in log_data.items():
                long_text = key in ("message", "exc_info", "stack_info")
                out[key] = bounded(value, MAX_MESSAGE_CHARS if long_text else MAX_FIELD_CHARS)
            return out

    return BoundedJsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        # uvicorn adds a copy of each message with terminal colour codes
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


def configure(level: int, log_format: str = "text") -> None:
    """Log to stderr at ``level`` in ``log_format`` (``text`` or ``json``).

    Like :func:`logging.basicConfig`, does nothing when the root logger already has a handler
    (a test runner's, or an embedding program's).
    """
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (known: {', '.join(FORMATS)})")
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler])
