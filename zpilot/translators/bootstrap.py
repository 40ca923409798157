"""The Envoy bootstrap of one node's ztunnel: who it is, where its ADS server is, how it proves
which node it serves (docs/security.md), and the one piece of config that cannot travel over xDS
(the internal listener extension), and, for a kubelet, a readiness port that exposes the admin
API's ``/ready`` and nothing else of it.

The ADS connection's credentials are files that rotate: the node's client certificate (re-issued
by ``zpilot bootstrap --renew``), a projected ServiceAccount token (the kubelet rewrites it), the
CA bundle (a root rotation). Envoy reads each through **file-based SDS** with a watched
directory: when an entry is moved into the directory (a kubelet-style ``..data`` swap, or
``zpilot.certs.credential_files``), Envoy reloads the secret, so a rotated credential is used on
the next connection without a restart.

The token goes out as ``authorization: Bearer <token>`` on every ADS stream, added by the
``credential_injector`` upstream HTTP filter of the xDS cluster from an SDS generic secret.
``grpc_service.initial_metadata`` is read once at start, and a Google gRPC client's channel
credentials (its CA bundle) are read once when the channel is made, so neither follows a rotated
file; the filter reads the secret as SDS re-delivers it (checked against Envoy 1.40 by
tests/xds/test_xds_token_envoy.py).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from google.protobuf import duration_pb2, json_format, struct_pb2, wrappers_pb2

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    backoff_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.metrics.v3 import stats_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.bootstrap.internal_listener.v3 import internal_listener_pb2
from envoy.extensions.filters.http.credential_injector.v3 import credential_injector_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from xds.type.v3 import typed_struct_pb2

from .. import contract
from .clusters import HTTP_PROTOCOL_OPTIONS
from .envoy_common import ads_source, pack, socket_address
from .names import (
    IDENTITY_IN_STATS,
    PODS_ON_PREFIX,
    PLAINTEXT_PROXY_STAT_PREFIX,
    POD_TCP_STATS_TOKEN,
    SERVICE_TCP_STATS_TOKEN,
    TUNNEL_TCP_STATS_TOKEN,
    SECRET_STAT_TAG_VALUE,
    SERVICE_PORT_STAT_NAME,
    SERVICE_PORT_STAT_REST,
    any_name_but,
    stat_name_tag_value,
)

XDS_CLUSTER = "xds-grpc"
#: How soon a ztunnel redials its ADS server after losing it: a jittered exponential back-off from
#: 0.5 s, each wait drawn from [0, interval), the interval capped at 2 s. Envoy's own cap is 30 s: a
#: ztunnel that had failed a few times while zpilot serve restarted (a kill -9, a rollout) could
#: then wait up to 30 s after the server was back before it took config again. With 2 s a restarted
#: server has every ztunnel back within 2 s of listening, still spread over those 2 s.
XDS_RETRY_BASE_MS = 500
XDS_RETRY_MAX_MS = 2000
#: The static cluster the readiness listener forwards ``/ready`` to: the admin API on loopback.
ADMIN_CLUSTER = "ztunnel-admin"
#: The bootstrap's own SDS secrets (read from files, never sent by the server): the node's client
#: certificate, the CA bundle the server's certificate is checked against, the bearer token.
XDS_CLIENT_CERTIFICATE_SECRET = "xds-client-certificate"
XDS_TRUST_BUNDLE_SECRET = "xds-trust-bundle"
XDS_TOKEN_SECRET = "xds-token"
#: How the token is sent on each ADS stream (RFC 6750).
TOKEN_HEADER = "authorization"
TOKEN_PREFIX = "Bearer "
#: The generic credential's type: Envoy 1.40 has ``header_value_prefix``, xds-protos 1.85's message does
#: not, so the config is a TypedStruct that Envoy converts with its own descriptors (protos/ adds
#: messages xds-protos lacks; it cannot add a field to one that xds-protos registers).
GENERIC_CREDENTIAL_TYPE = "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic"


@dataclass(frozen=True)
class XdsTls:
    """How a ztunnel secures its ADS connection: every path absolute, as Envoy reads them."""

    #: A DNS name or IP address the server's certificate must carry (sent as SNI when a name).
    server_name: str
    #: Where the SDS files of the secrets below are (``xds_sds_files`` gives their content).
    sds_dir: str
    #: The CA bundle (PEM) the server's certificate is checked against.
    bundle: str
    #: Mutual TLS: the node's certificate chain and key files.
    certificate: tuple[str, str] | None = None
    #: A projected ServiceAccount token file, sent as ``authorization: Bearer``.
    token: str | None = None


@dataclass(frozen=True)
class BootstrapOptions:
    node: str
    xds: str  # "host:port", "[v6]:port" or "unix:/path"
    node_id: str | None = None  # default contract.node_id(node)
    admin_address: str = contract.ADMIN_ADDRESS
    admin_port: int = contract.PORT_ADMIN
    delta: bool = False
    #: None: plaintext ADS (only a server started with ``--insecure-xds`` takes it).
    tls: XdsTls | None = None
    #: Serve the admin API's ``/ready`` (only) on this port of every address; None: no such listener.
    readiness_port: int | None = None
    #: ``lazy`` (the default): each cluster's traffic counters are made on its first connection;
    #: ``eager``: at start, as Envoy's own default (see ``contract.CLUSTER_STATS``).
    cluster_stats: str = contract.DEFAULT_CLUSTER_STATS
    #: Which stats each service port's cluster and tcp_proxy get: ``traffic`` (the default), ``none``
    #: or ``all`` (see ``contract.SERVICE_STATS`` and :func:`stats_config`).
    service_stats: str = contract.DEFAULT_SERVICE_STATS
    #: Which stats each node's pods cluster (``pods_on_<node>``) gets: ``traffic`` (the default) or ``all`` (see
    #: ``contract.POD_CLUSTER_STATS``).
    pod_cluster_stats: str = contract.DEFAULT_POD_CLUSTER_STATS


def parse_xds_target(target: str) -> address_pb2.Address:
    """``host:port`` (IP or DNS name), ``[v6]:port`` or ``unix:/path`` -> an Envoy address."""
    if target.startswith("unix:"):
        path = target[len("unix:") :]
        if not path:
            raise ValueError("unix: target needs a socket path")
        return address_pb2.Address(pipe=address_pb2.Pipe(path=path))
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"xDS target {target!r} is not host:port or unix:/path")
    return socket_address(host.strip("[]"), int(port))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def default_server_name(target: str) -> str:
    """The name a ztunnel checks the server's certificate for: the host it dials, ``localhost``
    over a Unix socket (there is no name to dial; every server certificate carries it)."""
    address = parse_xds_target(target)
    return address.socket_address.address if address.HasField("socket_address") else "localhost"


def _file_sds(name: str, sds_dir: str, watched: str) -> secret_pb2.SdsSecretConfig:
    """The secret ``name`` from its SDS file in ``sds_dir``, reloaded when an entry is moved into
    ``watched`` (the directory of the file the secret references)."""
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            path_config_source=config_source_pb2.PathConfigSource(
                path=f"{sds_dir}/{sds_file_name(name)}",
                watched_directory=base_pb2.WatchedDirectory(path=watched),
            ),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def sds_file_name(secret: str) -> str:
    return f"{secret}.sds.json"


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def xds_sds_files(tls: XdsTls) -> dict[str, dict]:
    """The SDS files the bootstrap reads (file name in ``tls.sds_dir`` -> JSON content): each a
    DiscoveryResponse holding one Secret that names its data by file, so Envoy re-reads the data
    whenever the SDS file is reloaded."""
    secrets = [
        secret_pb2.Secret(
            name=XDS_TRUST_BUNDLE_SECRET,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=tls.bundle)
            ),
        )
    ]
    if tls.certificate is not None:
        chain, key = tls.certificate
        secrets.append(secret_pb2.Secret(
            name=XDS_CLIENT_CERTIFICATE_SECRET,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=chain),
                private_key=base_pb2.DataSource(filename=key),
            ),
        ))
    if tls.token is not None:
        secrets.append(secret_pb2.Secret(
            name=XDS_TOKEN_SECRET, generic_secret=secret_pb2.GenericSecret(secret=base_pb2.DataSource(filename=tls.token))
        ))
    return {
        sds_file_name(secret.name): json_format.MessageToDict(
            discovery_pb2.DiscoveryResponse(resources=[pack(secret)]), preserving_proto_field_name=True
        )
        for secret in secrets
    }


def _xds_tls_context(tls: XdsTls) -> tls_pb2.UpstreamTlsContext:
    san_type = common_pb2.SubjectAltNameMatcher.IP_ADDRESS if _is_ip(tls.server_name) else common_pb2.SubjectAltNameMatcher.DNS
    common = tls_pb2.CommonTlsContext(
        alpn_protocols=["h2"],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(san_type=san_type, matcher=string_pb2.StringMatcher(exact=tls.server_name))
                ]
            ),
            validation_context_sds_secret_config=_file_sds(XDS_TRUST_BUNDLE_SECRET, tls.sds_dir, _parent(tls.bundle)),
        ),
    )
    if tls.certificate is not None:
        common.tls_certificate_sds_secret_configs.append(
            _file_sds(XDS_CLIENT_CERTIFICATE_SECRET, tls.sds_dir, _parent(tls.certificate[0]))
        )
    return tls_pb2.UpstreamTlsContext(common_tls_context=common, sni="" if _is_ip(tls.server_name) else tls.server_name)


def _token_filters(tls: XdsTls) -> list[http_connection_manager_pb2.HttpFilter]:
    """Upstream filters of the xDS cluster: the token as ``authorization: Bearer`` on every stream."""
    assert tls.token is not None
    generic = struct_pb2.Struct()
    generic.update({
        "credential": json_format.MessageToDict(
            _file_sds(XDS_TOKEN_SECRET, tls.sds_dir, _parent(tls.token)), preserving_proto_field_name=True
        ),
        "header": TOKEN_HEADER,
        "header_value_prefix": TOKEN_PREFIX,
    })
    injector = credential_injector_pb2.CredentialInjector(
        overwrite=True,  # whatever else set the header, the token is what the server sees
        credential=extension_pb2.TypedExtensionConfig(
            name="envoy.http.injected_credentials.generic",
            typed_config=pack(typed_struct_pb2.TypedStruct(type_url=GENERIC_CREDENTIAL_TYPE, value=generic)),
        ),
    )
    return [
        http_connection_manager_pb2.HttpFilter(name="envoy.filters.http.credential_injector", typed_config=pack(injector)),
        http_connection_manager_pb2.HttpFilter(
            name="envoy.filters.http.upstream_codec", typed_config=pack(upstream_codec_pb2.UpstreamCodec())
        ),
    ]


def _xds_cluster(target: str, tls: XdsTls | None) -> cluster_pb2.Cluster:
    address = parse_xds_target(target)
    dns = address.HasField("socket_address") and not _is_ip(address.socket_address.address)
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                connection_keepalive=protocol_pb2.KeepaliveSettings(
                    interval=duration_pb2.Duration(seconds=30), timeout=duration_pb2.Duration(seconds=10)
                )
            )
        ),
        http_filters=_token_filters(tls) if tls is not None and tls.token is not None else [],
    )
    if tls is not None and tls.certificate is not None:
        # One ADS stream per connection: the server reads the client certificate of a connection, so a stream
        # refused for it (a revoked credential) must not be retried on the same connection with the same one;
        # the next stream makes a new handshake with the certificate the directory holds now (renewed).
        options.common_http_protocol_options.max_requests_per_connection.CopyFrom(wrappers_pb2.UInt32Value(value=1))
    transport = (
        base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(_xds_tls_context(tls)))
        if tls is not None else None
    )
    return cluster_pb2.Cluster(
        name=XDS_CLUSTER,
        transport_socket=transport,
        type=cluster_pb2.Cluster.STRICT_DNS if dns else cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_pb2.Duration(seconds=1),
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: pack(options)},
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=XDS_CLUSTER,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))
                    ]
                )
            ],
        ),
    )


#: Runtime flags every ztunnel needs. Envoy 1.40 resets (RST, SO_LINGER 0) a downstream connection
#: when the user-space connection to an internal listener closes, dropping response bytes still in
#: the pod's socket buffer: the service-VIP path (through the tunnel internal listeners) then fails with
#: ECONNRESET and flag UR. Found in the network-namespace world (tests/world).
RUNTIME_FLAGS = {"envoy.reloadable_features.enable_send_rst_on_user_space_socket": False}


def runtime_layers() -> bootstrap_pb2.LayeredRuntime:
    """Our flags as a static layer, plus an admin layer so operators can flip flags at /runtime_modify."""
    static = struct_pb2.Struct()
    static.update(RUNTIME_FLAGS)
    return bootstrap_pb2.LayeredRuntime(
        layers=[
            bootstrap_pb2.RuntimeLayer(name="zpilot", static_layer=static),
            bootstrap_pb2.RuntimeLayer(name="admin", admin_layer=bootstrap_pb2.RuntimeLayer.AdminLayer()),
        ]
    )


def _xds_retry_policy() -> base_pb2.RetryPolicy:
    """The ADS stream's reconnect back-off (see XDS_RETRY_MAX_MS)."""
    return base_pb2.RetryPolicy(retry_back_off=backoff_pb2.BackoffStrategy(
        base_interval=duration_pb2.Duration(nanos=XDS_RETRY_BASE_MS * 1_000_000),
        max_interval=duration_pb2.Duration(seconds=XDS_RETRY_MAX_MS // 1000, nanos=XDS_RETRY_MAX_MS % 1000 * 1_000_000),
    ))


def internal_listener_extension() -> extension_pb2.TypedExtensionConfig:
    """Mandatory for internal listeners, and only possible in the bootstrap (not over xDS)."""
    return extension_pb2.TypedExtensionConfig(
        name="envoy.bootstrap.internal_listener", typed_config=pack(internal_listener_pb2.InternalListener())
    )


def _admin_cluster(options: BootstrapOptions) -> cluster_pb2.Cluster:
    address = socket_address(options.admin_address, options.admin_port)
    return cluster_pb2.Cluster(
        name=ADMIN_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_pb2.Duration(seconds=1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=ADMIN_CLUSTER,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))]
            )],
        ),
    )


