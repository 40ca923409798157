"""Which node a stream serves, from the Envoy ``Node`` of its first request.

Rules, in order (documented in docs/xds-server.md):

1. metadata ``NODE_NAME`` (a string): what ``zpilot bootstrap`` writes, and what Istio's ztunnel
   bootstrap set from the downward API;
2. otherwise the node id: ``ztunnel~<node>`` gives ``<node>`` (the part after the first ``~``,
   up to the next ``~`` if there is one), any other id is taken as the node name itself;
3. a request with neither is refused: the stream is closed with INVALID_ARGUMENT.
"""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Node

NODE_NAME_KEY = "NODE_NAME"
ID_PREFIX = "ztunnel~"


class NodeIdentityError(ValueError):
    """The first request does not say which node it is for."""


def node_name(node: Node) -> str:
    """The Kubernetes node name a stream serves (see the module docstring for the rules)."""
    field = node.metadata.fields.get(NODE_NAME_KEY) if node.HasField("metadata") else None
    if field is not None:
        if field.WhichOneof("kind") == "string_value" and field.string_value.strip():
            return field.string_value.strip()
        raise NodeIdentityError(f"node metadata {NODE_NAME_KEY} must be a non-empty string")
    node_id = node.id.strip()
    if node_id.startswith(ID_PREFIX):
        name = node_id[len(ID_PREFIX) :].split("~", 1)[0]
        if name:
            return name
    if node_id:
        return node_id
    raise NodeIdentityError(f"the first request names no node: set node metadata {NODE_NAME_KEY} or node.id")
