"""The requests the API watch makes, on kubernetes-asyncio's client: list a page, watch, discover; and a GET
of one object (the CNI agent asks after its own DaemonSet as it stops: zpilot/cni/exit_cleanup.py).

Responses are read raw (``_preload_content=False``): objects stay the plain dicts the converters
take (as a manifest holds them), nothing is deserialized into models and back, and the watch
stream is read line by line here rather than by ``kubernetes_asyncio.watch.Watch``, which retries
a 410 Gone by itself and so hides the re-list that finds what was deleted meanwhile.

Every failure becomes an :class:`ApiFailure` whose message says what went wrong in words an
operator can act on (connection refused, TLS, 401, 403 with RBAC's message, 429, 5xx, a timeout);
what the server sends is bounded (a list page, a watch event, an error body) and clipped before
it reaches a log.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from kubernetes_asyncio.client import ApiClient

from ..model.problems import clip
from .api_resources import ApiResource
from .client_tls import ConnectionRetired

#: Largest list page read (a page of 500 pods is a few MiB).
MAX_PAGE_BYTES = 64 << 20
#: Largest error or discovery body read.
MAX_SMALL_BODY = 1 << 20
#: A watch event longer than this ends the watch (aiohttp refuses a line above twice its 2 MiB read
#: buffer, which kubernetes-asyncio sets for objects up to etcd's 1.5 MiB limit).
MAX_EVENT_BYTES = 4 << 20


class ApiFailure(Exception):
    """A request failed; ``str()`` says why. ``retry_after``: the pause the server asked for."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(clip(reason, 500))
        self.status = status
        self.retry_after = retry_after


class Expired(ApiFailure):
    """410 Gone: the resourceVersion is older than the server's history; list again."""


class Retired(ApiFailure):
    """The client closed the watch itself: its connection was made with a client certificate replaced since
    (:mod:`.client_tls`). Open it again at once, from the version it reached."""


class NotServed(ApiFailure):
    """404 on a collection: the server does not serve the resource (an optional kind's CRD is gone)."""


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    #: Longest a whole list page may take, from the request to the last byte.
    list: float = 60.0
    #: How much longer than its ``timeoutSeconds`` a watch may stay silent before it is taken for dead.
    watch_grace: float = 30.0


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number of seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()[:64]
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _status_message(body: bytes) -> str:
    """The ``message`` of a Kubernetes Status body, else the start of the body."""
    try:
        doc = json.loads(body)
    except ValueError:
        return clip(body.decode("utf-8", "replace").strip(), 200)
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return clip(doc["message"], 300)
    return clip(body.decode("utf-8", "replace").strip(), 200)


def status_failure(status: int, message: str, retry_after: float | None = None) -> ApiFailure:
    """The failure for an HTTP status (or a watch ERROR event's Status code), worded for an operator."""
    if status == 410:
        return Expired(f"410 Gone: {message or 'the resourceVersion is too old'}", status=status)
    if status == 404:
        return NotServed(f"404 Not Found: {message or 'the server does not serve this resource'}", status=status)
    if status == 401:
        return ApiFailure("401 Unauthorized: the server refused the credentials (expired or unknown token?)",
                          status=status)
    if status == 403:
        return ApiFailure(f"403 Forbidden: {message} (see the README for the RBAC zpilot needs)", status=status)
    if status == 429:
        return ApiFailure(f"429 Too Many Requests: {message}", status=status, retry_after=retry_after)
    return ApiFailure(f"HTTP {status}: {message}", status=status, retry_after=retry_after)


def _os_reason(error: OSError) -> str:
    """"Connection refused" rather than asyncio's "Connect call failed ('10.0.0.1', 443)"."""
    return os.strerror(error.errno) if error.errno else str(error)