def readiness_listener(port: int) -> listener_pb2.Listener:
    """``GET /ready`` on ``0.0.0.0:port``, answered by the admin API (200 once Envoy is LIVE, 503
    before and while draining); any other method or path is a 404 that never reaches the admin API,
    whose other handlers can dump the config or stop Envoy."""
    ready = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(
            path=contract.READINESS_PATH,
            headers=[route_components_pb2.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact="GET"))],
        ),
        route=route_components_pb2.RouteAction(cluster=ADMIN_CLUSTER, timeout=duration_pb2.Duration(seconds=5)),
    )
    refuse = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        direct_response=route_components_pb2.DirectResponseAction(status=404),
    )
    manager = http_connection_manager_pb2.HttpConnectionManager(
        stat_prefix=contract.READINESS_LISTENER,
        route_config=route_pb2.RouteConfiguration(
            name=contract.READINESS_LISTENER,
            virtual_hosts=[route_components_pb2.VirtualHost(name="readiness", domains=["*"], routes=[ready, refuse])],
        ),
        http_filters=[http_connection_manager_pb2.HttpFilter(name="envoy.filters.http.router",
                                                             typed_config=pack(router_pb2.Router()))],
    )
    return listener_pb2.Listener(
        name=contract.READINESS_LISTENER,
        address=socket_address("0.0.0.0", port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[
            listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(manager))
        ])],
    )


