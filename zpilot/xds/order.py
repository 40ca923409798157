"""Which xDS types this server serves, in which order, and how each type is subscribed.

The order is make-before-break (xds-protocol-notes.md): clusters first, then their endpoints,
then the secrets listeners and clusters need, listeners last, so that nothing Envoy receives
refers to something it does not have yet. Every push and every reconnect follows it.
"""

from __future__ import annotations

from typing import Iterable

from ..translators.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER, SECRET_TYPE

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "LISTENER_TYPE",
    "SECRET_TYPE",
    "PUSH_ORDER",
    "SERVED_TYPES",
    "WILDCARD_TYPES",
    "PARTIAL_TYPES",
    "SHORT_NAMES",
    "short_name",
    "in_push_order",
]

#: Types this server serves; any other type URL is refused with a clear error.
SERVED_TYPES = frozenset(PUSH_ORDER)

#: Types whose SotW responses carry the full state and which a client may subscribe to as a
#: wildcard (by never naming a resource, or by naming "*"). EDS and SDS are only ever by name.
WILDCARD_TYPES = frozenset({LISTENER_TYPE, CLUSTER_TYPE})

#: Types whose SotW responses carry only the resources that changed since the stream last sent
#: them (the protocol allows it for every type but LDS and CDS): Envoy applies each
#: ClusterLoadAssignment a response carries to its cluster and leaves the other clusters' as they
#: are. SDS stays whole: a node has a few secrets, and they change together.
PARTIAL_TYPES = frozenset({ENDPOINT_TYPE})

#: The names Envoy's docs, metrics and istioctl use for each type.
SHORT_NAMES = {CLUSTER_TYPE: "CDS", ENDPOINT_TYPE: "EDS", SECRET_TYPE: "SDS", LISTENER_TYPE: "LDS"}

_RANK = {type_url: i for i, type_url in enumerate(PUSH_ORDER)}


def short_name(type_url: str) -> str:
    """``CDS`` for the cluster type URL; the last path element for types we do not serve."""
    return SHORT_NAMES.get(type_url) or type_url.rsplit("/", 1)[-1] or "(empty)"


def in_push_order(type_urls: Iterable[str]) -> list[str]:
    """The given served types sorted CDS, EDS, SDS, LDS (unknown ones are dropped)."""
    return sorted((t for t in set(type_urls) if t in _RANK), key=_RANK.__getitem__)
