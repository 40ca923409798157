"""The ``zpilot`` command: one sub-command per job, each defined next to the code it runs.

Building the parser imports only the argument definitions (argparse and the standard library):
each command imports its work when it runs, so ``zpilot --help`` does not load gRPC, protobuf
or the Envoy API (tests/test_cli_startup.py checks which modules a ``--help`` loads).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import logs

#: Modules that each define ``register(subparsers)``; the sub-command sets ``func`` to run.
COMMAND_MODULES = (
    "zpilot.commands.render",
    "zpilot.commands.bootstrap",
    "zpilot.commands.revoke",
    "zpilot.cni.cli",
    "zpilot.commands.serve",
    "zpilot.commands.diff",
    "zpilot.commands.demo",
    "zpilot.commands.explain",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zpilot", description="A control plane for Envoy-based ztunnels.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--log-format", choices=logs.FORMATS, default="text",
                        help="text (default), or json: one object per line with time, level, logger, message"
                             f" and the fields to filter on ({', '.join(logs.FIELDS)})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logs.configure(max(level, logging.DEBUG), args.log_format)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