#: The stats Envoy 1.40 makes at start for every cluster, whatever ``--cluster-stats`` says, besides its
#: traffic counters: its endpoints (``membership_*``), config updates (``update_*``, ``version``,
#: ``assignment_*``...), circuit breaker gauges and load balancer counters. 47 per cluster; a stat an
#: Envoy to come adds is kept (the list says what to leave out, not what to keep).
CLUSTER_BOOKKEEPING_STATS = (
    r"version_text|version|warming_state|max_host_weight|init_fetch_timeout|assignment_[a-z_]+|"
    r"circuit_breakers\.[a-z]+\.[a-z_]+|default\.total_match_count|internal_upstream\.no_metadata|"
    r"lb_[a-z_]+|membership_[a-z_]+|update_[a-z_]+"
)


#: The default tags whose value is a name zpilot makes, each as Envoy 1.40 extracts it (its source's
#: ``well_known_names.cc``: ``cluster.$.**`` and ``tcp.$.**`` in its tokens, the others the regexes here),
#: with ``{}`` where Envoy has ``[^.]+``, the value. Each regex's first group is taken out of the metric's
#: name, its second is the tag's value (Envoy's TagSpecifier).
#:
#: What they cost: Envoy runs a ``stats_tags`` regex with ``std::regex`` (libc++'s backtracking engine, not
#: RE2) on each stat it makes, in each scope that asks for it (every filter chain has its own: the 100
#: inbound chains of a node at R ask for the same HTTP connection manager and TLS stats 100 times), and only on
#: the names whose first token is the regex's literal first one (``^cluster\.``); a regex without one is tried
#: on every name. A search that fails costs most: the engine starts again at every character of the name,
#: allocating its state each time. So every regex here starts with a literal token, and the certificate's,
#: whose stats are a TLS listener's (the inbound chains', named by address) and a TLS cluster's (the tunnels'
#: and ``xds-grpc``), is given once for each, each failing on the first characters of any other listener or
#: cluster: Envoy takes two extractors of one tag name (the first that matches wins; no name starts with
#: both). Unanchored, it cost node-0's Envoy about 13% of its instructions to LIVE at R (docs/scale.md).
#:
#: A tunnel's ``ssl.ciphers.<cipher>`` is left to Envoy's ``cipher_suite`` extractor, which takes a cluster name
#: without dots only (a tunnel's has its identity's trust domain's): the cipher stays in the metric's name. A
#: regex of ours for it (``^cluster\.(?:<TLS cluster>)\.ssl\.ciphers(\.([\w-]+))$``) fails on nearly every cluster
#: stat, and a failing std::regex search starts again at every character: it cost node-0's Envoy 2,400 M more
#: instructions to LIVE at R (6,200 M without it, callgrind), where Envoy's own first looks for ``.ssl.ciphers.``.
NAME_TAGS: tuple[tuple[str, str], ...] = (
    # a service port's cluster's stats are cluster.svc.<name>.* (names.service_cluster_stat_name): "svc." out too
    ("envoy.cluster_name", r"^cluster\.((?:" + SERVICE_TCP_STATS_TOKEN + r"\.)?({})\.)"),
    # a linear service port's tcp_proxy stats are tcp.svc.<port>_<fqdn>.* (names.SERVICE_TCP_STATS_TOKEN), a node's
    # pods chain's tcp.pods.pods_on_<node>.* (names.POD_TCP_STATS_TOKEN), a tunnel chain's
    # tcp.tunnel.tunnel_[local_]<id>.* (names.TUNNEL_TCP_STATS_TOKEN): "svc.", "pods." and "tunnel." out too
    ("envoy.tcp_prefix", r"^tcp\.((?:(?:" + SERVICE_TCP_STATS_TOKEN + "|" + POD_TCP_STATS_TOKEN + "|" + TUNNEL_TCP_STATS_TOKEN
     + r")\.)?({})\.)"),
    ("envoy.xds_resource_name", r"^sds\.(({})\.)."),  # "." not ".+": the same matches, without a step per character
    ("envoy.tls_certificate", r"^listener\.(?:{address})\.ssl\.certificate\.(({})\.)"),
    # the TLS clusters' (TLS_CLUSTER_CERTIFICATE_TAG): only when their certificate stats are made
    # an address, or an internal listener's name: the article layout's are named after an identity
    ("envoy.listener_address", r"^listener\.(({})\.)"),
)
#: The certificate tag of a TLS cluster's stats (a tunnel's, ``xds-grpc``'s), given only when those are made: with
#: ``--service-stats all --pod-cluster-stats all`` (no exclusion list). Otherwise the tunnels' certificate stats are
#: left out (:data:`TUNNEL_CERTIFICATE_STATS`) and this regex is not given: it is tried on every ``cluster.*`` name
#: (the 2,100 hidden ``ClusterTrafficStats.initialized`` gauges at R, which Envoy makes and tags whatever its
#: matcher says) and fails on nearly all, about 100 K instructions each: 256 M of node-0's Envoy's instructions
#: to LIVE at R (5%, callgrind, docs/scale.md).
TLS_CLUSTER_CERTIFICATE_TAG = ("envoy.tls_certificate", r"^cluster\.(?:{tls_cluster})\.ssl\.certificate\.(({})\.)")
#: ``envoy.worker_id`` is left Envoy's (which knows a literal token to look for): taken whole, it too was
#: tried on every stat name (about 0.15 CPU-s to LIVE at R) for the article layout's internal listeners
#: alone, named after an identity, whose per-worker stats keep ``worker_<n>`` in their metric's name.
#: The values the tcp_proxy tag tries first, as literals: the names every inbound chain makes again in a stats
#: scope of its own (one chain per local pod, so about 2,000 of Envoy's tag extractions at R): its plaintext
#: tcp_proxy's (``tcp.virtual_inbound_plaintext.*``) and the HBONE chain's network RBAC (``tcp.`` then Envoy's
#: ``rbac.*``). Each is what the alternatives after it would take anyway (a word of no dot, no ``spiffe_``, and
#: not one service port's ``<port>_<name>.<namespace>.svc.``), but std::regex would first try the others on it,
#: one step per character each: about 100 M of Envoy's instructions to LIVE at R (docs/scale.md).
PER_CHAIN_TCP_STATS = (PLAINTEXT_PROXY_STAT_PREFIX, "rbac")
#: A listener's address in its stats' names, as Envoy's extractors spell it: ``<ipv4>_<port>`` or ``[<ipv6>]_<port>``.
LISTENER_ADDRESS = r"(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+"
#: The clusters with a TLS transport socket, as their stats name them: the tunnels to an identity
#: (``outbound_tunnel_clus_``, the article layout's ``outbound_pod_tunnel_clus_``... then the identity, its "://" written "_", its
#: ServiceAccount's name up to the ``.ssl.certificate.`` that follows it, dots and all) and the bootstrap's ADS
#: cluster (whose name holds no character a regex reads).
TLS_CLUSTER_STAT_NAME = rf"outbound_[a-z_]*tunnel_clus_{IDENTITY_IN_STATS}[a-z0-9.-]+?|{XDS_CLUSTER}"
#: The field of Envoy's StatsConfig (since 1.39) that lets a ``stats_tags`` entry replace Envoy's default
#: extractor of the same tag name (without it the default wins and the entry is ignored): xds-protos 1.85's
#: message lacks it, so :func:`bootstrap_document` adds it to the JSON Envoy reads.
MISSING_STATS_CONFIG_FIELDS = {"allow_default_tag_overrides": True}


