"""Clusters: the fixed ones every ztunnel has, the per-identity HBONE tunnel clusters, and the
EDS clusters of service ports."""

from __future__ import annotations

from google.protobuf import duration_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.metadata.v3 import metadata_pb2

from .. import contract
from . import names
from .envoy_common import ads_source, pack, raw_buffer, struct
from .limits import DataPathLimits, circuit_breakers, http_idle_options
from .tls import upstream_tls

Cluster = cluster_pb2.Cluster
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _seconds(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value)


def virtual_inbound(limits: DataPathLimits) -> Cluster:
    """Dials the ``x-envoy-original-dst-host`` header of a CONNECT (or, plaintext, the original destination)."""
    return Cluster(
        name=names.VIRTUAL_INBOUND,
        type=Cluster.ORIGINAL_DST,
        lb_policy=Cluster.CLUSTER_PROVIDED,
        original_dst_lb_config=Cluster.OriginalDstLbConfig(use_http_header=True),
        circuit_breakers=circuit_breakers(limits),
    )


def passthrough(limits: DataPathLimits) -> Cluster:
    return Cluster(
        name=names.PASSTHROUGH_CLUSTER,
        type=Cluster.ORIGINAL_DST,
        lb_policy=Cluster.CLUSTER_PROVIDED,
        connect_timeout=_seconds(10),
        circuit_breakers=circuit_breakers(limits),
    )


def blackhole() -> Cluster:
    return Cluster(
        name=names.BLACKHOLE_CLUSTER,
        type=Cluster.STATIC,
        connect_timeout=_seconds(10),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=names.BLACKHOLE_CLUSTER),
    )


def hbone_tunnel(
    name: str, secret_name: str, trust_domain: str, limits: DataPathLimits, *, port_override: int | None = None
) -> Cluster:
    """An ORIGINAL_DST cluster speaking HTTP/2 CONNECT over mutual TLS 1.3 to a peer ztunnel.

    It dials the address its chain put in filter state (``filter_state.UPSTREAM_ADDRESS_STATE``: the
    linear layout's tunnel chains), else the one the internal listener's original_dst filter restored
    (the article's, from endpoint metadata); with ``port_override``, that address's IP on that port.
    Each tunnelled connection is one request (a CONNECT stream) here: ``max_requests`` bounds them.
    """
    options = http_protocol_options_pb2.HttpProtocolOptions(
        common_http_protocol_options=http_idle_options(limits),
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(allow_connect=True)
        ),
    )
    cluster = Cluster(
        name=name,
        type=Cluster.ORIGINAL_DST,
        lb_policy=Cluster.CLUSTER_PROVIDED,
        connect_timeout=_seconds(2),
        cleanup_interval=_seconds(60),
        transport_socket=upstream_tls(secret_name, trust_domain),
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: pack(options)},
        circuit_breakers=circuit_breakers(limits),
    )
    if port_override is not None:
        cluster.original_dst_lb_config.upstream_port_override.value = port_override
    return cluster


def _internal_upstream(passthrough_keys: tuple[str, ...], cluster_keys: tuple[str, ...] = ()) -> base_pb2.TransportSocket:
    """To an internal listener, handing it the endpoint metadata under ``passthrough_keys``, and
    the cluster's under ``cluster_keys``, listed first: Envoy copies each namespace in order, so an
    endpoint's own namespace of the same name replaces the cluster's."""
    sources = [(_cluster_kind(), key) for key in cluster_keys] + [(_host_kind(), key) for key in passthrough_keys]
    internal = internal_upstream_pb2.InternalUpstreamTransport(
        passthrough_metadata=[
            internal_upstream_pb2.InternalUpstreamTransport.MetadataValueSource(kind=kind, name=key)
            for kind, key in sources
        ],
        transport_socket=raw_buffer(),
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.internal_upstream", typed_config=pack(internal))


def service_port(
    name: str,
    limits: DataPathLimits,
    *,
    passthrough: tuple[str, ...] = (contract.TUNNEL_METADATA, contract.ORIGINAL_DST_FILTER),
    match_by_metadata: bool = True,
    metadata: base_pb2.Metadata | None = None,
    cluster_passthrough: tuple[str, ...] = (),
) -> Cluster:
    """The EDS cluster of a service port (in the article's layout, per source identity): mesh
    endpoints go through an internal listener (``contract.TUNNEL_PROTOCOL``), which gets their ``passthrough``
    metadata; others go straight to the pod in plain TCP.

    With ``match_by_metadata`` (the article's dump) each mesh endpoint says so in its metadata and
    picks ``internal_upstream``; without it (the linear layout) every endpoint takes that one socket:
    it wraps a raw buffer and hands metadata on only on a connection to an internal listener, so to
    a plain endpoint (a socket address) it is that raw buffer, and no endpoint need say anything.
    There the namespaces ``cluster_passthrough`` of the cluster's ``metadata`` (what all its mesh
    endpoints would say alike) are handed on too, unless an endpoint has its own."""
    cluster = Cluster(
        name=name,
        type=Cluster.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(eds_config=_eds_source()),
        circuit_breakers=circuit_breakers(limits),
    )
    if not match_by_metadata:
        if metadata is not None:
            cluster.metadata.CopyFrom(metadata)
        cluster.transport_socket.CopyFrom(_internal_upstream(passthrough, cluster_passthrough))
        return cluster
    cluster.transport_socket_matches.extend(
        [
            Cluster.TransportSocketMatch(
                name="internal_upstream",
                match=struct(contract.TUNNEL_PROTOCOL),
                transport_socket=_internal_upstream(passthrough),
            ),
            Cluster.TransportSocketMatch(name="tlsMode-disabled", match=struct({}), transport_socket=raw_buffer()),
        ]
    )
    return cluster


def internal_listener_cluster(
    name: str, listener: str, limits: DataPathLimits, *, metadata: base_pb2.Metadata | None = None
) -> Cluster:
    """A STATIC cluster whose one endpoint is the internal listener ``listener`` (the linear
    layout's way to it for pod-IP destinations of one identity); the endpoint's ``metadata``
    (its ``contract.TUNNEL_METADATA`` namespace) is handed to the listener."""
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                envoy_internal_address=address_pb2.EnvoyInternalAddress(server_listener_name=listener)
            )
        )
    )
    if metadata is not None:
        endpoint.metadata.CopyFrom(metadata)
    return Cluster(
        name=name,
        type=Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]
        ),
        transport_socket=_internal_upstream((contract.TUNNEL_METADATA,) if metadata is not None else ()),
        circuit_breakers=circuit_breakers(limits),
    )


def _eds_source():
    source = ads_source()
    source.initial_fetch_timeout.CopyFrom(_seconds(0))
    return source


def _host_kind() -> metadata_pb2.MetadataKind:
    return metadata_pb2.MetadataKind(host=metadata_pb2.MetadataKind.Host())


def _cluster_kind() -> metadata_pb2.MetadataKind:
    return metadata_pb2.MetadataKind(cluster=metadata_pb2.MetadataKind.Cluster())
