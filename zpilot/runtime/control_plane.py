"""One running control plane: cache, producer, ADS server, metrics and debug API wired together.

``zpilot serve`` (through :mod:`zpilot.runtime.serve`) and the end-to-end tests both start one of
these; the wiring lives here so the command stays a thin argument parser and the tests run
exactly what users run. The debug API reads this object through its own small view
(:class:`zpilot.xds.debug_api.DebugView`), so ``xds`` never imports the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import uvicorn

from .. import contract
from ..model.index import MeshIndex
from ..xds.debug_api import create_app
from ..xds.embedded_http import EmbeddedUvicorn, bound_port
from ..xds.metrics import Metrics
from ..xds.metrics_server import MetricsOptions, MetricsServer
from ..xds.observer import Observers
from ..xds.push import NodeTranslator, Producer, SecretSource, Translate, UpdateReport, certificate_secrets
from ..xds.security import XdsSecurity
from ..xds.server import AdsServer, ServerOptions
from ..xds.snapshot_cache import SnapshotCache
from ..xds.sockets import describe, listen
from ..xds.status import StatusRegistry

if TYPE_CHECKING:
    from ..translators.resources import SecretRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DebugOptions:
    host: str = "127.0.0.1"  # or "unix:/path" for a Unix socket
    port: int = contract.PORT_DEBUG  # 0: any free port
    #: Every request but /healthz/ready must carry ``Authorization: Bearer <token>`` (``--debug-token-file``).
    token: str | None = field(default=None, repr=False)

    @property
    def unix_socket(self) -> bool:
        return self.host.startswith("unix:")

    @property
    def path(self) -> str:
        """The socket's path (only for ``unix:``)."""
        return self.host[len("unix:"):]