def stats_tags(tls_cluster_certificates: bool = True) -> list[stats_pb2.TagSpecifier]:
    """The :data:`NAME_TAGS` taken whole from the names zpilot makes. Envoy's own extractors end a name at its
    first dot: a service port's cluster ``tcp-0_svc-0.ns-0.svc.cluster.local`` came out as
    ``envoy_cluster_ns_0_svc_cluster_local_upstream_cx_total{envoy_cluster_name="tcp-0_svc-0"}``, a metric per
    namespace; a pod's certificate (its identity's trust domain) a metric per pod. Every other default tag is
    Envoy's, as before. ``tls_cluster_certificates``: whether the TLS clusters' certificate stats are made (and
    so need the certificate tag too: :data:`TLS_CLUSTER_CERTIFICATE_TAG`)."""
    names = stat_name_tag_value(contract.CLUSTER_DOMAIN)
    value = {
        "envoy.tcp_prefix": "|".join([*map(re.escape, PER_CHAIN_TCP_STATS), names]),
        "envoy.xds_resource_name": SECRET_STAT_TAG_VALUE,
        "envoy.tls_certificate": SECRET_STAT_TAG_VALUE,
        # Envoy leaves the admin API's listener untagged (envoy_listener_admin_*)
        "envoy.listener_address": f"{LISTENER_ADDRESS}|{stat_name_tag_value(contract.CLUSTER_DOMAIN, any_name_but('admin'))}",
    }
    tags = [*NAME_TAGS, *([TLS_CLUSTER_CERTIFICATE_TAG] if tls_cluster_certificates else [])]
    return [stats_pb2.TagSpecifier(tag_name=tag, regex=regex.format(value.get(tag, names), address=LISTENER_ADDRESS,
                                                                     tls_cluster=TLS_CLUSTER_STAT_NAME))
            for tag, regex in tags]


