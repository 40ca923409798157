"""One resource kept current: list, watch from the list's resourceVersion, list again when history is gone.

The cycle (client-go's reflector, minus what zpilot does not need):

- **list** every page of one consistent snapshot and *diff it against what is known*: objects no
  longer there are removed, objects whose resourceVersion did not change are not even converted,
  the rest are converted and handed to the sink (which ignores what converts to the same content).
  So a re-list after an outage pushes exactly what changed, deletions included;
- **watch** from the list's resourceVersion, with bookmarks (the version keeps moving on a quiet
  resource, so a reconnect rarely needs a re-list) and a server-side ``timeoutSeconds`` (the
  connection is renewed every few minutes); a watch that ends is resumed from the last version;
- on **410 Gone** (an ERROR event, or the HTTP status) list again; on any other failure (5xx,
  429 with ``Retry-After``, refused connections, TLS, timeouts, a broken stream) back off with
  jitter and resume. Nothing ends the loop but cancellation.

An *optional* resource (a CRD's kind) is first looked up in discovery: while it is not served,
that is logged once, discovery is polled, and the resource counts as read (it is empty). When the
CRD goes away, its objects go with it.

Each object is its own origin in the :class:`~zpilot.kube.source.ObjectSink`
(``plural[.group]/namespace/name``), converted by the manifest source's converters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..logs import counted
from ..model.problems import Problem, Severity, clip
from .api_calls import ApiCalls, ApiFailure, Expired, NotServed, Retired, Timeouts, status_failure
from .api_resources import SOURCE_CONVERTERS, ApiResource, WatchSpec
from .backoff import Backoff, FailureLog
from .convert import InvalidObject, ModelObject, describe
from .source import ObjectSink, OriginContent

log = logging.getLogger("zpilot.kube.watch")

Converter = Callable[[Mapping[str, Any]], ModelObject]
#: A list larger than this is refused (a bound on memory whatever the server sends).
MAX_LIST_OBJECTS = 500_000


@dataclass(frozen=True)
class WatchSettings:
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: The server ends each watch after ``watch_seconds`` to ``2 * watch_seconds`` (random, so that
    #: many watchers do not reconnect together), and the watch is resumed.
    watch_seconds: int = 300
    page_size: int = 500
    #: How often discovery is asked whether an optional resource's CRD is installed.
    crd_poll: float = 30.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    #: A failure that persists is logged again this often (each new reason at once).
    remind: float = 60.0


def origin_of(resource: ApiResource, obj: Mapping[str, Any]) -> str | None:
    """``plural[.group]/namespace/name`` (``plural[.group]/name`` cluster-scoped); None without a name."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name or len(name) > 253 or "/" in name:
        return None
    if resource.namespaced:
        if not isinstance(namespace, str) or not namespace or len(namespace) > 63 or "/" in namespace:
            return None
        return f"{resource.qualified}/{namespace}/{name}"
    return f"{resource.qualified}/{name}"


def version_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) else ""


def convert_object(resource: ApiResource, converter: Converter, obj: Mapping[str, Any], where: str) -> OriginContent:
    """One API object as the sink holds it: the model object, or the problem that skipped it.

    List items of built-in kinds come without ``kind``/``apiVersion``; they are set from the
    resource, so the converters see what a manifest holds."""
    doc = {**obj, "apiVersion": resource.api_version, "kind": resource.kind}
    subject = describe(doc)
    try:
        return OriginContent(((where, converter(doc)),))
    except InvalidObject as exc:
        return OriginContent(problems=(Problem(Severity.ERROR, subject, f"{exc}: skipped", where),))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a shape no check foresaw: this object only
        log.warning("%s: converter failed", subject, exc_info=True)
        return OriginContent(problems=(
            Problem(Severity.ERROR, subject, f"cannot be read ({type(exc).__name__}): skipped", where),))


