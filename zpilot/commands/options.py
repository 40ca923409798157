"""Argument types shared by sub-commands, cheap to import: ``zpilot --help`` must not load the
translators (protobuf, the Envoy API) just to list their choices, so values are checked when
the command line is parsed, not when the parser is built."""

from __future__ import annotations

import argparse


def layout_name(text: str) -> str:
    """``--layout``: the name of a registered outbound layout (see ``zpilot.translators.layout``)."""
    from ..translators import known_layouts

    if text not in known_layouts():
        raise argparse.ArgumentTypeError(f"unknown outbound layout {text!r} (known: {', '.join(known_layouts())})")
    return text