def _regex(pattern: str) -> string_pb2.StringMatcher:
    """A stat-name matcher (RE2, matching the whole name)."""
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


#: The tunnels' certificate stats (``cluster.outbound_tunnel_clus_<identity>.ssl.certificate.<secret>.*``, and the
#: article layout's pod tunnels'): the expiry of a local pod's certificate and of the root CA, which the inbound listener's
#: ``listener.<address>.ssl.certificate.<secret>.expiration_unix_time_seconds`` gives for the same secrets (a
#: tunnel presents a local pod's certificate of its identity; every local pod has its inbound chain), tagged. Left
#: out so that the certificate tag need not be tried on every cluster stat (:data:`TLS_CLUSTER_CERTIFICATE_TAG`);
#: untagged, each would be a metric of its own per pod certificate. ``xds-grpc``'s (the node's ADS client
#: certificate, ``--tls``) stays, untagged: its secret has a fixed name (``xds-client-certificate``).
TUNNEL_CERTIFICATE_STATS = rf"cluster\.outbound_[a-z_]*tunnel_clus_{IDENTITY_IN_STATS}[^/]+?\.ssl\.certificate\..+"
#: A tunnel cluster's bookkeeping stats (``cluster.outbound_[a-z_]*tunnel_clus_<identity>.membership_total`` and the
#: like; either layout's): left out unless every stat is asked for, its traffic counters kept, as a service port's
#: and a pods cluster's are by default. A node has a tunnel cluster per local identity (the article layout three),
#: and a real node hosts many identities (R's node-0: 100; round twelve's two clusters each made 9,400 such names):
#: 850 M of its Envoy's 6,640 M instructions to LIVE at R (callgrind, docs/scale.md, round twelve).
TUNNEL_CLUSTER_BOOKKEEPING = (rf"cluster\.outbound_[a-z_]*tunnel_clus_{IDENTITY_IN_STATS}[^/]+?"
                              rf"\.(?:{CLUSTER_BOOKKEEPING_STATS})")
