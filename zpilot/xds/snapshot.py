"""One node's resources, serialized once and versioned by content.

A :class:`Snapshot` is immutable: the producer builds a new one for every change and the cache
swaps it in, so a stream reading a snapshot never sees half an update. Each resource carries a
version that is a hash of its serialized bytes; a type's version is a hash of its names and
resource versions. Equal content therefore means equal versions, which is how "nothing changed
for this node" is detected without comparing protobufs, and how delta xDS avoids resending
unchanged resources.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Iterable, Mapping

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf import any_pb2
from google.protobuf.message import Message

from ..translators.resources import NodeResources, SecretRef
from . import wire
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER, SECRET_TYPE

#: The message class of each served type, to parse cached bytes back.
_MESSAGES: dict[str, type[Message]] = {
    LISTENER_TYPE: Listener, CLUSTER_TYPE: Cluster, ENDPOINT_TYPE: ClusterLoadAssignment, SECRET_TYPE: Secret,
}

_EMPTY: Mapping[str, "CachedResource"] = MappingProxyType({})


def content_version(data: bytes) -> str:
    """A short, stable content hash (64 bits is plenty to tell versions of one resource apart)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True)
class CachedResource:
    """A resource ready to send: pre-encoded as a response entry, with the hash of its content.

    ``entry`` is the resource exactly as it appears in a SotW ``DiscoveryResponse.resources``
    (field tag and length, then the serialized ``Any``), so a response is one ``b"".join``.
    """

    name: str
    type_url: str
    version: str
    entry: bytes
    header: int  # bytes of tag and length in front of the Any

    @classmethod
    def of(cls, type_url: str, name: str, message: Message) -> "CachedResource":
        # deterministic: map fields (Struct metadata) in a stable order, so equal config hashes equal
        value = message.SerializeToString(deterministic=True)
        any_value = wire.any_bytes(type_url, value)
        entry = wire.response_resource(any_value)
        return cls(name, type_url, content_version(value), entry, len(entry) - len(any_value))

    @property
    def any(self) -> bytes:
        """The serialized ``google.protobuf.Any`` (for delta responses and decoding)."""
        return self.entry[self.header :]

    @cached_property
    def delta_entry(self) -> bytes:
        """The resource as a ``DeltaDiscoveryResponse.resources`` entry (made on first delta use, then kept)."""
        return wire.delta_response_resource(self.name, self.version, self.any)

    @property
    def size(self) -> int:
        return len(self.entry)


def names_version(resources: Iterable[CachedResource]) -> str:
    """The version of a set of resources: a hash of their names and versions, order-independent."""
    items = sorted((r.name, r.version) for r in resources)
    return content_version("\n".join(f"{n}\t{v}" for n, v in items).encode("utf-8"))


@dataclass(frozen=True)
class TypeResources:
    """All resources of one type for one node."""

    type_url: str
    items: Mapping[str, CachedResource] = field(default_factory=lambda: _EMPTY)
    version: str = field(default="")

    @classmethod
    def of(cls, type_url: str, messages: Mapping[str, Message]) -> "TypeResources":
        items = {name: CachedResource.of(type_url, name, msg) for name, msg in sorted(messages.items())}
        return cls(type_url, MappingProxyType(items), names_version(items.values()))

    @cached_property
    def all_entries(self) -> bytes:
        """Every resource's response entry, joined: the body of a full-state (wildcard) response."""
        return b"".join(r.entry for r in self.items.values())

    def select(self, names: Iterable[str] | None) -> list[CachedResource]:
        """The resources with these names that exist (all of them for ``None``), sorted by name."""
        if names is None:
            return list(self.items.values())
        return [self.items[n] for n in sorted(set(names)) if n in self.items]

    @property
    def size(self) -> int:
        return sum(r.size for r in self.items.values())


@dataclass(frozen=True)
class Snapshot:
    """Everything one node is served, by type URL, plus what the debug API shows about it.

    Only the serialized form is kept (no second copy as protobuf objects): :meth:`decode` rebuilds
    the NodeResources and Secrets from the very bytes that are served, so ``/debug/config_dump``
    shows exactly what Envoy was sent. ``secret_refs`` says which identity each secret carries.
    ``changed_at`` is the monotonic time of the model change this snapshot answers, so the server
    can measure push latency from change to send. ``known`` is False for a node the model does
    not have: it is served an empty config.
    """

    node: str
    types: Mapping[str, TypeResources]
    known: bool = True
    changed_at: float = field(default_factory=time.monotonic)
    generation_seconds: float = 0.0
    secret_refs: Mapping[str, SecretRef] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls,
        node: str,
        messages: Mapping[str, Mapping[str, Message]],
        *,
        known: bool = True,
        changed_at: float | None = None,
        generation_seconds: float = 0.0,
        secret_refs: Mapping[str, SecretRef] | None = None,
    ) -> "Snapshot":
        """Serialize and version ``messages`` (type URL -> name -> message); missing types are empty."""
        unknown = set(messages) - set(PUSH_ORDER)
        if unknown:
            raise ValueError(f"snapshot for node {node!r} has types this server does not serve: {sorted(unknown)}")
        types = {t: TypeResources.of(t, messages.get(t, {})) for t in PUSH_ORDER}
        return cls(
            node=node,
            types=MappingProxyType(types),
            known=known,
            changed_at=time.monotonic() if changed_at is None else changed_at,
            generation_seconds=generation_seconds,
            secret_refs=MappingProxyType(dict(secret_refs or {})),
        )

    @classmethod
    def empty(cls, node: str, *, known: bool = False) -> "Snapshot":
        return cls.build(node, {}, known=known)

    def resources(self, type_url: str) -> TypeResources:
        return self.types.get(type_url) or TypeResources(type_url)

    def version(self, type_url: str) -> str:
        return self.resources(type_url).version

    def versions(self) -> dict[str, str]:
        return {t: r.version for t, r in self.types.items()}

    def decode(self) -> tuple[NodeResources, dict[str, Secret]]:
        """The node's resources and secrets, parsed back from the cached bytes."""
        out = NodeResources(node=self.node, secrets=dict(self.secret_refs))
        targets: dict[str, dict[str, Message]] = {
            LISTENER_TYPE: out.listeners, CLUSTER_TYPE: out.clusters, ENDPOINT_TYPE: out.endpoints,
        }
        secrets: dict[str, Secret] = {}
        for type_url, resources in self.types.items():
            target = targets.get(type_url, secrets)
            for name, cached in resources.items.items():
                target[name] = _MESSAGES[type_url].FromString(any_pb2.Any.FromString(cached.any).value)
        return out, secrets

    def changed_types(self, previous: "Snapshot | None") -> list[str]:
        """Types whose version differs from ``previous`` (all types when there is none), in push order."""
        return [t for t in PUSH_ORDER if previous is None or previous.version(t) != self.version(t)]
