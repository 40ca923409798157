"""``zpilot render``: one node's ztunnel config, offline, as Envoy's /config_dump would show it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import data_path_flags
from .options import add_layout_argument, add_root_namespace, add_trust_domain


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="print one node's ztunnel config (Envoy config_dump JSON) from manifests")
    p.add_argument("--manifests", required=True, type=Path, help="directory (or file) of Kubernetes YAML")
    p.add_argument("--node", required=True, help="Kubernetes node name")
    add_layout_argument(p)
    add_trust_domain(p)
    add_root_namespace(p)
    p.add_argument("--ca-dir", type=Path, help="CA directory (created on first use); default: a throwaway CA")
    p.add_argument(
        "--static",
        action="store_true",
        help="print a static Envoy bootstrap instead (secrets inline, the stats settings of zpilot bootstrap's"
        " defaults): runs with no control plane, and validates",
    )
    p.add_argument("--quiet", action="store_true", help="do not list input problems on stderr")
    data_path_flags.add_arguments(p)
    data_path_flags.add_guard_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..certs.ca import CertificateAuthority
    from ..certs.identity import IdentityCache
    from ..certs.secrets import build_secrets
    from ..kube.manifests import load_manifests
    from ..model.index import MeshIndex
    from ..translators import TranslateOptions, consistency, translate_node
    from ..translators.static import static_bootstrap_document
    from ..xds.config_dump import config_dump

    manifests = load_manifests(args.manifests)
    index = MeshIndex.build(manifests.cluster, manifests.problems, root_namespace=args.root_namespace)
    problems = manifests.problems
    if args.node not in index.nodes and not index.workloads_on(args.node):
        problems.warning(f"Node {args.node}", "not in the manifests: its ztunnel gets only the fixed resources")
    options = TranslateOptions(
        trust_domain=args.trust_domain, layout=args.layout, limits=data_path_flags.limits_from(args),
        **data_path_flags.guard_options(args),
    )
    resources = translate_node(index, args.node, options)
    refused = consistency.findings(resources)
    if refused:  # what serve would refuse to send: print the reasons, not a config Envoy rejects
        for problem in problems:
            print(problem, file=sys.stderr)
        for finding in refused:
            print(f"error: Node {args.node}: {finding}", file=sys.stderr)
        return 1
    ca = CertificateAuthority.load_or_create(args.ca_dir, args.trust_domain)
    secrets = build_secrets(resources.secrets.values(), IdentityCache(ca), problems)
    if not args.quiet:
        for problem in problems:
            print(problem, file=sys.stderr)
    if args.static:
        out = static_bootstrap_document(resources, secrets)
    else:
        out = config_dump(resources, secrets)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
