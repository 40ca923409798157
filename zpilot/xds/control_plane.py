"""One running control plane: cache, producer, ADS server, metrics and debug API wired together.

``zpilot serve`` and the end-to-end tests both start one of these; the wiring lives here so the
command stays a thin argument parser and the tests run exactly what users run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

import uvicorn

from .. import contract
from ..model.index import MeshIndex
from .embedded_http import EmbeddedUvicorn, bound_port
from .metrics import Metrics
from .metrics_server import MetricsOptions, MetricsServer
from .observer import Observers
from .push import Producer, SecretSource, Translate, UpdateReport, certificate_secrets, default_translate
from .server import AdsServer, ServerOptions
from .snapshot_cache import SnapshotCache
from .status import StatusRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DebugOptions:
    host: str = "127.0.0.1"  # or "unix:/path" for a Unix socket
    port: int = contract.PORT_DEBUG  # 0: any free port

    @property
    def unix_socket(self) -> bool:
        return self.host.startswith("unix:")


class ControlPlane:
    """Owns the pieces; :meth:`start` binds the ports, :meth:`update` hands it a new model."""

    def __init__(
        self,
        *,
        server_options: ServerOptions | None = None,
        debug_options: DebugOptions | None = None,
        translate: Translate = default_translate,
        secrets: SecretSource | None = None,
        identities=None,
        metrics_options: MetricsOptions | None = None,  # None: metrics are not served over HTTP
    ) -> None:
        self.metrics = Metrics()
        self.cache = SnapshotCache()
        self.registry = StatusRegistry()
        self.identities = identities
        if secrets is None and identities is not None:
            secrets = certificate_secrets(identities)
        self.producer = Producer(self.cache, translate=translate, secrets=secrets, metrics=self.metrics)
        self.ads = AdsServer(self.cache, options=server_options, observer=Observers(self.metrics, self.registry))
        self.metrics_server = MetricsServer(self.metrics, metrics_options) if metrics_options is not None else None
        self.debug_options = debug_options or DebugOptions()
        self.debug_port: int | None = None
        self._started = False
        self.last_report: UpdateReport | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def ready(self) -> bool:
        """Serving, with config produced from a model (what /healthz/ready reports)."""
        return self._started and self.producer.index is not None

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

    def _referenced_identities(self) -> set[str]:
        ids: set[str] = set()
        for node in self.cache.nodes():
            snapshot = self.cache.get_snapshot(node)
            if snapshot is not None:
                ids.update(ref.spiffe_id for ref in snapshot.secret_refs.values() if ref.spiffe_id)
        return ids

    async def start(self) -> None:
        """Start the ADS server and the debug API (the model should be given first for readiness)."""
        from .debug_api import create_app

        await self.ads.start()
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except OSError:
                await self.ads.stop(grace=0)
                raise
        where = self.debug_options
        listen = {"uds": where.host[len("unix:"):]} if where.unix_socket else {"host": where.host, "port": where.port}
        # log_config=None: uvicorn's records go to the process's handlers (and format), not its own
        config = uvicorn.Config(create_app(self), log_level="warning", access_log=False, lifespan="off",
                                log_config=None, **listen)
        server = EmbeddedUvicorn(config)
        self._uvicorn = server
        self._tasks.append(asyncio.create_task(server.serve(), name="debug-api"))
        while not server.started:
            if self._tasks[-1].done():
                place = where.host if where.unix_socket else f"{where.host}:{where.port}"
                with contextlib.suppress(Exception):
                    self._tasks[-1].result()  # the bind error, already logged by uvicorn
                self._tasks.pop()
                await self.ads.stop(grace=0)
                if self.metrics_server is not None:
                    await self.metrics_server.stop()
                raise OSError(f"the debug API could not listen on {place}")
            await asyncio.sleep(0.01)
        self.debug_port = None if where.unix_socket else (bound_port(server) or where.port)
        if self.identities is not None:
            self._tasks.append(asyncio.create_task(self._rotate_certificates(), name="cert-rotation"))
        self._started = True
        log.info("debug API on %s (OpenAPI at /docs)", self.debug_url)

    async def stop(self) -> None:
        self._started = False
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        for task in self._tasks:
            if task.get_name() != "debug-api":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.ads.stop(grace=1.0)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.debug_options.unix_socket:  # uvicorn leaves its socket file behind
            with contextlib.suppress(OSError):
                os.unlink(self.debug_options.host[len("unix:"):])

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
        await self.update(changed_at=time.monotonic())
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
                    await self.update(changed_at=time.monotonic())