def describe_exception(exc: BaseException, timeout: float | None = None) -> str:
    """Why a request failed, from the exception the client raised."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS: the server's certificate is not trusted ({exc.certificate_error})"
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return f"TLS handshake failed: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve the server's name: {_os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {_os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection broke mid-response"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s" if timeout else "timed out"
    return f"{type(exc).__name__}: {exc}"


#: What a request can fail with short of a bug: the client's errors, the socket's, a timeout.
REQUEST_ERRORS = (aiohttp.ClientError, OSError, ssl.SSLError, asyncio.TimeoutError)


class ApiCalls:
    """List, watch and discovery requests on one :class:`ApiClient` (its server and credentials)."""

    def __init__(self, api: ApiClient, timeouts: Timeouts = Timeouts()) -> None:
        self.api = api
        self.timeouts = timeouts

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    async def _get(self, path: str, query: list[tuple[str, str]], timeout: aiohttp.ClientTimeout,
                   seconds: float | None) -> aiohttp.ClientResponse:
        try:
            return await self.api.call_api(
                path, "GET", query_params=query, header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False, _request_timeout=timeout,
            )
        except REQUEST_ERRORS as exc:
            raise ApiFailure(describe_exception(exc, seconds)) from None

    async def _body(self, response: aiohttp.ClientResponse, limit: int, seconds: float | None) -> bytes:
        if response.content_length is not None and response.content_length > limit:
            raise ApiFailure(f"a response of {response.content_length:,} bytes is larger than the {limit:,} read")
        data = bytearray()
        try:
            async for chunk in response.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > limit:
                    raise ApiFailure(f"a response larger than {limit:,} bytes")
        except REQUEST_ERRORS as exc:
            raise ApiFailure(describe_exception(exc, seconds)) from None
        return bytes(data)

    async def _check(self, response: aiohttp.ClientResponse, seconds: float | None) -> None:
        if 200 <= response.status < 300:
            return
        body = await self._body(response, MAX_SMALL_BODY, seconds)
        raise status_failure(response.status, _status_message(body), _retry_after(response.headers.get("Retry-After")))

    async def list_page(self, resource: ApiResource, *, field_selector: str | None, limit: int,
                        continue_token: str | None) -> dict[str, Any]:
        """One page of a consistent LIST (``continue`` pages the same snapshot)."""
        query = [("limit", str(limit))]
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if continue_token:
            query.append(("continue", continue_token))
        seconds = self.timeouts.list
        timeout = aiohttp.ClientTimeout(total=seconds, sock_connect=self.timeouts.connect)
        page = await self._get_json(resource.collection_path, query, timeout, seconds, MAX_PAGE_BYTES,
                                    "a list response")
        if not isinstance(page, dict) or not isinstance(page.get("items", []), list) or not isinstance(
                page.get("metadata", {}), dict):
            raise ApiFailure("a list response without items or metadata")
        return page

    async def _get_json(self, path: str, query: list[tuple[str, str]], timeout: aiohttp.ClientTimeout, seconds: float, limit: int,
                        what: str) -> Any:
        """A GET's checked body (at most ``limit`` bytes), parsed as JSON; ``what`` names it in the error."""
        response = await self._get(path, query, timeout, seconds)
        try:
            await self._check(response, seconds)
            body = await self._body(response, limit, seconds)
        finally:
            response.close()
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ApiFailure(f"{what} that is not JSON ({exc})") from None

    async def get_object(self, path: str, *, seconds: float) -> dict[str, Any]:
        """One object by its URL path (a GET), the whole request within ``seconds``. A missing object is an
        ApiFailure with ``status`` 404 (the class says nothing more: a 404 on one name is not a 404 on a kind)."""
        timeout = aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, self.timeouts.connect))
        obj = await self._get_json(path, [], timeout, seconds, MAX_SMALL_BODY, f"GET {clip(path, 200)}: a response")
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            raise ApiFailure(f"GET {clip(path, 200)}: a response without metadata")
        return obj

    async def watch(self, resource: ApiResource, *, resource_version: str, field_selector: str | None,
                    timeout_seconds: int) -> AsyncIterator[dict[str, Any]]:
        """The events of a WATCH from ``resource_version`` (with bookmarks) until the server ends it."""
        query = [("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(timeout_seconds))]
        if field_selector:
            query.append(("fieldSelector", field_selector))
        silent = timeout_seconds + self.timeouts.watch_grace
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect, sock_read=silent)
        response = await self._get(resource.collection_path, query, timeout, silent)
        try:
            await self._check(response, silent)
            while True:
                try:
                    line = await response.content.readline()
                except (ValueError, HttpProcessingError):  # aiohttp: "Chunk too big" or LineTooLong
                    raise ApiFailure(f"a watch event larger than {MAX_EVENT_BYTES:,} bytes") from None
                except ConnectionRetired as exc:
                    raise Retired(str(exc)) from None
                except REQUEST_ERRORS as exc:
                    raise ApiFailure(describe_exception(exc, silent)) from None
                if not line:
                    return  # the server ended the watch (its timeoutSeconds)
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    raise ApiFailure(f"a watch event that is not JSON: {clip(line.decode('utf-8', 'replace'), 80)}") from None
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise ApiFailure("a watch event without an object")
                yield event
        finally:
            response.close()

    async def served(self, resource: ApiResource) -> bool:
        """Whether the server serves ``resource`` now (its group/version's discovery lists it)."""
        seconds = self.timeouts.list
        timeout = aiohttp.ClientTimeout(total=seconds, sock_connect=self.timeouts.connect)
        response = await self._get(resource.discovery_path, [], timeout, seconds)
        try:
            if response.status == 404:
                return False
            await self._check(response, seconds)
            body = await self._body(response, MAX_SMALL_BODY, seconds)
        finally:
            response.close()
        try:
            doc = json.loads(body)
        except ValueError:
            raise ApiFailure(f"discovery of {resource.api_version}: not JSON") from None
        entries = doc.get("resources") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ApiFailure(f"discovery of {resource.api_version}: no resource list")
        return any(isinstance(e, dict) and e.get("name") == resource.plural for e in entries)
