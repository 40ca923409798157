"""The ``zpilot`` command: one sub-command per job, each defined next to the code it runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Modules that each define ``register(subparsers)``; the sub-command sets ``func`` to run.
COMMAND_MODULES = (
    "zpilot.commands.render",
    "zpilot.commands.bootstrap",
    "zpilot.cni.cli",
    "zpilot.commands.serve",
    "zpilot.commands.diff",
    "zpilot.commands.demo",
    "zpilot.commands.explain",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zpilot", description="A control plane for Envoy-based ztunnels.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