class ControlPlane:
    """Owns the pieces; :meth:`start` binds the ports, :meth:`update` hands it a new model."""

    def __init__(
        self,
        *,
        xds_security: XdsSecurity,
        server_options: ServerOptions | None = None,
        debug_options: DebugOptions | None = None,
        translate: Translate | NodeTranslator | None = None,  # None: an IncrementalTranslator
        secrets: SecretSource | None = None,
        identities=None,
        metrics_options: MetricsOptions | None = None,  # None: metrics are not served over HTTP
        freeze_first_model: bool = False,  # a long-running server: see Producer.freeze_first_model
    ) -> None:
        self.metrics = Metrics()
        self.cache = SnapshotCache()
        self.registry = StatusRegistry()
        self.identities = identities
        #: Each node's secret references (the snapshot's mapping object) and the identities they name, as
        #: last read (:meth:`_referenced_identities`).
        self._node_identities: dict[str, tuple[Mapping[str, SecretRef], frozenset[str]]] = {}
        #: How many nodes' references name each identity (only those some node's do).
        self._identity_nodes: dict[str, int] = {}
        if secrets is None and identities is not None:
            secrets = certificate_secrets(identities)
        self.producer = Producer(
            self.cache, translate=translate, secrets=secrets, metrics=self.metrics, freeze_first_model=freeze_first_model
        )
        self.ads = AdsServer(self.cache, security=xds_security, options=server_options,
                             observer=Observers(self.metrics, self.registry))
        if xds_security.tls is not None:
            tls = xds_security.tls
            self.metrics.count_tls_handshakes(lambda: tls.handshakes)
        self.metrics_server = MetricsServer(self.metrics, metrics_options) if metrics_options is not None else None
        self.debug_options = debug_options or DebugOptions()
        self.debug_port: int | None = None
        self._xds_serving = False
        self.last_report: UpdateReport | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task] = []

    def attach_identities(self, identities) -> None:
        """Give a plane built without a CA its workload identities, before ADS starts.

        For a CA that can only be read once the debug API is up (a Kubernetes Secret: the API
        server may be slow or refuse, and readiness must say so meanwhile).
        """
        if self._xds_serving:
            raise RuntimeError("identities must be attached before ADS starts")
        self.identities = identities
        self.producer.secrets = certificate_secrets(identities)

    @property
    def ready(self) -> bool:
        """ADS is serving config produced from a model (what /healthz/ready reports)."""
        return self._xds_serving and self.producer.index is not None

    @property
    def failures(self) -> Mapping[str, str]:
        """Nodes whose latest config failed the consistency check, and why (the debug API shows them)."""
        return self.producer.failures

    @property
    def index(self) -> MeshIndex | None:
        return self.producer.index

    @property
    def xds_port(self) -> int | None:
        return self.ads.port

    @property
    def xds_address(self) -> str:
        """Where ADS listens, as ``zpilot bootstrap --xds`` takes it."""
        return self.ads.address if self.ads.unix_socket else f"{self.ads.options.host}:{self.ads.port}"

    @property
    def debug_url(self) -> str:
        if self.debug_options.unix_socket:
            return f"http+{self.debug_options.host}"
        return f"http://{self.debug_options.host}:{self.debug_port}"

    async def update(self, index: MeshIndex | None = None, *, changed_at: float | None = None) -> UpdateReport:
        """Produce config for a new model (or again for the current one) and retire unused identities."""
        report = await self.producer.update(index, changed_at=changed_at)
        self.last_report = report
        if self.identities is not None and self.producer.index is not None:
            self.identities.retain(self._referenced_identities())
        return report

    async def refresh(self, *, changed_at: float | None = None) -> UpdateReport:
        """Make every node's secrets again (certificates rotated, CA reloaded); push what changed."""
        report = await self.producer.refresh(changed_at=changed_at)
        self.last_report = report
        return report

    def _referenced_identities(self) -> set[str]:
        """The identities some node's config references. Run after every update, on the event loop
        that then sends it: a node's references are read again only when its snapshot holds other ones
        than last time (a pod change remakes one node's; the other 99 keep theirs, the same object), and
        how many nodes reference each identity is kept, so nothing is walked per node and change (at R,
        10,000 references read after each change took 0.8 ms before its sends)."""
        known, counts = self._node_identities, self._identity_nodes
        present: set[str] = set()
        for node in self.cache.nodes():
            snapshot = self.cache.get_snapshot(node)
            if snapshot is None:
                continue
            present.add(node)
            refs = snapshot.secret_refs
            found = known.get(node)
            if found is not None and found[0] is refs:
                continue
            ids = frozenset(ref.spiffe_id for ref in refs.values() if ref.spiffe_id)
            _count(counts, ids, 1)
            if found is not None:
                _count(counts, found[1], -1)
            known[node] = (refs, ids)
        for node in [node for node in known if node not in present]:
            _count(counts, known.pop(node)[1], -1)
        return set(counts)

    async def start(self) -> None:
        """Start metrics and debug API, then ADS (give the model first, or streams get empty config)."""
        await self.start_debug()
        try:
            await self.start_xds()
        except OSError:
            await self.stop()
            raise

    async def start_debug(self) -> None:
        """Start the metrics server and the debug API (readiness says 503 until :meth:`start_xds`)."""
        if self.metrics_server is not None:
            await self.metrics_server.start()
        where = self.debug_options
        place = describe(where.host, where.port)
        try:  # bound here, not by uvicorn: one clear error, and a Unix socket 0600 (uvicorn makes it 0666)
            sock = listen(where.host, where.port)
        except OSError as exc:
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            raise OSError(f"the debug API could not listen on {place}: {exc.strerror or exc}") from None
        # log_config=None: uvicorn's records go to the process's handlers (and format), not its own
        config = uvicorn.Config(create_app(self, token=where.token), log_level="warning", access_log=False, lifespan="off",
                                log_config=None)
        server = EmbeddedUvicorn(config)
        self._uvicorn = server
        self._tasks.append(asyncio.create_task(server.serve(sockets=[sock]), name="debug-api"))
        while not server.started:
            if self._tasks[-1].done():
                error = None
                with contextlib.suppress(Exception):
                    error = self._tasks[-1].exception()
                sock.close()
                self._tasks.pop()
                self._uvicorn = None
                if self.metrics_server is not None:
                    await self.metrics_server.stop()
                raise OSError(f"the debug API on {place} did not start: {error or 'cancelled'}")
            await asyncio.sleep(0.01)
        self.debug_port = None if where.unix_socket else (bound_port(server) or where.port)
        log.info("debug API on %s (OpenAPI at /docs)", self.debug_url)

    async def start_xds(self) -> None:
        """Start the ADS server and certificate renewal; from now on the plane is ready."""
        await self.ads.start()
        if self.identities is not None:
            self._tasks.append(asyncio.create_task(self._rotate_certificates(), name="cert-rotation"))
        self._xds_serving = True

    async def stop(self) -> None:
        self._xds_serving = False
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        for task in self._tasks:
            if task.get_name() != "debug-api":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.producer.close()
        await self.ads.stop(grace=1.0)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.debug_options.unix_socket and self._uvicorn is not None:  # uvicorn leaves its socket file behind
            with contextlib.suppress(OSError):
                os.unlink(self.debug_options.path)
        self._uvicorn = None

    async def reload_ca(self) -> bool:
        """Re-read the CA's files (root rotation, a new extra root); push what changed.

        Returns whether anything was pushed. If the files are unusable (half written, a key that
        does not match), the current CA is kept and the error is logged.
        """
        from ..certs import CertificateAuthorityError

        if self.identities is None:
            return False
        try:
            fresh = self.identities.ca.reload()
            change = self.identities.replace_authority(fresh)
        except (CertificateAuthorityError, ValueError) as exc:
            log.error("CA reload failed; keeping the current CA: %s", exc)
            return False
        if not change.reissue and not change.trust_bundle_changed:
            log.info("CA reloaded: nothing changed")
            return False
        log.warning(
            "CA reloaded: %d identities re-issued, trust bundle %s; pushing",
            len(change.reissue), "changed" if change.trust_bundle_changed else "unchanged",
        )
        await self.refresh(changed_at=time.monotonic())
        return True

    async def _rotate_certificates(self) -> None:
        """Re-issue certificates at half their lifetime and push them; connections stay up."""
        while True:
            due_at = self.identities.next_rotation_at() if self.identities is not None else None
            if due_at is None:
                await asyncio.sleep(5.0)
                continue
            delay = (due_at - self.identities.ca.clock()).total_seconds()  # type: ignore[union-attr]
            await asyncio.sleep(min(max(delay, 0.05), 60.0))  # never spin on a due time just missed
            if self.identities is None:
                continue
            try:
                rotated = self.identities.rotate_due()
            except Exception:  # e.g. the CA itself expired: keep serving what was issued, retry later
                log.exception("certificate renewal failed; retrying in 5 s")
                await asyncio.sleep(5.0)
                continue
            if rotated:
                log.info("rotated certificates of %s", rotated)
                with contextlib.suppress(RuntimeError):
                    await self.refresh(changed_at=time.monotonic())


def _count(counts: dict[str, int], ids: frozenset[str], step: int) -> None:
    """Add ``step`` to each of ``ids``' node counts, forgetting an identity no node names any more."""
    for sid in ids:
        left = counts.get(sid, 0) + step
        if left > 0:
            counts[sid] = left
        else:
            counts.pop(sid, None)
