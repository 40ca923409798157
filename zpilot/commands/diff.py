"""``zpilot diff``: does a live Envoy run the config zpilot intends for its node?

Fetches the node's config from the server's debug API and the Envoy's own
``/config_dump?include_eds``, normalizes both (see ``zpilot.xds.dump_diff``) and prints a unified
diff. Exit status: 0 when they agree, 1 when they differ, 2 when either side cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from .. import contract
from .options import seconds


def _timeout(text: str) -> float:
    return seconds(text, allow_zero=False)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help="diff a live Envoy's config_dump against the config zpilot serves its node")
    p.add_argument("--node", help="Kubernetes node name the Envoy serves (default: from the Envoy's /server_info)")
    p.add_argument("--envoy-admin", required=True,
                   help=f"the Envoy's admin URL, e.g. http://{contract.ADMIN_ADDRESS}:{contract.PORT_ADMIN}")
    p.add_argument("--server", default=f"http://127.0.0.1:{contract.PORT_DEBUG}",
                   help=f"zpilot serve's debug API URL (default http://127.0.0.1:{contract.PORT_DEBUG})")
    p.add_argument("--debug-token-file", type=Path,
                   help="the bearer token of a debug API that requires one (zpilot serve --debug-token-file)")
    p.add_argument("--timeout", type=_timeout, default=10.0, help="seconds per HTTP request (default 10)")
    p.set_defaults(func=run)


class FetchError(Exception):
    pass


def fetch_json(url: str, timeout: float, token: str | None = None) -> Any:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (operator-given URL)
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        raise FetchError(f"{url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    except ValueError as exc:
        raise FetchError(f"{url}: not JSON: {exc}") from None


def envoy_node(admin: str, timeout: float) -> str:
    """The node an Envoy serves, by the same rules the server uses on its first request."""
    from envoy.config.core.v3.base_pb2 import Node
    from google.protobuf import json_format

    from ..xds.node_identity import NodeIdentityError, node_name

    info = fetch_json(f"{admin}/server_info", timeout)
    try:
        node = json_format.ParseDict(info.get("node") or {}, Node(), ignore_unknown_fields=True)
        return node_name(node)
    except (json_format.ParseError, NodeIdentityError, AttributeError) as exc:
        raise FetchError(f"{admin}/server_info: cannot tell the Envoy's node ({exc}); pass --node") from None


def run(args: argparse.Namespace) -> int:
    from ..xds.dump_diff import summary, unified_diff

    from .options import read_token_file

    server = args.server.rstrip("/")
    admin = args.envoy_admin.rstrip("/")
    try:
        token = read_token_file(args.debug_token_file) if args.debug_token_file is not None else None
    except ValueError as exc:
        print(f"zpilot diff: {exc}", file=sys.stderr)
        return 2
    try:
        node = args.node or envoy_node(admin, args.timeout)
        intent = fetch_json(f"{server}/debug/config_dump?node={urllib.parse.quote(node)}", args.timeout, token)
        actual = fetch_json(f"{admin}/config_dump?include_eds", args.timeout)
    except FetchError as exc:
        print(f"zpilot diff: {exc}", file=sys.stderr)
        return 2
    args.node = node
    diff = unified_diff(intent, actual, intent_name=f"zpilot:{args.node}", actual_name=f"envoy:{admin}")
    if diff:
        sys.stdout.write(diff)
        print(f"zpilot diff: node {args.node}: Envoy differs from intent (intent {summary(intent)},"
              f" envoy {summary(actual)})", file=sys.stderr)
        return 1
    print(f"zpilot diff: node {args.node}: no difference ({summary(intent)})", file=sys.stderr)
    return 0