class Informer:
    """Keeps one :class:`WatchSpec`'s objects in the sink; :attr:`listed` is set once it has read them all."""

    def __init__(self, spec: WatchSpec, calls: ApiCalls, sink: ObjectSink, settings: WatchSettings,
                 converters: Mapping[str, Converter] = SOURCE_CONVERTERS, rand: random.Random | None = None) -> None:
        self.spec = spec
        self.resource = spec.resource
        self.calls = calls
        self.sink = sink
        self.settings = settings
        self.converter = converters[self.resource.kind]
        self.rand = rand or random.Random()
        self.listed = asyncio.Event()
        self.resource_version: str | None = None
        self._known: dict[str, str] = {}  # origin -> the object's resourceVersion
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_max, rand=self.rand.uniform)
        self.failures = FailureLog(log, calls.server, settings.remind)
        self._served: bool | None = None  # optional resources: what discovery said last
        self._expiries = 0  # 410s since the last watch event
        self._activity = f"reading {spec}"

    def __len__(self) -> int:
        return len(self._known)

    async def run(self) -> None:
        """List and watch until cancelled; never raises otherwise."""
        while True:
            try:
                if self.resource_version is None:
                    if self.resource.optional and not await self._served_now():
                        await asyncio.sleep(self.settings.crd_poll)
                        continue
                    await self._list()
                await self._watch()  # from the last version: a broken watch is resumed, not re-listed
            except Retired:  # closed for a new client certificate: resumed at once
                log.debug("API server %s: %s: watching again with the new client certificate", self.calls.server,
                          self.spec)
            except Expired as exc:
                log.info("API server %s: %s: %s; listing again", self.calls.server, self.spec, exc)
                self.resource_version = None
                self._expiries += 1
                if self._expiries > 1:  # expired again before any event: do not spin on list
                    await self._pause(exc)
            except NotServed as exc:
                self.resource_version = None
                if self.resource.optional:
                    self._not_served(str(exc))
                else:
                    await self._pause(exc)
            except ApiFailure as exc:
                await self._pause(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: say so, with its traceback, and keep the watch alive
                log.error("API server %s: %s: unexpected %s", self.calls.server, self.spec, type(exc).__name__,
                          exc_info=not self.failures.failing)
                await self._pause(ApiFailure(f"{type(exc).__name__}: {exc}"))

    async def _pause(self, failure: ApiFailure) -> None:
        delay = self.backoff.next_delay(failure.retry_after)
        self.failures.failed(self._activity, str(failure), delay)
        await asyncio.sleep(delay)

    def _doing(self, activity: str) -> None:
        """What the informer does now, for the log lines of its failures."""
        self._activity = activity

    def _progress(self) -> None:
        self.backoff.reset()
        self.failures.succeeded(self._activity)

    # -- optional resources ----------------------------------------------------------------------

    async def _served_now(self) -> bool:
        self._doing(f"discovering {self.resource.api_version} for {self.spec}")
        served = await self.calls.served(self.resource)
        self._progress()
        if served and self._served is False:
            log.warning("API server %s: %s is served now: watching it", self.calls.server, self.spec)
        elif not served:
            self._not_served("its CustomResourceDefinition is not installed")
        self._served = served
        return served

    def _not_served(self, why: str) -> None:
        """The resource is not served (now): its objects are gone; logged once per disappearance."""
        if self._served is not False:
            dropped = f"; dropping its {counted(len(self._known), 'object')}" if self._known else ""
            log.warning("API server %s: %s (%s) is not served: %s%s; %s objects are not read until it is"
                        " (checking every %g s)", self.calls.server, self.spec, self.resource.api_version,
                        clip(why, 200), dropped, self.resource.kind, self.settings.crd_poll)
        self._served = False
        for origin in list(self._known):
            self.sink.remove(origin)
        self._known.clear()
        self.resource_version = None
        self.listed.set()

    # -- list ------------------------------------------------------------------------------------

    async def _list(self) -> None:
        self._doing(f"listing {self.spec}")
        items: list[dict[str, Any]] = []
        token: str | None = None
        version = ""
        while True:
            page = await self.calls.list_page(self.resource, field_selector=self.spec.field_selector,
                                              limit=self.settings.page_size, continue_token=token)
            items.extend(i for i in page.get("items") or () if isinstance(i, dict))
            if len(items) > MAX_LIST_OBJECTS:
                raise ApiFailure(f"more than {MAX_LIST_OBJECTS:,} objects listed")
            meta = page.get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not isinstance(token, str) or not token:
                break
        if not version:
            raise ApiFailure("a list response without a resourceVersion")
        await self._replace(items)
        self.resource_version = version
        self._progress()
        if not self.listed.is_set():
            log.info("API server %s: listed %d %s", self.calls.server, len(self._known), self.spec)
        self.listed.set()

    async def _replace(self, items: list[dict[str, Any]]) -> None:
        """Make the sink hold exactly ``items``: the diff against what is known."""
        current: dict[str, str] = {}
        changed: list[tuple[str, dict[str, Any]]] = []
        for obj in items:
            origin = origin_of(self.resource, obj)
            if origin is None:
                continue
            version = version_of(obj)
            current[origin] = version
            if self._known.get(origin) != version or not version:
                changed.append((origin, obj))
        contents = await asyncio.to_thread(
            lambda: [(o, convert_object(self.resource, self.converter, obj, o)) for o, obj in changed])
        for origin in [o for o in self._known if o not in current]:
            self.sink.remove(origin)
        for origin, content in contents:
            self.sink.set(origin, content)
        self._known = current

    # -- watch -----------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """One watch connection, from the last known version, until the server ends it."""
        assert self.resource_version is not None
        self._doing(f"watching {self.spec}")
        seconds = self.settings.watch_seconds
        timeout_seconds = self.rand.randint(seconds, 2 * seconds - 1) if seconds > 1 else seconds
        loop = asyncio.get_running_loop()
        started, events = loop.time(), 0
        stream = self.calls.watch(self.resource, resource_version=self.resource_version,
                                  field_selector=self.spec.field_selector, timeout_seconds=timeout_seconds)
        async with contextlib.aclosing(stream):
            async for event in stream:
                events += 1
                self._apply(event)
                self._expiries = 0
                if events == 1:
                    self._progress()
        if events == 0 and loop.time() - started < 1.0:
            raise ApiFailure("the server ended the watch at once")

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            code = obj.get("code")
            message = obj.get("message") if isinstance(obj.get("message"), str) else ""
            raise status_failure(code if isinstance(code, int) else 500, clip(message, 300))
        version = version_of(obj)
        if kind == "BOOKMARK":
            if version:
                self.resource_version = version
            return
        origin = origin_of(self.resource, obj)
        if kind not in ("ADDED", "MODIFIED", "DELETED") or origin is None:
            log.debug("API server %s: %s: ignored a %s event", self.calls.server, self.spec, clip(str(kind), 40))
        elif kind == "DELETED":
            if self._known.pop(origin, None) is not None:
                self.sink.remove(origin)
        elif self._known.get(origin) != version or not version:
            self.sink.set(origin, convert_object(self.resource, self.converter, obj, origin))
            self._known[origin] = version  # only once held: a failed conversion is tried again
        if version:
            self.resource_version = version
