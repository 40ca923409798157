"""``zpilot serve``: the control plane. Watches a manifest directory and serves every node's
ztunnel its config over ADS (gRPC), with Prometheus metrics and the debug API (localhost) on
ports of their own (the contract's ``PORT_XDS``, ``PORT_METRICS`` and ``PORT_DEBUG``).

See docs/xds-server.md for pointing an Envoy at it and for the debug endpoints.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .. import contract
from . import data_path_flags
from .options import layout_name

if TYPE_CHECKING:  # the command's work is imported when it runs: `zpilot --help` stays fast
    from ..model.index import MeshIndex

log = logging.getLogger("zpilot.serve")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve ztunnel config over ADS from a manifest directory (watched)")
    p.add_argument("--manifests", required=True, type=Path, help="directory (or file) of Kubernetes YAML")
    p.add_argument("--xds-address", default="0.0.0.0", help="ADS listen address, or unix:/path (default 0.0.0.0)")
    p.add_argument("--xds-port", type=int, default=contract.PORT_XDS,
                   help=f"ADS port (default {contract.PORT_XDS}; 0 = any free port)")
    p.add_argument("--debug-address", default="127.0.0.1",
                   help="debug API listen address, or unix:/path (default 127.0.0.1)")
    p.add_argument("--debug-port", type=int, default=contract.PORT_DEBUG,
                   help=f"debug API port (default {contract.PORT_DEBUG})")
    p.add_argument("--metrics-address", default="0.0.0.0",
                   help="Prometheus /metrics listen address, or unix:/path (default 0.0.0.0)")
    p.add_argument("--metrics-port", type=int, default=contract.PORT_METRICS,
                   help=f"/metrics port (default {contract.PORT_METRICS}; 0 = any free port)")
    p.add_argument("--layout", default="article", type=layout_name, help="outbound layout (default article)")
    p.add_argument("--trust-domain", default=contract.DEFAULT_TRUST_DOMAIN)
    p.add_argument("--bind-address", default="0.0.0.0", help="address the ztunnel listeners bind to")
    p.add_argument("--ca-dir", type=Path, help="CA directory (created on first start); default: in memory")
    p.add_argument("--ca-cert", type=Path, help="a CA you provide: signing certificate (then its chain), PEM")
    p.add_argument("--ca-key", type=Path, help="the private key of --ca-cert, PEM")
    p.add_argument("--ca-root", type=Path, help="the root of --ca-cert's chain, if --ca-cert lacks it")
    p.add_argument("--cert-lifetime", type=float, default=24 * 3600.0, help="workload certificate lifetime, seconds")
    p.add_argument("--debounce-quiet", type=float, default=0.1, help="seconds of quiet before a push (0.1)")
    p.add_argument("--debounce-max", type=float, default=10.0, help="longest a change waits for quiet (10)")
    p.add_argument("--max-connection-age", type=float, default=1800.0, help="seconds before a stream is recycled")
    data_path_flags.add_arguments(p)
    p.set_defaults(func=run)


def load_index(root: Path) -> MeshIndex:
    from ..kube.manifests import load_manifests
    from ..model.index import MeshIndex

    manifests = load_manifests(root)
    return MeshIndex.build(manifests.cluster, manifests.problems)


class ProblemLog:
    """Logs input problems once: on every reload only the new ones, and which ones were resolved."""

    def __init__(self) -> None:
        self._seen: set = set()

    def report(self, index: MeshIndex) -> None:
        from ..model.problems import Problems

        current = set(index.problems)
        new = [p for p in index.problems if p not in self._seen]
        fresh = Problems()
        fresh.extend(new)
        fresh.log_all(log)
        for problem in sorted(self._seen - current, key=str):
            log.info("resolved: %s", problem)
        self._seen = current


async def serve(args: argparse.Namespace) -> int:
    import asyncio

    from ..certs import CertificateAuthority, CertificateAuthorityError, IdentityCache
    from ..kube.directory_watch import DirectoryWatch
    from ..translators import TranslateOptions, translate_node
    from ..xds.control_plane import ControlPlane, DebugOptions
    from ..xds.metrics_server import MetricsOptions
    from ..xds.server import ServerOptions

    try:
        if args.ca_cert or args.ca_key:
            if not (args.ca_cert and args.ca_key) or args.ca_dir:
                log.error("--ca-cert and --ca-key go together, and not with --ca-dir")
                return 2
            ca = CertificateAuthority.from_files(
                args.ca_cert, args.ca_key, root_path=args.ca_root, trust_domain=args.trust_domain
            )
        else:
            ca = CertificateAuthority.load_or_create(args.ca_dir, args.trust_domain)
    except CertificateAuthorityError as exc:
        log.error("%s", exc)
        return 2
    identities = IdentityCache(ca, lifetime=timedelta(seconds=args.cert_lifetime))
    options = TranslateOptions(
        trust_domain=args.trust_domain,
        layout=args.layout,
        bind_address=args.bind_address,
        limits=data_path_flags.limits_from(args),
    )
    plane = ControlPlane(
        server_options=ServerOptions(
            host=args.xds_address,
            port=args.xds_port,
            max_connection_age_ms=int(args.max_connection_age * 1000),
        ),
        debug_options=DebugOptions(host=args.debug_address, port=args.debug_port),
        metrics_options=MetricsOptions(host=args.metrics_address, port=args.metrics_port),
        translate=functools.partial(translate_node, options=options),
        identities=identities,
    )
    problems = ProblemLog()
    index = await asyncio.to_thread(load_index, args.manifests)
    problems.report(index)
    await plane.update(index)

    async def reload(first_seen: float) -> None:
        if not args.manifests.exists():  # unmounted or deleted: never take every node's config away
            log.error("%s is gone; keeping the last config until it is back", args.manifests)
            return
        fresh = await asyncio.to_thread(load_index, args.manifests)
        problems.report(fresh)
        await plane.update(fresh, changed_at=first_seen)

    watch = DirectoryWatch(args.manifests, reload, quiet=args.debounce_quiet, max_delay=args.debounce_max)
    watch.prime()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task] = set()

    def reload_ca() -> None:  # SIGHUP: re-read the CA files (root rotation), push what changed
        task = asyncio.create_task(plane.reload_ca(), name="ca-reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_ca)
    try:
        await plane.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await plane.stop()
        return 2
    # a log record, not a print: with --log-format json every line on stderr is JSON
    log.info("serving %d nodes: ADS on %s, debug API on %s, metrics on %s", len(index.nodes), plane.xds_address,
             plane.debug_url, plane.metrics_server.url if plane.metrics_server else "-")
    watcher = asyncio.create_task(watch.run(), name="manifest-watch")
    await stop.wait()
    log.warning("shutting down")
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await plane.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.manifests.exists():
        print(f"zpilot serve: {args.manifests} does not exist", file=sys.stderr)
        return 2
    import asyncio

    if logging.getLogger().level > logging.INFO:
        logging.getLogger("zpilot").setLevel(logging.INFO)
    return asyncio.run(serve(args))
