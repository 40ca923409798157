"""``zpilot demo``: the article's Figure 1, live. Builds two nodes, their pods and ztunnels in
network namespaces, sends sleep -> productpage through the mesh, prints every hop with the
values observed, compares them with ``zpilot explain``, and removes everything again."""

from __future__ import annotations

import argparse
import sys

from .options import add_layout_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build a two-node world in network namespaces and show a request's path (root)")
    p.add_argument("--keep-logs", action="store_true", help="keep the world's logs and manifests (path printed)")
    add_layout_argument(p, "outbound layout of the ztunnels")
    p.add_argument("--scenario", choices=("path", "policy"), default="path",
                   help="path: sleep -> productpage hop by hop (default); policy: an AuthorizationPolicy applied,"
                        " an allowed and a refused request hop by hop, with the refusing ztunnel's verdict")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..world import prerequisites
    from ..world.errors import WorldError

    missing = prerequisites.missing_prerequisites()
    if missing:
        print("zpilot demo cannot run here; it needs:", file=sys.stderr)
        for item in missing:
            print(f"  - {item}", file=sys.stderr)
        return 2
    from ..world.demo import demo

    try:
        scenario = None
        if getattr(args, "scenario", "path") == "policy":
            from ..world.demo_policy import run_policy_scenario as scenario
        return demo(keep_workdir=args.keep_logs, layout=args.layout, scenario=scenario)
    except WorldError as exc:
        print(f"zpilot demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zpilot demo: interrupted; the world was torn down", file=sys.stderr)
        return 130
