"""``zpilot revoke``: record node credentials as revoked in the CA's store (docs/security.md).

``--node N`` revokes every credential of node N issued until now (a stolen copy and the node's own);
``--serial HEX`` one certificate. The list goes where the CA lives: the ``--ca-dir`` directory
(``revoked-node-credentials.json``) or a key of the ``--ca-secret`` Secret; a running ``zpilot serve``
picks it up within seconds, refuses those credentials and ends the streams open with them. Afterwards
``zpilot bootstrap --renew --force --node N`` gives the node a fresh credential, served again.

Each entry is kept for ``--credential-lifetime`` (the longest lifetime the node credentials were issued
with: ``zpilot bootstrap --credential-lifetime``, 30 days by default) and dropped after: by then every
credential it names has expired.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..logs import counted
from .options import seconds
from .serve import DEFAULT_CA_SECRET, _secret_name

DEFAULT_KEEP_DAYS = 30


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("revoke", help="revoke node ADS credentials (by node or serial) in the CA's store",
                       description="Record node credentials as revoked where the CA is kept; a running zpilot serve"
                                   " refuses them and closes the streams open with them.")
    what = p.add_argument_group("what to revoke (at least one)")
    what.add_argument("--node", action="append", default=[], metavar="NAME",
                      help="every credential of this node issued until now (repeat for several nodes)")
    what.add_argument("--serial", action="append", default=[], metavar="HEX",
                      help="the certificate with this serial (hex, as zpilot serve logs it and Envoy's /certs"
                           " shows it; repeat)")
    where = p.add_argument_group("where the CA is (one)")
    where.add_argument("--ca-dir", type=Path, help="the CA directory of zpilot serve --ca-dir")
    where.add_argument("--ca-secret", nargs="?", const=DEFAULT_CA_SECRET, type=_secret_name, metavar="NAMESPACE/NAME",
                       help=f"the CA Secret of zpilot serve --ca-secret (alone: {DEFAULT_CA_SECRET}); needs get and"
                            " update on it")
    where.add_argument("--kubeconfig", type=Path, metavar="PATH", help="--ca-secret: kubeconfig of the cluster")
    where.add_argument("--context", metavar="NAME", help="--ca-secret: kubeconfig context to use")
    p.add_argument("--credential-lifetime", type=lambda t: seconds(t, allow_zero=False),
                   default=DEFAULT_KEEP_DAYS * 86400.0,
                   help="seconds the entries are kept: the longest lifetime node credentials were issued with"
                        f" (zpilot bootstrap --credential-lifetime; default {DEFAULT_KEEP_DAYS} days)")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"zpilot revoke: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ..certs.revocation import RevocationError, RevocationList, cut_after, parse_serial, revoke_node, revoke_serial
    from ..contract import valid_node_name

    if not args.node and not args.serial:
        return _fail("say what to revoke: --node NAME and/or --serial HEX")
    if (args.ca_dir is None) == (args.ca_secret is None):
        return _fail("give the CA's store: --ca-dir DIR or --ca-secret [NAMESPACE/NAME] (one of them)")
    if args.ca_dir is not None and (args.kubeconfig is not None or args.context is not None):
        return _fail("--kubeconfig and --context go with --ca-secret, not --ca-dir")
    for node in args.node:
        if not valid_node_name(node):
            return _fail(f"--node {node[:300]!r} is not a Kubernetes node name")
    try:
        serials = [parse_serial(text) for text in args.serial]
    except RevocationError as exc:
        return _fail(str(exc))
    keep = timedelta(seconds=args.credential_lifetime)
    now = datetime.now(timezone.utc)

    def change(current: RevocationList) -> RevocationList:
        for node in args.node:
            current = revoke_node(current, node, now, keep)
        for serial in serials:
            current = revoke_serial(current, serial, now, keep)
        return current

    try:
        if args.ca_dir is not None:
            from ..certs.revocation import update_directory

            written = update_directory(args.ca_dir, change)
            where = f"{args.ca_dir}"
        else:
            import asyncio

            from ..certs.revocation_secret import update_secret
            from ..kube.credentials import Credentials

            written = asyncio.run(update_secret(Credentials(kubeconfig=args.kubeconfig, context=args.context),
                                                args.ca_secret, change))
            where = f"Secret {args.ca_secret}"
    except (RevocationError, OSError) as exc:
        return _fail(str(exc))
    # a credential issued in the revocation's second counts as revoked: return only once it is over, so that
    # one issued after this command (zpilot bootstrap --renew --force) is served
    cut = cut_after(now)
    time.sleep(max(0.0, (cut - datetime.now(timezone.utc)).total_seconds()))
    named = [f"node {n} (credentials issued before {cut.isoformat()})" for n in args.node]
    named += [f"serial {s}" for s in args.serial]
    held = counted(len(written), "entry", "entries")
    print(f"zpilot revoke: revoked {', '.join(named)} in {where} (its list holds {held}, each kept until the"
          " credentials it names expire); a running zpilot serve refuses them and closes their streams within"
          " seconds. Give the node a new credential with: zpilot bootstrap --renew --force --node NODE (and the CA options)",
          file=sys.stderr)
    return 0
