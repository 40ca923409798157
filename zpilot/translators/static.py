"""A node's resources as one static Envoy bootstrap, with no control plane behind it.

``envoy --mode validate`` runs Envoy's full config validation on a static bootstrap only, and a
static bootstrap can't fetch over ADS, so: EDS clusters get their load assignment inline, and
SDS references lose their ``sds_config`` and resolve to static secrets of the same name (an
SDS-over-ADS reference in validate mode crashes Envoy 1.40; stock-envoy-notes.md).

Its stats settings are the ADS bootstrap's (:mod:`.bootstrap`: the stat tags that take zpilot's names whole,
the stats each service port is kept from making, the traffic counters made on first use), so a static
ztunnel's ``/stats`` and ``/stats/prometheus`` read as one fed over ADS does.
"""

from __future__ import annotations

from typing import Callable, Mapping

from google.protobuf import any_pb2, json_format, message_factory, symbol_database
from google.protobuf.message import Message

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from .. import contract
from .bootstrap import check_stats_options, internal_listener_extension, runtime_layers, stats_config, with_missing_fields
from .envoy_common import pack, socket_address
from .resources import NodeResources


def _unpack(packed: any_pb2.Any) -> Message | None:
    type_name = packed.type_url.rpartition("/")[2]
    try:
        descriptor = symbol_database.Default().pool.FindMessageTypeByName(type_name)
    except KeyError:
        return None
    message = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(message)
    return message


def rewrite(message: Message, visit: Callable[[Message], None]) -> None:
    """Call ``visit`` on ``message`` and every message inside it, looking into ``Any`` fields."""
    visit(message)
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = [v for v in value.values() if isinstance(v, Message)]
        elif field.is_repeated:
            values = list(value)
        else:
            values = [value]
        for item in values:
            if isinstance(item, any_pb2.Any):
                inner = _unpack(item)
                if inner is not None:
                    rewrite(inner, visit)
                    item.CopyFrom(pack(inner))
            else:
                rewrite(item, visit)


def _drop_sds_source(message: Message) -> None:
    if isinstance(message, secret_pb2.SdsSecretConfig):
        message.ClearField("sds_config")


def static_bootstrap(
    resources: NodeResources,
    secrets: Mapping[str, secret_pb2.Secret],
    *,
    admin_port: int = contract.PORT_ADMIN,
    service_stats: str = contract.DEFAULT_SERVICE_STATS,
    cluster_stats: str = contract.DEFAULT_CLUSTER_STATS,
    pod_cluster_stats: str = contract.DEFAULT_POD_CLUSTER_STATS,
) -> bootstrap_pb2.Bootstrap:
    """``resources`` and ``secrets`` as one static bootstrap; ``service_stats``, ``cluster_stats`` and
    ``pod_cluster_stats`` as ``zpilot bootstrap``'s flags of those names (:class:`.bootstrap.BootstrapOptions`).
    As JSON, Envoy needs the fields xds-protos lacks: :func:`static_bootstrap_document`."""
    check_stats_options(service_stats, pod_cluster_stats, cluster_stats)
    boot = bootstrap_pb2.Bootstrap(
        admin=bootstrap_pb2.Admin(address=socket_address(contract.ADMIN_ADDRESS, admin_port)),
        bootstrap_extensions=[internal_listener_extension()],
        layered_runtime=runtime_layers(),
        stats_config=stats_config(service_stats, pod_cluster_stats),
        deferred_stat_options=bootstrap_pb2.Bootstrap.DeferredStatOptions(
            enable_deferred_creation_stats=cluster_stats == "lazy"
        ),
    )
    boot.node.id = contract.node_id(resources.node)
    boot.node.cluster = contract.NODE_CLUSTER
    static = boot.static_resources
    for name in sorted(resources.listeners):
        static.listeners.add().CopyFrom(resources.listeners[name])
    for name in sorted(resources.clusters):
        cluster = static.clusters.add()
        cluster.CopyFrom(resources.clusters[name])
        if cluster.type == cluster_pb2.Cluster.EDS:
            cluster.type = cluster_pb2.Cluster.STATIC
            cluster.ClearField("eds_cluster_config")
            cluster.load_assignment.CopyFrom(resources.endpoints[name])
    for name in sorted(secrets):
        static.secrets.add().CopyFrom(secrets[name])
    rewrite(static, _drop_sds_source)
    return boot


def static_bootstrap_document(resources: NodeResources, secrets: Mapping[str, secret_pb2.Secret], **options) -> dict:
    """The static bootstrap as Envoy reads it (what ``zpilot render --static`` prints): :func:`static_bootstrap`
    as JSON, with :func:`.bootstrap.with_missing_fields` (without ``allow_default_tag_overrides`` Envoy would
    keep its own tag extractors and ignore the stat tags)."""
    return with_missing_fields(
        json_format.MessageToDict(static_bootstrap(resources, secrets, **options), preserving_proto_field_name=True)
    )
