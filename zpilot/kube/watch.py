"""The Kubernetes API as a model source: one informer per resource, synced before anything is served.

``zpilot serve`` watches every kind it reads cluster-wide (:func:`~zpilot.kube.api_resources.control_plane_watches`);
the CNI agent only its own node's pods and Node, and the namespaces
(:func:`~zpilot.kube.api_resources.node_agent_watches`). Either way the feed reports itself synced
only once *every* informer has listed once, so the first model (and with it readiness and the
first push: see :mod:`zpilot.runtime.serve`) never comes from a half-read cluster: an empty first
push would take every ztunnel's config away. Until then, an unreachable or refusing server is
retried with backoff and logged (which server, why), and nothing is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Mapping, Sequence

from ..model.policy import DEFAULT_ROOT_NAMESPACE
from .api_calls import ApiCalls
from .api_resources import SOURCE_CONVERTERS, WatchSpec, control_plane_watches
from .credentials import Credentials
from .informer import Converter, Informer, WatchSettings
from .source import FeedSource, ObjectSink

log = logging.getLogger("zpilot.kube.watch")

USER_AGENT = "zpilot"


class ApiWatch:
    """The :class:`~zpilot.kube.source.Feed` of an API server: :class:`Informer` s over one client."""

    def __init__(self, credentials: Credentials, watches: Sequence[WatchSpec], *,
                 settings: WatchSettings = WatchSettings(),
                 converters: Mapping[str, Converter] = SOURCE_CONVERTERS) -> None:
        missing = [w.resource.kind for w in watches if w.resource.kind not in converters]
        if missing:
            raise ValueError(f"no converter for {', '.join(missing)}")
        self.credentials = credentials
        self.watches = tuple(watches)
        self.settings = settings
        self.converters = converters
        self.informers: list[Informer] = []

    async def run(self, sink: ObjectSink) -> None:
        async with await self.credentials.client() as api:
            api.user_agent = USER_AGENT
            calls = ApiCalls(api, self.settings.timeouts)
            self.informers = [Informer(spec, calls, sink, self.settings, self.converters) for spec in self.watches]
            tasks = [asyncio.create_task(i.run(), name=f"watch {i.spec}") for i in self.informers]
            log.info("reading %s from %s", ", ".join(str(w) for w in self.watches), calls.server)
            try:
                await asyncio.gather(*(i.listed.wait() for i in self.informers))
                log.info("API server %s: synced (%s)", calls.server,
                         ", ".join(f"{len(i)} {i.spec}" for i in self.informers))
                sink.synced()
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks, return_exceptions=True)


class ApiWatchSource(FeedSource):
    """The cluster, read through its API server (the credentials say which, and as whom)."""

    def __init__(self, credentials: Credentials, watches: Sequence[WatchSpec] | None = None, *,
                 settings: WatchSettings = WatchSettings(), converters: Mapping[str, Converter] = SOURCE_CONVERTERS,
                 quiet: float = 0.1, max_delay: float = 10.0, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> None:
        self.credentials = credentials
        self.watches = tuple(watches if watches is not None else control_plane_watches(converters))
        super().__init__(
            lambda: ApiWatch(credentials, self.watches, settings=settings, converters=converters),
            name=str(credentials), quiet=quiet, max_delay=max_delay, root_namespace=root_namespace,
        )
