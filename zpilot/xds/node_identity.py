"""Which node a stream serves, from the Envoy ``Node`` of its first request.

Rules, in order (documented in docs/xds-server.md):

1. the node metadata key :data:`zpilot.contract.NODE_NAME_METADATA` (a string): what
   ``zpilot bootstrap`` writes, and what Istio's ztunnel bootstrap set from the downward API;
2. otherwise the node id: a :func:`zpilot.contract.node_id` gives its node (the part after the
   prefix, up to the next ``~`` if there is one), any other id is taken as the node name itself;
3. a request with neither is refused: the stream is closed with INVALID_ARGUMENT.

A name longer than a Kubernetes node name can be (253 characters) is refused the same way.
"""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Node

from .. import contract

#: A Kubernetes node name is a DNS subdomain: at most 253 characters.
MAX_NODE_NAME = 253


class NodeIdentityError(ValueError):
    """The first request does not say which node it is for."""


def node_name(node: Node) -> str:
    """The Kubernetes node name a stream serves (see the module docstring for the rules)."""
    field = node.metadata.fields.get(contract.NODE_NAME_METADATA) if node.HasField("metadata") else None
    if field is None:
        metadata_name = None
    else:
        metadata_name = field.string_value if field.WhichOneof("kind") == "string_value" else ""
    return resolve_node_name(node.id, metadata_name)


def resolve_node_name(node_id: str, metadata_name: str | None) -> str:
    """The rules on the two values they read: the node id and the metadata value (None when
    absent, "" when present but not a string)."""
    key = contract.NODE_NAME_METADATA
    if metadata_name is not None:
        if not metadata_name.strip():
            raise NodeIdentityError(f"node metadata {key} must be a non-empty string")
        return _checked(metadata_name.strip())
    node_id = node_id.strip()
    named = contract.node_of_id(node_id)
    if named:
        return _checked(named)
    if node_id:
        return _checked(node_id)
    raise NodeIdentityError(f"the first request names no node: set node metadata {key} or node.id")


def _checked(name: str) -> str:
    if len(name) > MAX_NODE_NAME:
        raise NodeIdentityError(
            f"node name of {len(name)} characters: a Kubernetes node name has at most {MAX_NODE_NAME}"
        )
    return name
