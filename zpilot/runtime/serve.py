"""The ``zpilot serve`` process: a model source feeding a control plane, until told to stop.

    source (ModelSource) --events--> ControlPlane.update --> producer --> cache --> ADS (TLS: security.py)
                                      CA: renewal, SIGHUP reload, CA Secret changes (same reload)

Start-up order matters for the ztunnels: the debug API comes up first (``/healthz/ready`` says
503), the source's first, fully read model is translated, and only then does ADS listen, so a
ztunnel that reconnects is never served an empty config by a server that has not read the
cluster yet. A CA kept in a Kubernetes Secret (``--ca-secret``) is read after the debug API is up
and before the model: while the API server refuses or fails, zpilot retries and stays not ready.
Who may fetch a node's config is ``xds_auth`` (docs/security.md): node certificates of the CA
(default), ServiceAccount tokens reviewed by the API server, or, only when asked, nobody at all.
``commands/serve.py`` only turns flags into :class:`ServeSettings` and a source; tests hand
:class:`ServeRuntime` any other source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

from .. import contract
from ..certs import CertificateAuthority, CertificateAuthorityError, IdentityCache
from ..certs.revocation import RevocationError
from ..kube.credentials import Credentials
from ..kube.object_names import SecretName
from ..kube.source import ModelEvent, ModelSource, SourceError
from ..translators import IncrementalTranslator, TranslateOptions
from ..xds.metrics_server import MetricsOptions
from ..xds.revocations import DirectoryRevocations, Revocations
from ..xds.security import XdsSecurity
from ..xds.server import ServerOptions
from ..xds.service_account import ServiceAccountRef
from .control_plane import ControlPlane, DebugOptions

if TYPE_CHECKING:  # the Kubernetes client, imported where the CA Secret or trust bundle is used: not with the
    # model from --manifests and the CA on disk (0.5 s of CPU at every start)
    from ..certs.kube_secret import SecretCaStore

log = logging.getLogger("zpilot.serve")


#: ``--xds-auth``: how a ztunnel proves its node (docs/security.md); plaintext is ``insecure``.
XDS_AUTH_MODES = ("tls", "token", "insecure")


@dataclass(frozen=True)
class TokenReviewSettings:
    """``--xds-auth token``: whose tokens count (the API server is ``ServeSettings.cluster``'s)."""

    audience: str = contract.XDS_TOKEN_AUDIENCE
    service_account: ServiceAccountRef = ServiceAccountRef()


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``zpilot serve`` is told, checked (the command refuses bad values first)."""

    xds: ServerOptions = field(default_factory=ServerOptions)
    debug: DebugOptions = field(default_factory=DebugOptions)
    metrics: MetricsOptions | None = field(default_factory=MetricsOptions)  # None: no /metrics listener
    translate: TranslateOptions = field(default_factory=TranslateOptions)
    ca_dir: Path | None = None  # None (and no ca_cert): a CA in memory
    ca_cert: Path | None = None
    ca_key: Path | None = None
    ca_root: Path | None = None
    ca_secret: SecretName | None = None  # the CA in this Kubernetes Secret (created on first start)
    #: Publish the CA's trust bundle in this ConfigMap (for ztunnels' --ca-bundle), kept current.
    trust_bundle_configmap: SecretName | None = None
    #: The cluster's credentials (zpilot.kube.client): the same object as the API watch's, so both use one
    #: loaded configuration.
    cluster: Credentials = field(default_factory=Credentials)
    cert_lifetime: float = 24 * 3600.0  # seconds
    #: One of XDS_AUTH_MODES: node client certificates, ServiceAccount tokens, or none at all.
    xds_auth: str = "tls"
    #: DNS names and IP addresses the ADS server's certificate carries besides localhost: what ztunnels dial.
    xds_names: tuple[str, ...] = ()
    token_review: TokenReviewSettings = field(default_factory=TokenReviewSettings)

    @property
    def trust_domain(self) -> str:
        return self.translate.trust_domain


def open_authority(settings: ServeSettings) -> CertificateAuthority:
    """The CA the settings name: files given, a directory (created on first start), or in memory.

    (A CA in a Kubernetes Secret is read by the runtime, asynchronously: :meth:`ServeRuntime.run`.)
    """
    if settings.ca_secret is not None:
        raise CertificateAuthorityError("--ca-secret is read from the cluster, not here")
    if settings.ca_cert or settings.ca_key:
        if not (settings.ca_cert and settings.ca_key) or settings.ca_dir:
            raise CertificateAuthorityError("--ca-cert and --ca-key go together, and not with --ca-dir")
        return CertificateAuthority.from_files(
            settings.ca_cert, settings.ca_key, root_path=settings.ca_root, trust_domain=settings.trust_domain
        )
    if settings.ca_dir is None:
        log.warning("no --ca-dir: the root CA is kept in memory only, so a restart makes a new root and"
                    " mTLS between nodes fails until every ztunnel has reconnected; give --ca-dir DIR"
                    " (or --ca-cert/--ca-key, or --ca-secret with replicas) to keep the root across restarts")
    return CertificateAuthority.load_or_create(settings.ca_dir, settings.trust_domain)


class ServeRuntime:
    """One ``zpilot serve``: :meth:`run` until ``stop`` is set; :meth:`reload_ca` on SIGHUP."""

    def __init__(self, settings: ServeSettings, source: ModelSource) -> None:
        if settings.xds_auth not in XDS_AUTH_MODES:
            raise ValueError(f"xds_auth {settings.xds_auth!r} is not one of {', '.join(XDS_AUTH_MODES)}")
        self.settings = settings
        self.source = source
        self.plane: ControlPlane | None = None
        self.ca_store: SecretCaStore | None = None  # with --ca-secret, once the API client is made
        #: The revoked node credentials (tls mode, CA in --ca-dir or --ca-secret): zpilot revoke writes them.
        self.revocations: Revocations | None = None
        self._revocations_dir: DirectoryRevocations | None = None  # --ca-dir: polled
        #: Set after each CA reload: the trust bundle's publisher compares and republishes.
        self._bundle_changed = asyncio.Event()

    def _identities(self, ca: CertificateAuthority) -> IdentityCache:
        return IdentityCache(ca, lifetime=timedelta(seconds=self.settings.cert_lifetime))

    def _make_plane(self, api) -> ControlPlane:
        """The plane, with its CA unless that lives in a Secret (attached once read: :meth:`_open_secret_ca`)."""
        identities = None if self.settings.ca_secret is not None else self._identities(open_authority(self.settings))
        return ControlPlane(
            xds_security=self._xds_security(api),
            server_options=self.settings.xds,
            debug_options=self.settings.debug,
            metrics_options=self.settings.metrics,
            translate=IncrementalTranslator(self.settings.translate),
            identities=identities,
            freeze_first_model=True,
        )

    def _xds_security(self, api) -> XdsSecurity:
        """What protects ADS. The CA is looked up at each use, through the plane's identities: it
        follows a reload, and a CA from a Secret is attached before ADS listens."""
        settings = self.settings

        def authority() -> CertificateAuthority:
            assert self.plane is not None and self.plane.identities is not None, "ADS started without a CA"
            return self.plane.identities.ca

        if settings.xds_auth == "insecure":
            return XdsSecurity.insecure()
        if settings.xds_auth == "tls":
            if settings.ca_dir is not None:  # read now: an unreadable list stops the start (RevocationError)
                self._revocations_dir = DirectoryRevocations(settings.ca_dir)
                self.revocations = self._revocations_dir.load()
            elif settings.ca_secret is not None:  # filled once the Secret is read
                self.revocations = Revocations(source=f"Secret {settings.ca_secret}")
            return XdsSecurity.mutual_tls(authority, settings.xds_names, trust_domain=settings.trust_domain,
                                          revocations=self.revocations)
        from ..xds.token_review import TokenReviewer

        review = settings.token_review
        verifier = TokenReviewer(api, audience=review.audience, service_account=review.service_account)
        return XdsSecurity.token(authority, verifier, settings.xds_names)

    async def _open_secret_ca(self, store: SecretCaStore) -> CertificateAuthority:
        """The CA in the Secret, retried until the API server lets us read (or create) a usable one.

        Until then ADS does not listen and ``/healthz/ready`` says 503: a replica without the
        mesh's root must not hand out certificates of its own.
        """
        from ..certs.kube_secret import CaSecretUnavailable, retry_delay

        attempt = 0
        while True:
            try:
                return await store.open()
            except (CaSecretUnavailable, CertificateAuthorityError) as exc:
                delay = retry_delay(attempt)
                log.error("cannot read the CA: %s; not ready, retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set: 0; 2 when it cannot start; 1 when the source fails."""
        api = None
        if (self.settings.ca_secret is not None or self.settings.xds_auth == "token"
                or self.settings.trust_bundle_configmap is not None):
            try:
                api = await self.settings.cluster.client()
            except SourceError as exc:
                why = ("the CA Secret" if self.settings.ca_secret is not None else "reviewing ztunnels' tokens"
                       if self.settings.xds_auth == "token" else "the trust bundle's ConfigMap")
                log.error("cannot reach the cluster for %s: %s", why, exc)
                return 2
        try:
            self.plane = plane = self._make_plane(api)
        except (CertificateAuthorityError, RevocationError) as exc:
            log.error("%s", exc)
            if api is not None:
                await api.close()
            return 2
        if self.settings.ca_secret is not None:
            from ..certs.kube_secret import SecretCaStore

            self.ca_store = SecretCaStore(api, self.settings.ca_secret, trust_domain=self.settings.trust_domain)
        try:
            await plane.start_debug()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            if api is not None:
                await api.close()
            return 2
        events = self.source.events()
        tasks: set[asyncio.Task] = set()
        try:
            if self.ca_store is not None:
                ca = await _until_stopped(self._open_secret_ca(self.ca_store), stop)
                if ca is None:
                    return 0
                plane.attach_identities(self._identities(ca))
                if self.revocations is not None:
                    try:
                        self.revocations.replace(self.ca_store.revocation_list())
                    except RevocationError as exc:
                        log.error("%s", exc)
                        return 2
            if self._revocations_dir is not None:
                tasks.add(asyncio.create_task(self._revocations_dir.follow(), name="revocations"))
            if self.settings.trust_bundle_configmap is not None:  # ztunnels may need it before ADS serves
                from ..certs.trust_bundle_configmap import TrustBundlePublisher

                publisher = TrustBundlePublisher(api, self.settings.trust_bundle_configmap)
                tasks.add(asyncio.create_task(publisher.keep_published(self._trust_bundle, self._bundle_changed),
                                              name="trust-bundle"))
            first = await _until_stopped(anext(events), stop)
            if first is None:  # stopped before the first model
                return 0
            await plane.update(first.index, changed_at=first.changed_at)
            try:
                await plane.start_xds()
            except OSError as exc:
                log.error("cannot start: %s", exc)
                return 2
            # a log record, not a print: with --log-format json every line on stderr is JSON
            log.info("serving %d nodes: ADS on %s (%s), debug API on %s, metrics on %s", len(first.index.nodes),
                     plane.xds_address, plane.ads.describe_security(), plane.debug_url,
                     plane.metrics_server.url if plane.metrics_server else "-")
            follow = asyncio.create_task(self._follow(events), name="model-source")
            stopped = asyncio.create_task(stop.wait(), name="stop")
            watched = {follow, stopped}
            if self.ca_store is not None:  # from the resourceVersion it was read at: nothing is missed
                watched.add(asyncio.create_task(self.ca_store.follow(self.reload_ca, self._secret_revocations_changed),
                                                name="ca-secret"))
            tasks |= watched
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if follow in done:
                return self._source_ended(follow)
            if stopped not in done:  # only the CA Secret's watch can be left; it never ends by itself
                [ended] = done
                log.error("following the CA Secret stopped: %s; exiting so that a supervisor restarts zpilot",
                          ended.exception() or "it returned", exc_info=ended.exception())
                return 1
            log.warning("shutting down")
            return 0
        except (SourceError, StopAsyncIteration) as exc:
            log.error("cannot read the model from %s: %s", self.source, exc or "it produced nothing")
            return 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]
            await plane.stop()
            if api is not None:
                await api.close()

    async def _follow(self, events: AsyncIterator[ModelEvent]) -> None:
        assert self.plane is not None
        async for event in events:
            await self.plane.update(event.index, changed_at=event.changed_at)

    def _secret_revocations_changed(self) -> None:
        """The CA Secret's revocation list changed: enforce it (an unreadable one: the last good one stays)."""
        if self.revocations is None or self.ca_store is None:
            return
        try:
            self.revocations.replace(self.ca_store.revocation_list())
        except RevocationError as exc:
            log.error("%s; the revocation list read before stays in force", exc)

    def _trust_bundle(self) -> bytes:
        assert self.plane is not None and self.plane.identities is not None
        return self.plane.identities.ca.trust_bundle_pem()

    def _source_ended(self, follow: asyncio.Task) -> int:
        """The source stopped: serving on would hide that the config no longer follows the cluster."""
        exc = follow.exception()
        log.error(
            "%s: %s; exiting so that a supervisor restarts zpilot", self.source, exc or "it stopped producing models",
            exc_info=exc if exc is not None and not isinstance(exc, SourceError) else None,
        )
        return 1

    async def reload_ca(self) -> bool:
        """Re-read the CA (its files; with --ca-secret, the Secret as last seen) and push what changed.

        SIGHUP and a changed CA Secret both come here; see ControlPlane.reload_ca."""
        if self.plane is None or not self.plane.ready:
            log.warning("CA reload asked before serving; ignored")
            return False
        try:
            return await self.plane.reload_ca()
        finally:
            self._bundle_changed.set()  # the publisher writes only if the bundle differs


async def _until_stopped(awaitable, stop: asyncio.Event):
    """The awaitable's result, or None if ``stop`` is set first (the awaitable is then cancelled)."""
    task = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def serve_until_signalled(runtime: ServeRuntime) -> int:
    """:meth:`ServeRuntime.run` with the process's signals: SIGTERM/SIGINT stop, SIGHUP reloads the CA."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task] = set()

    def reload_ca() -> None:
        task = asyncio.create_task(runtime.reload_ca(), name="ca-reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_ca)
    try:
        return await runtime.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
