"""``zpilot serve``: the control plane. Watches the cluster (its API server; or a manifest directory
with ``--manifests``) and serves every node's ztunnel its config over ADS (gRPC, TLS: each ztunnel
proves its node, docs/security.md), with Prometheus metrics and the debug API (localhost) on ports
of their own (the contract's ``PORT_XDS``, ``PORT_METRICS`` and ``PORT_DEBUG``).

Only the arguments are handled here; the process is :mod:`zpilot.runtime.serve`.
See docs/xds-server.md for pointing an Envoy at it and for the debug endpoints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from .. import contract
from ..kube import source_flags
from . import data_path_flags, xds_limit_flags
from .options import (
    add_layout_argument, add_root_namespace, add_trust_domain, listen_address, port_number, read_token_file, seconds,
)

log = logging.getLogger("zpilot.serve")


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    """A duration in seconds: finite, and positive (or zero where that means "at once")."""

    def parse(text: str) -> float:
        return seconds(text, allow_zero=allow_zero)

    return parse


#: ``--ca-secret`` without a value (kube_secret.DEFAULT_SECRET, repeated so --help imports no client).
DEFAULT_CA_SECRET = "istio-system/zpilot-ca"
#: ``--trust-bundle-configmap`` without a value (trust_bundle_configmap.DEFAULT_CONFIGMAP, repeated so --help
#: imports no client).
DEFAULT_TRUST_BUNDLE_CONFIGMAP = "istio-system/zpilot-ca-root"


def _secret_name(text: str):
    from ..kube.object_names import SecretName

    try:
        return SecretName.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _configmap_name(text: str):
    from ..kube.object_names import SecretName

    try:
        return SecretName.parse(text, what="a ConfigMap")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve ztunnel config over ADS from the cluster (or a manifest directory)",
                       description="Watch the cluster through its API server (credentials: --kubeconfig, $KUBECONFIG,"
                                   " the pod's service account, ~/.kube/config) or, with --manifests, a directory"
                                   " of manifests; serve every node's ztunnel its config over ADS.")
    source_flags.add_arguments(p, manifests_help="read this directory (or file) of Kubernetes YAML, watched,"
                                                 " instead of the cluster")
    p.add_argument("--xds-address", type=listen_address("--xds-port"), default="0.0.0.0",
                   help="ADS listen address, or unix:/path (default 0.0.0.0)")
    p.add_argument("--xds-port", type=port_number, default=contract.PORT_XDS,
                   help=f"ADS port (default {contract.PORT_XDS}; 0 = any free port)")
    p.add_argument("--debug-address", type=listen_address("--debug-port"), default="127.0.0.1",
                   help="debug API listen address, or unix:/path (default 127.0.0.1; it shows every node's config)")
    p.add_argument("--debug-port", type=port_number, default=contract.PORT_DEBUG,
                   help=f"debug API port (default {contract.PORT_DEBUG}; 0 = any free port)")
    p.add_argument("--metrics-address", type=listen_address("--metrics-port"), default="0.0.0.0",
                   help="Prometheus /metrics listen address, or unix:/path (default 0.0.0.0)")
    p.add_argument("--metrics-port", type=port_number, default=contract.PORT_METRICS,
                   help=f"/metrics port (default {contract.PORT_METRICS}; 0 = any free port)")
    add_layout_argument(p)
    add_trust_domain(p)
    add_root_namespace(p)
    p.add_argument("--bind-address", default="0.0.0.0",
                   help=f"address the ztunnel listeners ({contract.PORT_OUTBOUND}/{contract.PORT_INBOUND_PLAINTEXT}/"
                        f"{contract.PORT_HBONE}) bind to, on every node (default 0.0.0.0)")
    p.add_argument("--ca-dir", type=Path, help="CA directory (created on first start); default: in memory")
    p.add_argument("--ca-cert", type=Path, help="a CA you provide: signing certificate (then its chain), PEM")
    p.add_argument("--ca-key", type=Path, help="the private key of --ca-cert, PEM")
    p.add_argument("--ca-root", type=Path, help="the root of --ca-cert's chain, if --ca-cert lacks it")
    p.add_argument("--ca-secret", nargs="?", const=DEFAULT_CA_SECRET, type=_secret_name, metavar="NAMESPACE/NAME",
                   help="keep the CA in this Kubernetes Secret, shared by replicas (created with a new root if"
                        f" absent; Istio's cacerts keys; changes are followed); alone: {DEFAULT_CA_SECRET}")
    p.add_argument("--trust-bundle-configmap", nargs="?", const=DEFAULT_TRUST_BUNDLE_CONFIGMAP, type=_configmap_name,
                   metavar="NAMESPACE/NAME",
                   help="publish the CA's trust bundle (key root-cert.pem) in this ConfigMap and keep it current, for"
                        " ztunnels checking the ADS server's certificate (zpilot bootstrap --ca-bundle); alone:"
                        f" {DEFAULT_TRUST_BUNDLE_CONFIGMAP}")
    p.add_argument("--cert-lifetime", type=_seconds(allow_zero=False), default=24 * 3600.0,
                   help="workload certificate lifetime, seconds (86400)")
    p.add_argument("--debounce-quiet", type=_seconds(allow_zero=True), default=0.1,
                   help="seconds the input must be quiet (no new API event, a file unchanged) before a change is"
                        " pushed (0.1)")
    p.add_argument("--debounce-max", type=_seconds(allow_zero=False), default=10.0,
                   help="longest a change waits for quiet (10)")
    p.add_argument("--max-connection-age", type=_seconds(allow_zero=False), default=1800.0,
                   help="seconds before a stream is recycled (1800)")
    xds_limit_flags.add_arguments(p)
    auth = p.add_argument_group("who may fetch a node's config (docs/security.md)")
    auth.add_argument("--xds-auth", choices=("tls", "token"),
                      help="tls (default): ADS over TLS, each ztunnel presents its node's client certificate"
                           " (zpilot bootstrap writes it); token: ADS over TLS, each ztunnel sends its pod's"
                           " ServiceAccount token, checked with the TokenReview API")
    auth.add_argument("--insecure-xds", action="store_true",
                      help="plaintext ADS, and any client may claim any node and get its private keys:"
                           " development only (warned about at start and on every connection)")
    auth.add_argument("--xds-san", action="append", default=[], metavar="NAME",
                      help="a DNS name or IP address ztunnels dial ADS by, put in the server's certificate"
                           " (repeat; localhost, 127.0.0.1 and ::1 are always in it)")
    auth.add_argument("--token-audience", default=contract.XDS_TOKEN_AUDIENCE,
                      help=f"--xds-auth token: the audience tokens must be minted for ({contract.XDS_TOKEN_AUDIENCE})")
    auth.add_argument("--ztunnel-service-account", default=f"{contract.ZTUNNEL_NAMESPACE}/{contract.ZTUNNEL_SERVICE_ACCOUNT}",
                      metavar="NAMESPACE/NAME", help="--xds-auth token: the ServiceAccount of the ztunnel pods")
    auth.add_argument("--debug-token-file", type=Path,
                      help="a file holding the bearer token the debug API requires (required when"
                           " --debug-address is not loopback or a unix: socket)")
    data_path_flags.add_arguments(p)
    data_path_flags.add_guard_arguments(p)
    p.set_defaults(func=run)


def exposed_debug_address(address: str) -> bool:
    """Whether the debug API would be reachable from other machines (anything but loopback or a socket file)."""
    import ipaddress

    if address.startswith("unix:") or address == "localhost":
        return False
    try:
        return not ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return True


def xds_auth_mode(args: argparse.Namespace) -> str:
    """``tls``, ``token`` or ``insecure``; ValueError for flags that contradict each other."""
    if args.insecure_xds and args.xds_auth:
        raise ValueError("--insecure-xds turns authentication off: it does not go with --xds-auth")
    mode = "insecure" if args.insecure_xds else (args.xds_auth or "tls")
    if mode != "insecure" and args.ca_dir is None and args.ca_cert is None and args.ca_secret is None:
        raise ValueError(
            f"--xds-auth {mode} needs a CA that outlives this process: zpilot bootstrap issues node credentials"
            " from it and ztunnels check the server's certificate against it; give --ca-dir DIR (or"
            " --ca-cert/--ca-key, or --ca-secret), or --insecure-xds for a throwaway development setup"
        )
    return mode


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..certs.xds_credentials import server_name
    from ..kube.directory import ManifestDirectorySource
    from ..runtime.control_plane import DebugOptions
    from ..runtime.serve import ServeRuntime, ServeSettings, TokenReviewSettings, serve_until_signalled
    from ..translators import TranslateOptions
    from ..xds.metrics_server import MetricsOptions
    from ..xds.server import ServerOptions
    from ..xds.service_account import ServiceAccountRef

    # the CA Secret and token reviews read the cluster even when the model comes from --manifests
    # one loaded configuration for the whole process: the check below, the watch, the CA Secret, token reviews
    # and the trust bundle (an exec plugin runs once at the start, not once for each)
    cluster = source_flags.credentials(args)
    problem = source_flags.problem(args, cluster, cluster_used_otherwise=args.ca_secret is not None
                                   or args.xds_auth == "token" or args.trust_bundle_configmap is not None)
    if problem is not None:
        print(f"zpilot serve: {problem}", file=sys.stderr)
        return 2
    if args.ca_secret is not None and (args.ca_dir or args.ca_cert or args.ca_key or args.ca_root):
        print("zpilot serve: --ca-secret keeps the CA in a Secret; it does not go with --ca-dir, --ca-cert,"
              " --ca-key or --ca-root", file=sys.stderr)
        return 2
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("zpilot").setLevel(logging.INFO)
    try:
        mode = xds_auth_mode(args)
        account = ServiceAccountRef.parse(args.ztunnel_service_account)
        for name in args.xds_san:
            server_name(name)  # CredentialError (a ValueError) for a name no certificate can carry
        debug_token = read_token_file(args.debug_token_file) if args.debug_token_file is not None else None
    except ValueError as exc:
        print(f"zpilot serve: {exc}", file=sys.stderr)
        return 2
    if exposed_debug_address(args.debug_address) and debug_token is None:
        print(f"zpilot serve: the debug API on {args.debug_address} would show every node's configuration to"
              " whoever reaches it: give --debug-token-file FILE (a bearer token it will require), or keep it"
              " on 127.0.0.1 or a unix: socket", file=sys.stderr)
        return 2
    settings = ServeSettings(
        xds=ServerOptions(host=args.xds_address, port=args.xds_port,
                          max_connection_age_ms=int(args.max_connection_age * 1000),
                          limits=xds_limit_flags.limits_from(args)),
        debug=DebugOptions(host=args.debug_address, port=args.debug_port, token=debug_token),
        metrics=MetricsOptions(host=args.metrics_address, port=args.metrics_port),
        translate=TranslateOptions(
            trust_domain=args.trust_domain,
            layout=args.layout,
            bind_address=args.bind_address,
            limits=data_path_flags.limits_from(args),
            **data_path_flags.guard_options(args),
        ),
        ca_dir=args.ca_dir, ca_cert=args.ca_cert, ca_key=args.ca_key, ca_root=args.ca_root,
        ca_secret=args.ca_secret, trust_bundle_configmap=args.trust_bundle_configmap,
        cluster=cluster,
        cert_lifetime=args.cert_lifetime,
        xds_auth=mode,
        xds_names=tuple(args.xds_san),
        token_review=TokenReviewSettings(audience=args.token_audience, service_account=account),
    )
    if args.manifests is not None:
        source = ManifestDirectorySource(args.manifests, quiet=args.debounce_quiet, max_delay=args.debounce_max,
                                         root_namespace=args.root_namespace)
    else:
        from ..kube.watch import ApiWatchSource  # (it brings the Kubernetes client: not with --manifests)

        source = ApiWatchSource(cluster, quiet=args.debounce_quiet,
                                max_delay=args.debounce_max, root_namespace=args.root_namespace)
    return asyncio.run(serve_until_signalled(ServeRuntime(settings, source)))
