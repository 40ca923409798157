"""``zpilot bootstrap``: the Envoy bootstrap a node's ztunnel starts from, and its ADS credential.

With ``--xds-auth tls`` (the default) it also issues the node's client certificate from the CA
``zpilot serve --ca-dir`` uses and writes it, with its key and the CA bundle, into the node's
credential directory, where the bootstrap's file-based SDS reads them (and re-reads them when
``zpilot bootstrap --renew`` swaps them). With ``--xds-auth token`` the bootstrap sends the pod's
projected ServiceAccount token instead. See docs/security.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .. import contract
from .options import port_number, seconds

#: Where a node's credential directory goes unless ``--credential-dir`` says otherwise (relative
#: to the working directory; the bootstrap holds it as an absolute path).
DEFAULT_CREDENTIAL_ROOT = "xds-credentials"
DEFAULT_CREDENTIAL_LIFETIME_DAYS = 30


def _lifetime(text: str) -> float:
    return seconds(text, allow_zero=False)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bootstrap", help="print the Envoy bootstrap (JSON) for one node's ztunnel; write its ADS credential")
    p.add_argument("--node", required=True,
                   help=f"Kubernetes node name (sent as node metadata {contract.NODE_NAME_METADATA})")
    p.add_argument("--xds", help="control plane address: HOST:PORT or unix:/path (required unless --renew)")
    p.add_argument("--node-id", help=f"Envoy node id (default {contract.node_id('NODE')})")
    p.add_argument("--admin-address", default=contract.ADMIN_ADDRESS,
                   help=f"Envoy's admin API address (default {contract.ADMIN_ADDRESS}; whoever reaches it can"
                        " change the proxy)")
    p.add_argument("--admin-port", type=port_number, default=contract.PORT_ADMIN,
                   help=f"Envoy's admin API port (default {contract.PORT_ADMIN})")
    p.add_argument("--delta", action="store_true", help="use incremental (delta) ADS")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="write the bootstrap to FILE (atomically: Envoy never reads half of it) instead of stdout")
    p.add_argument("--readiness-port", type=int, metavar="PORT",
                   help=f"also serve the admin API's {contract.READINESS_PATH} (and nothing else of it) on this port of"
                        f" every address, for a kubelet's readiness probe (Istio's: {contract.PORT_READINESS})")
    p.add_argument("--cluster-stats", choices=contract.CLUSTER_STATS, default=contract.DEFAULT_CLUSTER_STATS,
                   help="lazy (default): each cluster's traffic counters (upstream_cx_*, upstream_rq_*, ...) appear on"
                        " its first connection, saving the Envoy memory and start-up time on the thousands of"
                        " clusters a large mesh gives each node; eager: all of them at start (Envoy's default)")
    p.add_argument("--service-stats", choices=contract.SERVICE_STATS, default=contract.DEFAULT_SERVICE_STATS,
                   help="the stats of each service port's cluster (cluster.svc.<port>_<fqdn>.*) and tcp_proxy"
                        " (tcp.svc.<port>_<fqdn>.*): traffic (default): the cluster's traffic counters only"
                        " (upstream_cx_*, upstream_rq_*, ...; when, --cluster-stats says), not its membership_*,"
                        " update_*, circuit_breakers.*, lb_* and other bookkeeping, nor the tcp_proxy's; none: no"
                        " stats for service ports (as Istio's proxies); all: every one (Envoy's default)."
                        " Other clusters keep all of theirs but each node's pods cluster (--pod-cluster-stats)")
    p.add_argument("--pod-cluster-stats", choices=contract.POD_CLUSTER_STATS, default=contract.DEFAULT_POD_CLUSTER_STATS,
                   help="the stats of each node's pods cluster (cluster.pods_on_<node>.*, the linear layout's): traffic"
                        " (default): its traffic counters only, not its membership_*, update_*, circuit_breakers.*,"
                        " lb_* and other bookkeeping (zpilot serve's own view holds what each node is served); all:"
                        " every one (Envoy's default). traffic leaves its chain's tcp_proxy (tcp.pods.pods_on_<node>.*)"
                        " no stats, all every one")
    auth = p.add_argument_group("how the ztunnel proves its node to zpilot serve (docs/security.md)")
    auth.add_argument("--xds-auth", choices=("tls", "token"),
                      help="tls (default): a client certificate issued here from the CA; token: the pod's"
                           " projected ServiceAccount token (--token-file)")
    auth.add_argument("--insecure-xds", action="store_true",
                      help="plaintext ADS, no credential (only zpilot serve --insecure-xds takes it)")
    auth.add_argument("--credential-dir", type=Path,
                      help=f"where the node's credential and the SDS files that read it go"
                           f" (default ./{DEFAULT_CREDENTIAL_ROOT}/NODE)")
    auth.add_argument("--ca-dir", type=Path, help="tls: the CA directory of zpilot serve --ca-dir")
    auth.add_argument("--ca-cert", type=Path, help="tls: the CA of zpilot serve --ca-cert (signing certificate, chain)")
    auth.add_argument("--ca-key", type=Path, help="tls: the key of --ca-cert")
    auth.add_argument("--ca-root", type=Path, help="tls: the root of --ca-cert's chain, if --ca-cert lacks it")
    auth.add_argument("--trust-domain", default=contract.DEFAULT_TRUST_DOMAIN, help="tls: as zpilot serve's")
    auth.add_argument("--credential-lifetime", type=_lifetime, default=DEFAULT_CREDENTIAL_LIFETIME_DAYS * 86400.0,
                      metavar="SECONDS",
                      help=f"tls: the client certificate's lifetime ({DEFAULT_CREDENTIAL_LIFETIME_DAYS} days);"
                           " renew it at half with --renew")
    auth.add_argument("--renew", action="store_true",
                      help="tls: only renew the node's credential, if it is due (half its lifetime gone, the CA"
                           " changed, or missing); a running Envoy picks it up; prints no bootstrap")
    auth.add_argument("--force", action="store_true", help="with --renew: renew even if not due")
    auth.add_argument("--token-file", type=Path,
                      help="token: the projected ServiceAccount token file (audience"
                           f" {contract.XDS_TOKEN_AUDIENCE}), re-read as the kubelet rotates it")
    auth.add_argument("--ca-bundle", type=Path,
                      help="token: the CA bundle (PEM) to check zpilot serve's certificate against")
    auth.add_argument("--xds-server-name",
                      help="the name (or IP) zpilot serve's certificate must carry (default: the --xds host;"
                           " localhost for unix:)")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"zpilot bootstrap: {message}", file=sys.stderr)
    return 2


def _mode(args: argparse.Namespace) -> str:
    if args.insecure_xds and args.xds_auth:
        raise ValueError("--insecure-xds turns authentication off: it does not go with --xds-auth")
    mode = "insecure" if args.insecure_xds else (args.xds_auth or "tls")
    if args.renew and mode != "tls":
        raise ValueError("--renew renews a client certificate (--xds-auth tls); the kubelet renews tokens")
    if args.force and not args.renew:
        raise ValueError("--force goes with --renew")
    if mode == "token" and (args.token_file is None or args.ca_bundle is None):
        raise ValueError("--xds-auth token needs --token-file (the projected token) and --ca-bundle")
    if mode != "token" and (args.token_file is not None or args.ca_bundle is not None):
        raise ValueError("--token-file and --ca-bundle are for --xds-auth token")
    has_ca = args.ca_dir is not None or args.ca_cert is not None or args.ca_key is not None
    if mode == "tls" and not has_ca:
        raise ValueError("--xds-auth tls issues the node's client certificate: give the CA of zpilot serve"
                         " (--ca-dir DIR, or --ca-cert/--ca-key)")
    if mode != "tls" and has_ca:
        raise ValueError("the CA options are for --xds-auth tls")
    return mode


def _authority(args: argparse.Namespace):
    from ..certs import CertificateAuthority

    if args.ca_cert or args.ca_key:
        if not (args.ca_cert and args.ca_key) or args.ca_dir:
            raise ValueError("--ca-cert and --ca-key go together, and not with --ca-dir")
        return CertificateAuthority.from_files(args.ca_cert, args.ca_key, root_path=args.ca_root,
                                               trust_domain=args.trust_domain)
    return CertificateAuthority.load(args.ca_dir, args.trust_domain)


def _write_sds_files(directory: Path, files: dict[str, dict]) -> None:
    """Each SDS file written aside and renamed into place (Envoy never reads half of one)."""
    import os

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, content in files.items():
        staged = directory / f".{name}.tmp"
        staged.write_text(json.dumps(content, indent=1) + "\n")
        os.replace(staged, directory / name)


def run(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta, timezone

    from ..certs.credential_files import renewal_reason, write_node_credential
    from ..translators.bootstrap import BootstrapOptions, XdsTls, bootstrap_document, default_server_name, parse_xds_target, xds_sds_files

    try:
        mode = _mode(args)
        if not contract.valid_node_name(args.node):
            raise ValueError(f"--node {args.node[:300]!r} is not a Kubernetes node name")
        if not args.renew:
            if not args.xds:
                raise ValueError("--xds HOST:PORT (or unix:/path) is required")
            parse_xds_target(args.xds)
        if args.readiness_port is not None and not 0 < args.readiness_port < 65536:
            raise ValueError(f"--readiness-port {args.readiness_port} is not a port number (1-65535)")
        if args.readiness_port is not None and not 0 < args.admin_port < 65536:
            raise ValueError("--readiness-port forwards to the admin API: give it a fixed --admin-port")
    except ValueError as exc:
        return _fail(str(exc))
    directory = (args.credential_dir or Path(DEFAULT_CREDENTIAL_ROOT) / args.node).absolute()
    lifetime = timedelta(seconds=args.credential_lifetime)
    tls: XdsTls | None = None
    if mode == "tls":
        try:
            ca = _authority(args)
            reason = renewal_reason(directory, ca, args.node, datetime.now(timezone.utc))
            if args.renew and reason is None and not args.force:
                print(f"zpilot bootstrap: the credential of node {args.node} in {directory} is good; not renewed",
                      file=sys.stderr)
                return 0
            issued = write_node_credential(directory, ca, args.node, lifetime)
        except (ValueError, OSError) as exc:  # CertificateAuthorityError and CredentialError are ValueErrors
            return _fail(str(exc))
        why = (reason or "asked to (--force)") if args.renew else ""
        print(f"zpilot bootstrap: wrote node {args.node}'s ADS credential to {directory}"
              f"{f' ({why})' if why else ''}; it expires at {issued.not_after.isoformat()}, renew it before"
              f" with: zpilot bootstrap --renew --node {args.node} --credential-dir {directory} (and the CA options)",
              file=sys.stderr)
        if args.renew:
            return 0
        tls = XdsTls(
            server_name=args.xds_server_name or default_server_name(args.xds),
            sds_dir=str(directory),
            bundle=str(directory / contract.CREDENTIAL_BUNDLE_FILE),
            certificate=(str(directory / contract.CREDENTIAL_CERT_FILE), str(directory / contract.CREDENTIAL_KEY_FILE)),
        )
    elif mode == "token":
        tls = XdsTls(
            server_name=args.xds_server_name or default_server_name(args.xds),
            sds_dir=str(directory),
            bundle=str(args.ca_bundle.absolute()),
            token=str(args.token_file.absolute()),
        )
    if tls is not None:
        try:
            _write_sds_files(directory, xds_sds_files(tls))
        except OSError as exc:
            return _fail(f"cannot write the SDS files into {directory}: {exc.strerror or exc}")
    options = BootstrapOptions(
        node=args.node,
        xds=args.xds,
        node_id=args.node_id,
        admin_address=args.admin_address,
        admin_port=args.admin_port,
        delta=args.delta,
        tls=tls,
        readiness_port=args.readiness_port,
        cluster_stats=args.cluster_stats,
        service_stats=args.service_stats,
        pod_cluster_stats=args.pod_cluster_stats,
    )
    text = json.dumps(bootstrap_document(options), indent=1) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    staged = args.output.with_name(f".{args.output.name}.tmp")
    try:
        staged.write_text(text)
        os.replace(staged, args.output)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        print(f"zpilot bootstrap: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
