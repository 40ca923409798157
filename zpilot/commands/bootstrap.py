"""``zpilot bootstrap``: the Envoy bootstrap a node's ztunnel starts from."""

from __future__ import annotations

import argparse
import json
import sys

from .. import contract


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bootstrap", help="print the Envoy bootstrap (JSON) for one node's ztunnel")
    p.add_argument("--node", required=True,
                   help=f"Kubernetes node name (sent as node metadata {contract.NODE_NAME_METADATA})")
    p.add_argument("--xds", required=True, help="control plane address: HOST:PORT or unix:/path")
    p.add_argument("--node-id", help=f"Envoy node id (default {contract.node_id('NODE')})")
    p.add_argument("--admin-address", default=contract.ADMIN_ADDRESS)
    p.add_argument("--admin-port", type=int, default=contract.PORT_ADMIN)
    p.add_argument("--delta", action="store_true", help="use incremental (delta) ADS")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from ..translators.bootstrap import BootstrapOptions, bootstrap, parse_xds_target

    try:
        parse_xds_target(args.xds)
    except ValueError as exc:
        print(f"zpilot bootstrap: {exc}", file=sys.stderr)
        return 2
    options = BootstrapOptions(
        node=args.node,
        xds=args.xds,
        node_id=args.node_id,
        admin_address=args.admin_address,
        admin_port=args.admin_port,
        delta=args.delta,
    )
    json.dump(json_format.MessageToDict(bootstrap(options), preserving_proto_field_name=True), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
