"""The data-path limit flags that ``zpilot serve`` and ``zpilot render`` share (translators/limits.py).

Cheap to import, like every argument definition (``zpilot --help`` loads no protobuf): a flag
left out stays None and :func:`limits_from` leaves that field to ``DataPathLimits``' default, so
the defaults live in one place; tests/translators/test_limits.py checks the help text states them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .. import contract
from .options import seconds, whole_number

if TYPE_CHECKING:
    from ..translators.limits import DataPathLimits

#: The defaults of DataPathLimits, as the help text states them.
HELP_DEFAULTS = {"max_connections": "100000", "max_pending_requests": "100000", "max_requests": "100000",
                 "idle_timeout": "3600"}


def _threshold(text: str) -> int:
    from ..translators.limits import MAX_THRESHOLD

    return whole_number(text, 1, MAX_THRESHOLD)


def _seconds(text: str) -> float:
    from ..translators.limits import MAX_IDLE_TIMEOUT

    return seconds(text, maximum=MAX_IDLE_TIMEOUT)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data-path limits of every ztunnel (docs/operations.md)")
    group.add_argument(
        "--max-connections", type=_threshold,
        help=f"circuit breaker: concurrent connections per cluster (default {HELP_DEFAULTS['max_connections']})",
    )
    group.add_argument(
        "--max-pending-requests", type=_threshold,
        help="circuit breaker: tunnel streams waiting for a connection, per cluster"
        f" (default {HELP_DEFAULTS['max_pending_requests']})",
    )
    group.add_argument(
        "--max-requests", type=_threshold,
        help="circuit breaker: concurrent tunnel streams (tunnelled connections) per cluster"
        f" (default {HELP_DEFAULTS['max_requests']})",
    )
    group.add_argument(
        "--idle-timeout", type=_seconds, metavar="SECONDS",
        help="how long a proxied connection or tunnel stream may sit idle; 0 = never closed for idleness"
        f" (default {HELP_DEFAULTS['idle_timeout']})",
    )


def _port(text: str) -> int:
    """A port something listens on (not 0: that is no port a tunnel could be refused)."""
    return whole_number(text, 1, 65535, "a port number")


def add_guard_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inbound guard (docs/security.md)")
    group.add_argument(
        "--ztunnel-admin-port", type=_port, metavar="PORT",
        help="the ztunnels' Envoy admin port (zpilot bootstrap --admin-port): a tunnel to it is refused, as to"
        f" {contract.ZTUNNEL_PORT_RANGE.start}-{contract.ZTUNNEL_PORT_RANGE.stop - 1} (default {contract.PORT_ADMIN})",
    )


def guard_options(args: argparse.Namespace) -> dict[str, int]:
    """TranslateOptions fields the guard flags set (none left out: TranslateOptions has the defaults)."""
    return {} if args.ztunnel_admin_port is None else {"admin_port": args.ztunnel_admin_port}


def limits_from(args: argparse.Namespace) -> "DataPathLimits":
    from ..translators.limits import DataPathLimits

    given = {
        name: getattr(args, name)
        for name in ("max_connections", "max_pending_requests", "max_requests", "idle_timeout")
        if getattr(args, name) is not None
    }
    return DataPathLimits(**given)