#: A service port's cluster's stat name (``names.service_cluster_stat_name``: ``svc.<port>_<fqdn>``, the article
#: layout's ``svc.<identity>_to_<port>_<fqdn>_outbound_internal``) and what follows it in a stat's name: the
#: names matched before round ten, after the token.
SERVICE_CLUSTER_STAT_NAME = rf"{SERVICE_TCP_STATS_TOKEN}\.{SERVICE_PORT_STAT_NAME}{SERVICE_PORT_STAT_REST}"
#: A ``pods_on_<node>`` cluster's name and what follows it in a stat's name (a node's name has no "/").
POD_CLUSTER_STAT_NAME = rf"{re.escape(PODS_ON_PREFIX)}[^/]*"


def stats_config(service_stats: str, pod_cluster_stats: str = contract.DEFAULT_POD_CLUSTER_STATS) -> stats_pb2.StatsConfig:
    """The stat tags (:func:`stats_tags`), and the stats each service port's cluster and tcp_proxy
    (``contract.SERVICE_STATS``) and each node's pods cluster (``contract.POD_CLUSTER_STATS``) are kept from
    making, as an exclusion list: Envoy makes every other stat as usual. A stat left out is never made (a no-op
    stands for it), nor are its tags taken; Envoy matches a name when first asked for it and remembers the
    answer. The list matches the stat's full name, from which the tags are then taken."""
    every = service_stats == "all" and pod_cluster_stats == "all"
    config = stats_pb2.StatsConfig(stats_tags=stats_tags(tls_cluster_certificates=every))
    patterns: list[string_pb2.StringMatcher] = []
    # one regex, not one per kind: Envoy tries each pattern on each stat it makes (in every scope, so each
    # inbound chain's again), and an RE2 match costs its call whether it fails at the first character or not
    alternatives: list[str] = []
    if service_stats != "all":
        # a service port's tcp_proxy (tcp.svc.*), by a prefix: Envoy leaves out a name that starts with it as it
        # stands, before its regexes, which need the name made a string (2,000 scopes at R, 16 each)
        patterns.append(string_pb2.StringMatcher(prefix=f"tcp.{SERVICE_TCP_STATS_TOKEN}."))
        if service_stats == "none":  # and its cluster (cluster.svc.*: names.service_cluster_stat_name), likewise
            patterns.append(string_pb2.StringMatcher(prefix=f"cluster.{SERVICE_TCP_STATS_TOKEN}."))
    if pod_cluster_stats == "traffic":  # each node's pods chain's tcp_proxy (tcp.pods.pods_on_<node>.*), by a prefix
        patterns.append(string_pb2.StringMatcher(prefix=f"tcp.{POD_TCP_STATS_TOKEN}."))
    # the clusters that keep their traffic counters and none of their bookkeeping
    traffic_only = ([SERVICE_CLUSTER_STAT_NAME] if service_stats == "traffic" else []) + (
        [POD_CLUSTER_STAT_NAME] if pod_cluster_stats == "traffic" else [])
    if traffic_only:
        alternatives.append(rf"cluster\.(?:{'|'.join(traffic_only)})\.(?:{CLUSTER_BOOKKEEPING_STATS})")
    if not every:
        # the linear tunnel chains' tcp_proxies (tcp.tunnel.*), by a prefix: their clusters' traffic counters count
        # the same connections and bytes (names.TUNNEL_TCP_STATS_TOKEN)
        patterns.append(string_pb2.StringMatcher(prefix=f"tcp.{TUNNEL_TCP_STATS_TOKEN}."))
        # alternatives more in a regex Envoy runs on each name anyway (never the only one): the tunnels' certificate
        # stats and their clusters' bookkeeping (TUNNEL_CLUSTER_BOOKKEEPING)
        alternatives += [TUNNEL_CERTIFICATE_STATS, TUNNEL_CLUSTER_BOOKKEEPING]
    if alternatives:
        patterns.append(_regex("|".join(alternatives)))
    if patterns:
        config.stats_matcher.CopyFrom(stats_pb2.StatsMatcher(exclusion_list=string_pb2.ListStringMatcher(patterns=patterns)))
    return config


