"""``zpilot serve``: the control plane. Watches a manifest directory and serves every node's
ztunnel its config over ADS (gRPC, port 15010), with Prometheus metrics on port 15020 and the
debug API on port 15014 (localhost).

Only the arguments are handled here; the process is :mod:`zpilot.runtime.serve`.
See docs/xds-server.md for pointing an Envoy at it and for the debug endpoints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .options import layout_name

log = logging.getLogger("zpilot.serve")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve ztunnel config over ADS from a manifest directory (watched)")
    p.add_argument("--manifests", required=True, type=Path, help="directory (or file) of Kubernetes YAML")
    p.add_argument("--xds-address", default="0.0.0.0", help="ADS listen address, or unix:/path (default 0.0.0.0)")
    p.add_argument("--xds-port", type=int, default=15010, help="ADS port (default 15010; 0 = any free port)")
    p.add_argument("--debug-address", default="127.0.0.1",
                   help="debug API listen address, or unix:/path (default 127.0.0.1)")
    p.add_argument("--debug-port", type=int, default=15014, help="debug API port (default 15014)")
    p.add_argument("--metrics-address", default="0.0.0.0",
                   help="Prometheus /metrics listen address, or unix:/path (default 0.0.0.0)")
    p.add_argument("--metrics-port", type=int, default=15020, help="/metrics port (default 15020; 0 = any free port)")
    p.add_argument("--layout", default="article", type=layout_name, help="outbound layout (default article)")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--bind-address", default="0.0.0.0", help="address the ztunnel listeners bind to")
    p.add_argument("--ca-dir", type=Path, help="CA directory (created on first start); default: in memory")
    p.add_argument("--ca-cert", type=Path, help="a CA you provide: signing certificate (then its chain), PEM")
    p.add_argument("--ca-key", type=Path, help="the private key of --ca-cert, PEM")
    p.add_argument("--ca-root", type=Path, help="the root of --ca-cert's chain, if --ca-cert lacks it")
    p.add_argument("--cert-lifetime", type=float, default=24 * 3600.0,
                   help="workload certificate lifetime, seconds (86400)")
    p.add_argument("--debounce-quiet", type=float, default=0.1,
                   help="seconds a change must be quiet (a file unchanged) before it is read and pushed (0.1)")
    p.add_argument("--debounce-max", type=float, default=10.0,
                   help="longest a change waits for quiet (10)")
    p.add_argument("--max-connection-age", type=float, default=1800.0,
                   help="seconds before a stream is recycled (1800)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..kube.directory import ManifestDirectorySource
    from ..runtime.control_plane import DebugOptions
    from ..runtime.serve import ServeRuntime, ServeSettings, serve_until_signalled
    from ..translators import TranslateOptions
    from ..xds.metrics_server import MetricsOptions
    from ..xds.server import ServerOptions

    if not args.manifests.exists():
        print(f"zpilot serve: {args.manifests} does not exist", file=sys.stderr)
        return 2
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("zpilot").setLevel(logging.INFO)
    settings = ServeSettings(
        xds=ServerOptions(host=args.xds_address, port=args.xds_port,
                          max_connection_age_ms=int(args.max_connection_age * 1000)),
        debug=DebugOptions(host=args.debug_address, port=args.debug_port),
        metrics=MetricsOptions(host=args.metrics_address, port=args.metrics_port),
        translate=TranslateOptions(trust_domain=args.trust_domain, layout=args.layout, bind_address=args.bind_address),
        ca_dir=args.ca_dir, ca_cert=args.ca_cert, ca_key=args.ca_key, ca_root=args.ca_root,
        cert_lifetime=args.cert_lifetime,
    )
    source = ManifestDirectorySource(args.manifests, quiet=args.debounce_quiet, max_delay=args.debounce_max)
    return asyncio.run(serve_until_signalled(ServeRuntime(settings, source)))
