"""The Envoy bootstrap of one node's ztunnel: who it is, where its ADS server is, and the
one piece of config that cannot travel over xDS (the internal listener extension)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from google.protobuf import duration_pb2, struct_pb2

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, extension_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.bootstrap.internal_listener.v3 import internal_listener_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from .. import contract
from .clusters import HTTP_PROTOCOL_OPTIONS
from .envoy_common import ads_source, pack, socket_address

XDS_CLUSTER = "xds-grpc"


@dataclass(frozen=True)
class BootstrapOptions:
    node: str
    xds: str  # "host:port", "[v6]:port" or "unix:/path"
    node_id: str | None = None  # default contract.node_id(node)
    admin_address: str = contract.ADMIN_ADDRESS
    admin_port: int = contract.PORT_ADMIN
    delta: bool = False


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


def _xds_cluster(target: str) -> cluster_pb2.Cluster:
    address = parse_xds_target(target)
    dns = address.HasField("socket_address") and not _is_ip(address.socket_address.address)
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                connection_keepalive=protocol_pb2.KeepaliveSettings(
                    interval=duration_pb2.Duration(seconds=30), timeout=duration_pb2.Duration(seconds=10)
                )
            )
        )
    )
    return cluster_pb2.Cluster(
        name=XDS_CLUSTER,
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


def internal_listener_extension() -> extension_pb2.TypedExtensionConfig:
    """Mandatory for internal listeners, and only possible in the bootstrap (not over xDS)."""
    return extension_pb2.TypedExtensionConfig(
        name="envoy.bootstrap.internal_listener", typed_config=pack(internal_listener_pb2.InternalListener())
    )


def bootstrap(options: BootstrapOptions) -> bootstrap_pb2.Bootstrap:
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
                grpc_services=[grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER))],
                set_node_on_first_message_only=True,
            ),
            cds_config=ads_source(),
            lds_config=ads_source(),
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=[_xds_cluster(options.xds)]),
        bootstrap_extensions=[internal_listener_extension()],
        layered_runtime=runtime_layers(),
    )