def check_stats_options(service_stats: str, pod_cluster_stats: str, cluster_stats: str) -> None:
    """ValueError naming the first of the bootstrap's stats settings that is none of its values."""
    for what, value, allowed in (("cluster stats", cluster_stats, contract.CLUSTER_STATS),
                                 ("service stats", service_stats, contract.SERVICE_STATS),
                                 ("pod cluster stats", pod_cluster_stats, contract.POD_CLUSTER_STATS)):
        if value not in allowed:
            raise ValueError(f"{what} {value!r} is not one of {', '.join(allowed)}")


def with_missing_fields(document: dict) -> dict:
    """``document`` (a bootstrap as JSON) with the fields Envoy 1.40 reads that xds-protos cannot express."""
    document.setdefault("stats_config", {}).update(MISSING_STATS_CONFIG_FIELDS)
    return document


def bootstrap_document(options: BootstrapOptions) -> dict:
    """The bootstrap as Envoy reads it (what ``zpilot bootstrap`` prints): :func:`bootstrap` as JSON, with
    :func:`with_missing_fields`."""
    return with_missing_fields(json_format.MessageToDict(bootstrap(options), preserving_proto_field_name=True))


def _static_resources(options: BootstrapOptions) -> bootstrap_pb2.Bootstrap.StaticResources:
    clusters = [_xds_cluster(options.xds, options.tls)]
    if options.readiness_port is None:
        return bootstrap_pb2.Bootstrap.StaticResources(clusters=clusters)
    return bootstrap_pb2.Bootstrap.StaticResources(
        clusters=[*clusters, _admin_cluster(options)], listeners=[readiness_listener(options.readiness_port)])


