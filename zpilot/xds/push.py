"""The producer: model change -> each node's resources -> snapshot cache.

This is the only place translation results enter the cache. For every node of the model it
translates, adds the node's SDS secrets (only the names its own resources reference: that is
node authorization, a ztunnel never gets a secret its config does not name) and serializes the
result into a :class:`~zpilot.xds.snapshot.Snapshot`. The cache compares content versions, so a
node whose resources did not change is not pushed.

A node whose translation fails keeps its last good snapshot: a bug or bad input for one node
never takes config away from it or from any other node. A node that never had a good one is
withheld (its streams send nothing and wait), never served an empty config.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from google.protobuf.message import Message

from ..model.index import MeshIndex
from ..translators import consistency
from ..translators.resources import NodeResources
from .cache import SnapshotWriter
from .metrics import Metrics
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER, SECRET_TYPE, short_name
from .snapshot import Snapshot

if TYPE_CHECKING:
    from ..certs import IdentityCache

log = logging.getLogger(__name__)

Translate = Callable[[MeshIndex, str], NodeResources]
#: Secret messages (key material included) for a node's resources, by name.
SecretSource = Callable[[NodeResources], Mapping[str, Message]]


class InvalidResources(ValueError):
    """Translated resources that would make Envoy reject the response (checked before caching)."""


def certificate_secrets(identities: "IdentityCache") -> SecretSource:
    """The SDS secrets of a node from the CA: exactly the names its resources reference."""
    from ..certs import build_secrets

    def source(resources: NodeResources) -> Mapping[str, Message]:
        return build_secrets(resources.secrets.values(), identities)

    return source


def default_translate(index: MeshIndex, node: str) -> NodeResources:
    from ..translators import translate_node

    return translate_node(index, node)


def model_nodes(index: MeshIndex) -> set[str]:
    """The nodes that get config: every Node object, and every node a pod is scheduled on (manifests
    often carry pods without their Node objects; those ztunnels must not be starved)."""
    return set(index.nodes) | {w.node_name for w in index.cluster.workloads if w.node_name}


def check_resources(resources: NodeResources) -> None:
    """Refuse what Envoy would NACK, or what names something missing (see translators.consistency)."""
    try:
        consistency.check(resources)
    except consistency.InconsistentResources as exc:
        raise InvalidResources(str(exc)) from None


@dataclass
class UpdateReport:
    """What one model update did, node by node."""

    changed: dict[str, list[str]] = field(default_factory=dict)  # node -> changed types
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # node -> error
    seconds: float = 0.0


class Producer:
    """Turns a :class:`MeshIndex` into snapshots in a cache."""

    def __init__(
        self,
        cache: SnapshotWriter,
        *,
        translate: Translate = default_translate,
        secrets: SecretSource | None = None,
        metrics: Metrics | None = None,
        batch_size: int = 8,
    ) -> None:
        self.cache = cache
        self.batch_size = max(1, batch_size)
        self.translate = translate
        self.secrets = secrets
        self.metrics = metrics if metrics is not None else Metrics()
        self.index: MeshIndex | None = None
        #: Nodes whose latest config could not be produced (they keep their last good one, or are
        #: withheld in the cache without one), and why.
        self.failures: dict[str, str] = {}
        self._lock = asyncio.Lock()

    def build(self, index: MeshIndex, node: str, changed_at: float) -> Snapshot:
        """One node's snapshot (pure apart from the secret source; run in a worker thread)."""
        started = time.perf_counter()
        resources = self.translate(index, node)
        check_resources(resources)
        secrets = dict(self.secrets(resources)) if self.secrets is not None else {}
        unexpected = set(secrets) - set(resources.secrets)
        if unexpected:  # never hand a node a secret its own config does not name
            raise InvalidResources(f"secret source returned unreferenced secrets {sorted(unexpected)}")
        messages: dict[str, Mapping[str, Message]] = {
            LISTENER_TYPE: resources.listeners,
            CLUSTER_TYPE: resources.clusters,
            ENDPOINT_TYPE: resources.endpoints,
            SECRET_TYPE: secrets,
        }
        return Snapshot.build(
            node,
            messages,
            known=True,
            changed_at=changed_at,
            generation_seconds=time.perf_counter() - started,
            secret_refs=resources.secrets,
        )

    def _build_all(self, index: MeshIndex, nodes: Iterable[str], changed_at: float) -> dict[str, Snapshot | str]:
        out: dict[str, Snapshot | str] = {}
        for node in nodes:
            try:
                out[node] = self.build(index, node, changed_at)
            except InvalidResources as exc:  # caught before sending: Envoy would have refused it
                log.error("node %s: config refused before sending, it keeps its last good config (without one it is"
                          " sent nothing): %s", node, exc)
                out[node] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # one node's failure must not stop the others
                log.exception("node %s: config could not be produced; it keeps its last good config (without one it"
                              " is sent nothing)", node,
                              extra={"node": node})
                out[node] = f"{type(exc).__name__}: {exc}"
        return out

    async def update(self, index: MeshIndex | None = None, *, changed_at: float | None = None) -> UpdateReport:
        """Produce every node of ``index`` (default: the last one) and store what changed.

        ``changed_at`` is the monotonic time the change was first seen (push latency starts there).
        Must be awaited on the event loop that serves the cache.
        """
        async with self._lock:
            started = time.perf_counter()
            changed_at = time.monotonic() if changed_at is None else changed_at
            if index is not None:
                same_model = self.index is not None and index.cluster == self.index.cluster
                self.index = index
                self.metrics.model_updates.inc()
                if same_model:  # e.g. a comment edited in a manifest: no node's config can change
                    report = UpdateReport(unchanged=self.cache.nodes(), seconds=time.perf_counter() - started)
                    log.info("model update: the cluster state is unchanged; nothing to produce")
                    return report
            if self.index is None:
                raise RuntimeError("Producer.update() before any model was given")
            current = self.index
            nodes = sorted(model_nodes(current))
            report = UpdateReport()
            built: dict[str, Snapshot | str] = {}
            # In batches, each stored as soon as it is built: the first nodes are pushed while the
            # rest are still being translated, and the event loop keeps serving between batches.
            for start in range(0, len(nodes), self.batch_size):
                batch = nodes[start : start + self.batch_size]
                results = await asyncio.to_thread(self._build_all, current, batch, changed_at)
                built.update(results)
                self._store(results, report)
            for node in self.cache.nodes():
                if node not in built:
                    self.cache.clear_snapshot(node)
                    report.removed.append(node)
            for node in [n for n in self.failures if n not in built]:
                del self.failures[node]
                self.cache.clear_snapshot(node)  # a withheld node that left the model
            self._update_gauges()
            report.seconds = time.perf_counter() - started
            log.info(
                "model update: %d nodes changed %s, %d unchanged, %d removed, %d failed (%.1f ms)",
                len(report.changed), sorted(report.changed)[:20], len(report.unchanged), len(report.removed),
                len(report.failed), report.seconds * 1000,
            )
            return report

    def _store(self, results: dict[str, Snapshot | str], report: UpdateReport) -> None:
        for node, result in results.items():
            if isinstance(result, str):
                report.failed[node] = result
                self.failures[node] = result
                self.metrics.producer_errors.inc()
                # Nothing good to keep yet: serve the node nothing rather than the empty config of a
                # node the model lacks (an Envoy reconnecting with good config would drop it all).
                self.cache.withhold(node, result)
                continue
            self.failures.pop(node, None)
            self.metrics.generation.observe(result.generation_seconds)
            changed = self.cache.set_snapshot(result)
            if changed:
                report.changed[node] = changed
                self.metrics.node_snapshots.labels("changed").inc()
            else:
                report.unchanged.append(node)
                self.metrics.node_snapshots.labels("unchanged").inc()

    async def refresh(self, *, changed_at: float | None = None) -> UpdateReport:
        """Produce again from the last model (after a certificate rotation or a CA reload)."""
        return await self.update(None, changed_at=changed_at)

    def _update_gauges(self) -> None:
        totals: dict[str, int] = {}
        for node in self.cache.nodes():
            snapshot = self.cache.get_snapshot(node)
            if snapshot is None:
                continue
            for type_url, resources in snapshot.types.items():
                totals[type_url] = totals.get(type_url, 0) + len(resources.items)
        for type_url in PUSH_ORDER:  # every type, so a type whose last resource went shows 0
            self.metrics.resources.labels(short_name(type_url)).set(totals.get(type_url, 0))
