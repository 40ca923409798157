"""``zpilot explain``: the hop-by-hop path of a connection, computed from the config zpilot
generates and the CNI plan, with no traffic and no cluster access."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import add_layout_argument, add_root_namespace, add_trust_domain


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="the hop-by-hop path of a connection, from generated config and CNI plan")
    p.add_argument("--manifests", required=True, type=Path, help="directory (or file) of Kubernetes YAML")
    p.add_argument("--from", dest="source", required=True, metavar="POD",
                   help="source pod: namespace/name, name, name prefix (sleep) or IP")
    p.add_argument("--to", dest="target", required=True, metavar="HOST:PORT", help="destination and port: a pod IP, a service VIP, or a service name (productpage.default)")
    add_trust_domain(p)
    add_layout_argument(p, "outbound layout the ztunnels run (as zpilot serve --layout)")
    add_root_namespace(p)
    p.add_argument("--json", action="store_true", help="print hops and facts as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..explain import ExplainError, load_mesh, render
    from ..explain import explain as explain_path
    from ..model.problems import Severity

    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        print(f"zpilot explain: --to {args.target!r} is not HOST:PORT", file=sys.stderr)
        return 2
    if not args.manifests.exists():
        print(f"zpilot explain: {args.manifests} does not exist", file=sys.stderr)
        return 2
    try:
        mesh = load_mesh(args.manifests, trust_domain=args.trust_domain, layout=args.layout,
                         root_namespace=args.root_namespace)
        # what the input got wrong can be why a pod or path is missing (information is left out:
        # render lists it, and pods left out of the mesh say so in the path itself)
        for problem in mesh.index.problems:
            if problem.severity is not Severity.INFO:
                print(problem, file=sys.stderr)
        paths = explain_path(mesh, args.source, host, int(port))
    except ExplainError as exc:
        print(f"zpilot explain: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump([{"source": e.source, "target": e.target, "outcome": e.outcome, "facts": e.facts,
                    "hops": [{"where": h.where, "what": h.what, "details": h.details} for h in e.hops]}
                   for e in paths], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(paths))
    return 0