def bootstrap(options: BootstrapOptions) -> bootstrap_pb2.Bootstrap:
    if options.readiness_port is not None and not 0 < options.admin_port < 65536:
        raise ValueError("a readiness port forwards to the admin API: give the admin API a fixed port")
    check_stats_options(options.service_stats, options.pod_cluster_stats, options.cluster_stats)
    metadata = struct_pb2.Struct()
    metadata.update({contract.NODE_NAME_METADATA: options.node, "GENERATOR": "zpilot", "AMBIENT_TYPE": "ztunnel"})
    api_type = config_source_pb2.ApiConfigSource.DELTA_GRPC if options.delta else config_source_pb2.ApiConfigSource.GRPC
    return bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(
            id=options.node_id or contract.node_id(options.node), cluster=contract.NODE_CLUSTER, metadata=metadata
        ),
        admin=bootstrap_pb2.Admin(address=socket_address(options.admin_address, options.admin_port)),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=api_type,
                transport_api_version=config_source_pb2.V3,
                grpc_services=[grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                    cluster_name=XDS_CLUSTER, retry_policy=_xds_retry_policy()))],
                set_node_on_first_message_only=True,
            ),
            cds_config=ads_source(),
            lds_config=ads_source(),
        ),
        static_resources=_static_resources(options),
        # A cluster's per-worker state (its load balancer, its host sets) is made on the worker's first
        # connection to it, not for every worker at start: most of a node's clusters never see one
        # (about 4 MiB per worker at issue 13's R). Envoy defers the cluster types that allow it and
        # makes the others as before.
        cluster_manager=bootstrap_pb2.ClusterManager(enable_deferred_cluster_creation=True),
        deferred_stat_options=bootstrap_pb2.Bootstrap.DeferredStatOptions(
            enable_deferred_creation_stats=options.cluster_stats == "lazy"
        ),
        stats_config=stats_config(options.service_stats, options.pod_cluster_stats),
        bootstrap_extensions=[internal_listener_extension()],
        layered_runtime=runtime_layers(),
    )
