"""Our intent in the shape of Envoy's own ``/config_dump?include_eds``.

``zpilot render`` prints it, the debug API serves it, and ``zpilot diff`` compares it with what
a live Envoy reports. Built from Envoy's admin protos (``envoy.admin.v3``), so the JSON is the
same protojson Envoy emits. Private keys are always redacted the way Envoy redacts them.
"""

from __future__ import annotations

from typing import Any, Mapping

from google.protobuf import json_format
from google.protobuf.message import Message

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from ..certs.secrets import redact_secret
from ..translators.envoy_common import pack
from ..translators.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    SECRET_TYPE,
    NodeResources,
    content_version,
)

Versions = Mapping[tuple[str, str], str]  # (type URL, resource name) -> version


def _version(versions: Versions | None, type_url: str, name: str, resource: Message) -> str:
    if versions is not None and (type_url, name) in versions:
        return versions[(type_url, name)]
    return content_version(resource)


def config_dump_message(
    resources: NodeResources,
    secrets: Mapping[str, secret_pb2.Secret] | None = None,
    versions: Versions | None = None,
) -> config_dump_pb2.ConfigDump:
    shared = config_dump_shared_pb2
    clusters = shared.ClustersConfigDump()
    for name in sorted(resources.clusters):
        c = resources.clusters[name]
        clusters.dynamic_active_clusters.add(version_info=_version(versions, CLUSTER_TYPE, name, c), cluster=pack(c))
    listeners = shared.ListenersConfigDump()
    for name in sorted(resources.listeners):
        lis = resources.listeners[name]
        entry = listeners.dynamic_listeners.add(name=name)
        entry.active_state.version_info = _version(versions, LISTENER_TYPE, name, lis)
        entry.active_state.listener.CopyFrom(pack(lis))
    endpoints = shared.EndpointsConfigDump()
    for name in sorted(resources.endpoints):
        cla = resources.endpoints[name]
        endpoints.dynamic_endpoint_configs.add(
            version_info=_version(versions, ENDPOINT_TYPE, name, cla), endpoint_config=pack(cla)
        )
    secret_dump = config_dump_pb2.SecretsConfigDump()
    for name in sorted((secrets or {}).keys()):
        secret = redact_secret(secrets[name])  # type: ignore[index]
        secret_dump.dynamic_active_secrets.add(
            name=name, version_info=_version(versions, SECRET_TYPE, name, secrets[name]), secret=pack(secret)  # type: ignore[index]
        )
    dump = config_dump_pb2.ConfigDump()
    for part in (clusters, listeners, secret_dump, endpoints):
        dump.configs.add().CopyFrom(pack(part))
    return dump


def config_dump(
    resources: NodeResources,
    secrets: Mapping[str, secret_pb2.Secret] | None = None,
    versions: Versions | None = None,
) -> dict[str, Any]:
    """The config dump as JSON-ready data (protojson, proto field names, as Envoy prints it)."""
    return json_format.MessageToDict(
        config_dump_message(resources, secrets, versions), preserving_proto_field_name=True
    )
