"""The ADS server's client limits as ``zpilot serve`` flags (zpilot/xds/limits.py).

Cheap to import, like every argument definition (``zpilot --help`` loads no gRPC): a flag left
out stays None and :func:`limits_from` leaves that field to ``Limits``' default, so the defaults
live in one place; a test checks that the help text states them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .options import whole_number

if TYPE_CHECKING:
    from ..xds.limits import Limits

#: flag -> (Limits field, default as the help text states it, what it bounds)
FLAGS = {
    "--max-request-bytes": ("max_request_bytes", "4194304, 4 MiB",
                            "largest ADS request; a delta reconnect reports ~100 bytes per resource it has"),
    "--max-resource-names": ("max_resource_names", "20000",
                             "resource names one request (or delta subscription) may name, and versions one"
                             " delta request may report"),
    "--max-streams": ("max_streams", "10000", "open ADS streams over all connections; more are refused"),
    "--max-streams-per-connection": ("max_streams_per_connection", "100",
                                     "concurrent ADS streams on one HTTP/2 connection; more wait"),
}


def _count(text: str) -> int:
    return whole_number(text, 1, 2**31 - 1)  # gRPC takes these as C ints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what one ADS client may ask (docs/xds-server.md#limits)")
    for flag, (_, default, what) in FLAGS.items():
        group.add_argument(flag, type=_count, metavar="N", help=f"{what} (default {default})")


def limits_from(args: argparse.Namespace) -> "Limits":
    from ..xds.limits import Limits

    given = {field: getattr(args, field) for field, _, _ in FLAGS.values() if getattr(args, field) is not None}
    return Limits(**given)
