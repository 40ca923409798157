"""Driving the API watch source in tests: quick retry settings, and a follower of its model events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Callable, Mapping, Sequence

from zpilot.kube.api_calls import Timeouts
from zpilot.kube.api_resources import WatchSpec
from zpilot.kube.api_resources import SOURCE_CONVERTERS
from zpilot.kube.credentials import Credentials
from zpilot.kube.informer import Converter, WatchSettings
from zpilot.kube.source import ModelEvent
from zpilot.kube.watch import ApiWatchSource
from zpilot.model.index import MeshIndex

from .apiserver import ApiServer

#: Retries in tenths of seconds, so a test sees several; watches long enough not to end by themselves.
FAST = WatchSettings(timeouts=Timeouts(connect=2.0, list=5.0, watch_grace=5.0), watch_seconds=60, page_size=500,
                     crd_poll=0.1, backoff_initial=0.05, backoff_max=0.4, remind=60.0)


def source_for(server: ApiServer, watches: Sequence[WatchSpec] | None = None, *, settings: WatchSettings = FAST,
               converters: Mapping[str, Converter] = SOURCE_CONVERTERS, credentials: Credentials | None = None,
               quiet: float = 0.02) -> ApiWatchSource:
    return ApiWatchSource(credentials or Credentials(kubeconfig=server.kubeconfig_path, environ={}), watches,
                          settings=settings, converters=converters, quiet=quiet, max_delay=2.0)


class Follower:
    """Reads a source's events in the background; tests wait for a model with :meth:`until`."""

    def __init__(self, source: ApiWatchSource) -> None:
        self.source = source
        self.events: list[ModelEvent] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "Follower":
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _read(self) -> None:
        async for event in self.source.events():
            self.events.append(event)
            self._changed.set()

    @property
    def latest(self) -> MeshIndex:
        assert self.events, "no model yet"
        return self.events[-1].index

    async def until(self, check: Callable[[MeshIndex], bool], timeout: float = 10.0) -> MeshIndex:
        """The first model (the latest included) for which ``check`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            if self._task is not None and self._task.done():
                self._task.result()
                raise AssertionError("the source ended")
            if self.events and check(self.latest):
                return self.latest
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching model within {timeout} s ({len(self.events)} events)")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


def pod_names(index: MeshIndex) -> set[str]:
    return {w.name for w in index.cluster.workloads}


def requests_of(server: ApiServer, verb: str, resource: str) -> list:
    return [r for r in server.requests if r.verb == verb and r.resource == resource]


async def recorded(server: ApiServer, verb: str, resource: str, timeout: float = 10.0) -> list:
    """Once the server has recorded such a request (a watch is recorded when it ends), those requests."""
    deadline = time.monotonic() + timeout
    while not requests_of(server, verb, resource):
        assert time.monotonic() < deadline, f"no {verb} {resource} recorded"
        await asyncio.sleep(0.02)
    return requests_of(server, verb, resource)


async def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Until ``check()`` holds (polled)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)
