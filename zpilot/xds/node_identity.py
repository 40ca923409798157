"""Which node a stream serves, from the Envoy ``Node`` of its first request.

Rules, in order (documented in docs/xds-server.md):

1. the node metadata key :data:`zpilot.contract.NODE_NAME_METADATA` (a string): what
   ``zpilot bootstrap`` writes, and what Istio's ztunnel bootstrap set from the downward API;
2. otherwise the node id: a :func:`zpilot.contract.node_id` gives its node (the part after the
   prefix, up to the next ``~`` if there is one), any other id is taken as the node name itself;
3. a request with neither is refused: the stream is closed with INVALID_ARGUMENT.
"""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Node

from .. import contract


class NodeIdentityError(ValueError):
    """The first request does not say which node it is for."""


def node_name(node: Node) -> str:
    """The Kubernetes node name a stream serves (see the module docstring for the rules)."""
    key = contract.NODE_NAME_METADATA
    field = node.metadata.fields.get(key) if node.HasField("metadata") else None
    if field is not None:
        if field.WhichOneof("kind") == "string_value" and field.string_value.strip():
            return field.string_value.strip()
        raise NodeIdentityError(f"node metadata {key} must be a non-empty string")
    node_id = node.id.strip()
    named = contract.node_of_id(node_id)
    if named:
        return named
    if node_id:
        return node_id
    raise NodeIdentityError(f"the first request names no node: set node metadata {key} or node.id")
