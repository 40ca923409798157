"""The server itself: an aiohttp application on its own thread and event loop, with the Python API tests use.

Running on its own loop lets every kind of client reach it: an async client on the test's loop, a sync test,
and a ``zpilot serve`` subprocess (through the kubeconfig it writes). Python API calls are thread-safe and take
effect at once (they write the store under its lock), so a test changes the cluster with plain calls.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import ssl
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from aiohttp import web

from .auth import ALL, Authenticator, TokenIssuer, API_AUDIENCES
from .cluster import Cluster
from .endpointslices import EndpointSliceController
from .errors import ApiError
from .faults import Fault, FaultInjector
from .handlers import Handlers, RequestRecord
from .objects import (istio_security_crds, make_endpoint_slice, make_namespace, make_service, make_service_account,
                      service_port)
from .store import Change, Obj, plain
from .tls import ClientCa, make_serving_certs

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class ApiServer:
    """An in-process kube-apiserver. See the package docstring for the tour."""

    def __init__(self, workdir: Path, *, tls: bool = True, bootstrap: bool = True, controllers: bool = True,
                 service_cidr: str = "10.8.0.0/20", api_address: str = "172.16.0.2",
                 bookmark_interval: float = 1.0, default_watch_timeout: float = 1800.0,
                 expired_watch_as: str = "event", max_history: int = 100_000) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.cluster = Cluster(service_cidr=service_cidr, max_history=max_history)
        self.auth = Authenticator()
        self.admin_token = self.auth.add_token(secrets.token_urlsafe(24), user="admin", allow=ALL)
        self.tokens = TokenIssuer(self.cluster.store)
        self.faults = FaultInjector()
        self.handlers = Handlers(self)
        #: Seconds between BOOKMARK events on watches that allow them.
        self.bookmark_interval = bookmark_interval
        #: A watch without ``timeoutSeconds`` ends after this long (the real server picks 30-60 minutes).
        self.default_watch_timeout = default_watch_timeout
        #: How a watch from a compacted resourceVersion is refused: ``"event"`` (HTTP 200, then an ERROR event
        #: with a 410 Status, as kube-apiserver's watch cache does) or ``"http"`` (an HTTP 410 response).
        self.expired_watch_as = expired_watch_as
        self.port = 0
        self.certs = make_serving_certs() if tls else None
        self.client_ca = ClientCa()
        self.kubeconfig_path = self.workdir / "kubeconfig"
        self.ca_path = self.workdir / "ca.crt"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        if controllers:
            slices = EndpointSliceController(self.cluster)
            self.cluster.store.hooks.append(slices.on_change)
            self.cluster.store.hooks.append(self._service_account_controller)
        if bootstrap:
            self._bootstrap(api_address)

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> "ApiServer":
        """Listen (on a free port the first time, the same port after a ``stop()``) and write the kubeconfig."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="test-apiserver", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=10)
        if self.certs is not None:
            self.ca_path.write_bytes(self.certs.ca_pem)
        self.write_kubeconfig(self.kubeconfig_path)
        return self

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        context = None
        if self.certs is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert_file, key_file = self.workdir / "serving.crt", self.workdir / "serving.key"
            cert_file.write_bytes(self.certs.cert_pem)
            key_file.write_bytes(self.certs.key_pem)
            key_file.chmod(0o600)
            context.load_cert_chain(cert_file, key_file)
            context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate, when given, must be of the client CA
            context.load_verify_locations(cadata=self.client_ca.ca_pem.decode())
        self._runner = web.AppRunner(self.handlers.app(), handler_cancellation=True, access_log=None,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=context).start()

    def stop(self) -> None:
        """Close every watch cleanly and stop listening; the cluster's state stays for a later ``start()``."""
        if self._thread is None or self._loop is None:
            return
        self.cluster.store.close_subscriptions("end")
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._thread = self._loop = self._runner = None

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- credentials ---------------------------------------------------------------------------------------

    def add_token(self, token: str | None = None, *, user: str | None = None,
                  allow: Iterable[tuple[str, str]] = ALL) -> str:
        """Accept a bearer token (a fresh one if None) allowed the given (verb, resource) pairs; return it."""
        return self.auth.add_token(token or secrets.token_urlsafe(24), user=user, allow=allow)

    def issue_client_certificate(self, user: str, *, allow: Iterable[tuple[str, str]] = ALL) -> tuple[bytes, bytes]:
        """A client certificate (and its key, PEM) the server accepts as ``user`` when no bearer token is sent."""
        self.auth.add_certificate_user(user, allow=allow)
        return self.client_ca.issue(user)

    def write_kubeconfig(self, path: Path, *, token: str | None = None, context: str = "test-apiserver") -> Path:
        """A kubeconfig for this server (CA inline when TLS) that authenticates with ``token`` (default: admin)."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.certs is not None:
            cluster["certificate-authority-data"] = base64.b64encode(self.certs.ca_pem).decode()
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": context, "preferences": {},
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def write_in_cluster_files(self, directory: Path, *, token: str | None = None,
                               namespace: str = "istio-system") -> dict[str, str]:
        """The files a pod's service account mount holds (token, ca.crt, namespace) and the environment
        variables in-cluster config reads; pass both to ``load_incluster_config`` / the process under test."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text(token or self.admin_token)
        (directory / "namespace").write_text(namespace)
        if self.certs is not None:
            (directory / "ca.crt").write_bytes(self.certs.ca_pem)
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}

    def issue_token(self, namespace: str, service_account: str, *, pod: str | Mapping[str, Any] | None = None,
                    audiences: Iterable[str] = API_AUDIENCES, expires_in: float = 3600.0,
                    issued_at: float | None = None) -> str:
        """A projected service-account token (a signed JWT) that TokenReview accepts while it is valid.

        ``pod`` (a name in ``namespace`` or a Pod object) binds it: the review then carries the pod-name and
        pod-uid extras, and fails once that pod is gone. ``expires_in`` may be negative for an expired token.
        """
        pod_obj: Mapping[str, Any] | None
        pod_obj = self.get("pods", pod, namespace) if isinstance(pod, str) else pod
        return self.tokens.issue(namespace, service_account, pod=dict(pod_obj) if pod_obj else None,
                                 audiences=audiences, expires_in=expires_in, issued_at=issued_at)

    # -- the cluster, from Python ---------------------------------------------------------------------------

    def create(self, obj: Mapping[str, Any]) -> Obj:
        """Create as the cluster: a manifest's uid and creationTimestamp are kept (409 AlreadyExists if present)."""
        return plain(self.cluster.create(self.cluster.resource(obj), obj))

    def update(self, obj: Mapping[str, Any]) -> Obj:
        """Replace the whole object, status included; with ``metadata.resourceVersion`` set, 409 if stale."""
        return plain(self.cluster.update(self.cluster.resource(obj), obj))

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        """Create, or replace what is there."""
        return plain(self.cluster.apply(obj))

    def patch(self, resource: str, name: str, patch: Mapping[str, Any], namespace: str | None = "default") -> Obj:
        """A JSON merge patch (``{"metadata": {"labels": {"a": None}}}`` removes a label)."""
        t = self.cluster.resource(resource)
        return plain(self.cluster.patch(t, namespace, name, dict(patch), "application/merge-patch+json"))

    def delete(self, resource: str, name: str, namespace: str | None = "default") -> Obj:
        return plain(self.cluster.delete(self.cluster.resource(resource), namespace, name))

    def get(self, resource: str, name: str, namespace: str | None = "default") -> Obj:
        return plain(self.cluster.get(self.cluster.resource(resource), namespace, name))

    def list(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None) -> list[Obj]:
        t = self.cluster.resource(resource)
        return plain(self.cluster.list(t, namespace, label_selector=label_selector,
                                               field_selector=field_selector).items)

    def terminate(self, resource: str, name: str, namespace: str | None = "default", grace_seconds: int = 30) -> Obj:
        """Start a graceful delete as the server does for a pod on a node: set ``deletionTimestamp`` (MODIFIED);
        the object stays until ``delete()`` (the kubelet's final word)."""
        obj = self.get(resource, name, namespace)
        meta = obj["metadata"]
        meta["deletionTimestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["deletionGracePeriodSeconds"] = grace_seconds
        return self.update(obj)

    @property
    def resource_version(self) -> int:
        return self.cluster.store.rv

    def compact(self, up_to: int | None = None) -> int:
        """Forget history up to ``up_to`` (default: now). Watches and exact lists from before it get 410."""
        return self.cluster.store.compact(up_to)

    def install_crd(self, crd: Mapping[str, Any]) -> Obj:
        return self.create(crd)

    def install_istio_crds(self) -> list[Obj]:
        """Serve ``security.istio.io`` v1 and v1beta1 (AuthorizationPolicy, PeerAuthentication) from now on."""
        return [self.apply(crd) for crd in istio_security_crds()]

    def remove_crd(self, name: str) -> Obj:
        """Delete a CRD: its objects are deleted, its watches end, its group/version 404s again."""
        return self.delete("customresourcedefinitions", name, None)

    # -- faults and watches --------------------------------------------------------------------------------

    def inject(self, *, status: int | None = None, retry_after: int | None = None, delay: float = 0.0,
               reset: bool = False, drop_after_events: int | None = None, times: int = 1, verb: str | None = None,
               resource: str | None = None) -> Fault:
        """Make the next ``times`` matching requests fail (``status``, with ``retry_after``), stall (``delay``
        seconds, then answer), lose their connection (``reset``), or, for watches, be cut after
        ``drop_after_events`` events. ``verb``/``resource`` narrow what matches (None: anything)."""
        return self.faults.add(Fault(status=status, retry_after=retry_after, delay=delay, reset=reset,
                                     drop_after_events=drop_after_events, times=times, verb=verb, resource=resource))

    def drop_watches(self, resource: str | None = None) -> int:
        """Cut the open watches (of one resource, or all) mid-stream, as a broken connection would."""
        return self.cluster.store.close_subscriptions("drop", self._keys(resource))

    def end_watches(self, resource: str | None = None) -> int:
        """End the open watches cleanly, as the server does when their timeout expires."""
        return self.cluster.store.close_subscriptions("end", self._keys(resource))

    def send_bookmarks(self) -> None:
        """A BOOKMARK now on every open watch that allows them."""
        self.cluster.store.request_bookmarks()

    def watchers(self, resource: str | None = None) -> int:
        """How many watches are open (on one resource, or all), their requests in :attr:`requests`: a watch
        subscribes before its stream opens and its request is recorded, and a test reading the log once the
        watches are open (the rotation tests) found a request opened before it recorded after it."""
        keys = self._keys(resource)
        return len([s for s in self.cluster.store.subscriptions() if s.recorded and (keys is None or s.resource in keys)])

    async def wait_for_watchers(self, resource: str | None = None, count: int = 1, timeout: float = 10.0) -> None:
        """Wait (on the caller's loop) until at least ``count`` watches are open."""
        deadline = time.monotonic() + timeout
        while self.watchers(resource) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.watchers(resource)} watches open on {resource or 'anything'}, wanted {count}")
            await asyncio.sleep(0.01)

    @property
    def requests(self) -> list[RequestRecord]:
        return self.handlers.requests

    def _keys(self, resource: str | None) -> list[str] | None:
        return None if resource is None else [self.cluster.resource(resource).key]

    # -- what a new cluster has ----------------------------------------------------------------------------

    def _bootstrap(self, api_address: str) -> None:
        for ns in SYSTEM_NAMESPACES:
            self.create(make_namespace(ns))
        first_ip = str(next(self.cluster.cluster_ips.network.hosts()))
        self.create(make_service("kubernetes", "default", ports=[service_port(443, 443, "https")],
                                 cluster_ip=first_ip, labels={"component": "apiserver", "provider": "kubernetes"}))
        self.create(make_endpoint_slice("kubernetes", "kubernetes", "default",
                                        endpoints=[{"addresses": [api_address], "conditions": {"ready": True}}],
                                        ports=[{"name": "https", "port": 443, "protocol": "TCP"}],
                                        managed_by=None))

    def _service_account_controller(self, change: Change) -> None:
        """Every namespace gets a ``default`` ServiceAccount, as kube-controller-manager creates it."""
        if change.resource == "/namespaces" and change.type == "ADDED":
            try:
                self.cluster.create(self.cluster.resource("serviceaccounts"), make_service_account("default", change.name))
            except ApiError as err:
                if err.code != 409:
                    raise

