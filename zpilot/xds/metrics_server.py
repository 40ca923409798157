"""``/metrics`` on a listener of its own (default: all interfaces, ``contract.PORT_METRICS``), apart from the debug API.

Scrapers need to reach the metrics from other machines; the debug API shows every node's
configuration and stays on localhost. So they never share a port. The socket is bound here,
before uvicorn sees it: a taken port is one clear ``OSError`` naming the address, and nothing
else is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import uvicorn
from prometheus_client import make_asgi_app

from .. import contract
from .embedded_http import EmbeddedUvicorn
from .metrics import Metrics
from .sockets import UNIX_PREFIX, describe, listen

log = logging.getLogger(__name__)

PATH = "/metrics"
_NOT_FOUND = f"not found: the metrics are at {PATH}\n".encode()

Asgi = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class MetricsOptions:
    host: str = "0.0.0.0"  # or "unix:/path" for a Unix socket
    port: int = contract.PORT_METRICS  # 0: any free port

    @property
    def unix_socket(self) -> bool:
        return self.host.startswith(UNIX_PREFIX)


def metrics_app(metrics: Metrics) -> Asgi:
    """prometheus-client's exposition of ``metrics`` at :data:`PATH` (text or OpenMetrics, as the
    scraper asks), 404 elsewhere."""
    exposition = make_asgi_app(metrics.registry)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == PATH:
            await exposition(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(_NOT_FOUND)).encode())]})
        await send({"type": "http.response.body", "body": _NOT_FOUND})

    return app


class MetricsServer:
    """Serves one :class:`Metrics` over HTTP; :meth:`start` binds, :meth:`stop` unbinds."""

    def __init__(self, metrics: Metrics, options: MetricsOptions | None = None) -> None:
        self.metrics = metrics
        self.options = options if options is not None else MetricsOptions()
        self.port: int | None = None
        self._server: EmbeddedUvicorn | None = None
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        """Where to scrape: ``http://host:port/metrics``, or ``http+unix:/path`` + /metrics."""
        if self.options.unix_socket:
            return f"http+{self.options.host}{PATH}"
        return f"http://{describe(self.options.host, self.port or self.options.port)}{PATH}"

    async def start(self) -> None:
        where = describe(self.options.host, self.options.port)
        try:
            sock = listen(self.options.host, self.options.port)
        except OSError as exc:
            raise OSError(f"cannot bind the metrics server to {where}: {exc.strerror or exc}") from None
        # log_config=None: uvicorn's records go to the process's handlers (and format), not its own
        config = uvicorn.Config(metrics_app(self.metrics), log_level="warning", access_log=False, lifespan="off",
                                log_config=None)
        server = EmbeddedUvicorn(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="metrics-server")
        while not server.started:
            if task.done():  # it cannot fail to bind (the socket is bound); anything else is reported
                sock.close()
                error = task.exception() if not task.cancelled() else None
                raise OSError(f"the metrics server on {where} did not start: {error or 'cancelled'}")
            await asyncio.sleep(0.01)
        self._server, self._task = server, task
        self.port = None if self.options.unix_socket else sock.getsockname()[1]
        log.info("metrics on %s", self.url)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
        self._server = self._task = None
        if self.options.unix_socket:  # the socket file outlives the socket
            with contextlib.suppress(OSError):
                os.unlink(self.options.host[len(UNIX_PREFIX):])
