"""Running a kubeconfig user's ``exec`` credential plugin, with a time limit, never to prompt.

kubernetes-asyncio runs a plugin without a time limit, and a wait that is cancelled leaves the plugin
running. zpilot runs it here instead, both at the first load (``zpilot serve``'s start) and at each renewal.
A plugin that has not answered in the time given is killed, with whatever it ran (its process group).

The plugin's standard output holds the token, so it is never put in an error or a log. Its standard error
(the plugin's own message, such as "credentials expired, run aws sso login") is put in, cut to 500
characters. The protocol is the client-go credential plugin's:
https://kubernetes.io/docs/reference/access-authn-authz/authentication/#client-go-credential-plugins
(``spec.interactive`` is always false; with ``provideClusterInfo: true`` the cluster is in ``spec.cluster``, as
client-go sends it.) A command that is not found is named with the section's ``installHint`` (cut to
``MAX_INSTALL_HINT`` characters), as kubectl prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from datetime import datetime, timedelta, timezone

from .kubeconfig import ExecCredential, ExecPlugin

#: How long before a token's ``expirationTimestamp`` it is renewed (kubernetes-asyncio's margin, kept).
EXPIRY_MARGIN = timedelta(minutes=5)
#: What a plugin may print, on each of its outputs (a token, or a certificate and key, are a few KB).
MAX_OUTPUT_BYTES = 1 << 20
#: After a plugin was killed, how long its end is waited for: asyncio waits for its outputs to close too, and a
#: daemon it started in a session of its own (a credential agent) may hold them open for ever.
KILLED_WAIT_SECONDS = 2.0
#: How much of a plugin's standard error goes into an error message.
STDERR_IN_MESSAGE = 500


class ExecPluginError(Exception):
    """The plugin failed, gave no answer in time, or printed no credential: the message names the user."""


async def run_exec_plugin(plugin: ExecPlugin, timeout: float) -> ExecCredential:
    """Run ``plugin`` once and return its credential; ExecPluginError if it has not answered in ``timeout``
    seconds (it is then killed), exits non-zero, or prints no ExecCredential with a token or certificate."""
    who = f"kubeconfig user {plugin.user[:200]}: exec plugin {plugin.command[:200]}"
    spec: dict = {"interactive": False}
    if plugin.cluster is not None:
        spec["cluster"] = dict(plugin.cluster)
    info = {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": spec}
    loop = asyncio.get_running_loop()
    try:
        # A session (and process group) of its own: a plugin that is a script waiting on a command it ran is
        # killed with that command, which would otherwise run on, one more per renewal tried.
        transport, run = await loop.subprocess_exec(
            lambda: _PluginRun(loop), plugin.command, *plugin.args,
            env={**os.environ, **plugin.env, "KUBERNETES_EXEC_INFO": json.dumps(info)},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
    except (FileNotFoundError, PermissionError) as exc:  # (what Go's exec.Error is: client-go's hint then)
        hint = f"; {plugin.install_hint}" if plugin.install_hint else ""
        raise ExecPluginError(f"{who}: cannot be run ({exc.strerror or exc}){hint}") from None
    except OSError as exc:
        raise ExecPluginError(f"{who}: cannot be run ({exc.strerror or exc})") from None
    try:
        try:
            await asyncio.wait_for(asyncio.shield(run.done), timeout)
        except TimeoutError:
            raise ExecPluginError(f"{who}: no answer in {timeout:g} s (killed)") from None
        if run.too_much:
            raise ExecPluginError(f"{who}: printed more than {MAX_OUTPUT_BYTES >> 20} MiB (killed)")
    except BaseException:  # (a timeout, too much printed, or the caller cancelled: what it ran is still there)
        _kill_group(transport.get_pid())
        # Its end is waited for: its outputs close then. A daemon of its own session (a credential agent) may
        # hold them for ever, so KILLED_WAIT_SECONDS at most; the transport is closed in any case, which
        # closes our end of the pipes (a transport left open ran its __del__ inside a later garbage
        # collection, once inside CPython's ast.parse, which raised SystemError).
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            # (both: ``done`` is set as soon as a plugin has printed too much, before the kill has taken effect)
            await asyncio.wait_for(asyncio.shield(asyncio.gather(run.done, run.exited)), KILLED_WAIT_SECONDS)
        raise
    finally:
        transport.close()
    code = transport.get_returncode()
    if code:
        said = bytes(run.stderr).decode(errors="replace").strip()[:STDERR_IN_MESSAGE]
        raise ExecPluginError(f"{who}: exit status {code}" + (f": {said}" if said else ""))
    return _credential(bytes(run.stdout), plugin, who)


def due(credential: ExecCredential, now: datetime | None = None, obtained: datetime | None = None) -> bool:
    """Whether ``credential`` is to be renewed now: it has an expiry, and is within EXPIRY_MARGIN of it; or, if
    it was ``obtained`` less than twice that margin before its expiry, past half its life (a token living
    less than the margin would be due as it came, and renewed before every request)."""
    if credential.expiry is None:
        return False
    margin = EXPIRY_MARGIN
    if obtained is not None:
        margin = max(timedelta(0), min(margin, (credential.expiry - obtained) / 2))
    return (now or datetime.now(timezone.utc)) + margin >= credential.expiry  # (expiry - margin: OverflowError at year 1)


class _PluginRun(asyncio.SubprocessProtocol):
    """What a plugin prints, kept up to MAX_OUTPUT_BYTES on each output (memory is bounded whatever it
    prints: past that it is killed), and ``done`` once it has exited and both outputs are closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stdout, self.stderr = bytearray(), bytearray()
        self.too_much = False
        self.done: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[None] = loop.create_future()  # the plugin itself has ended (been reaped)
        self._transport: asyncio.SubprocessTransport | None = None
        self._open = {1, 2}
        self._exited = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        kept = self.stdout if fd == 1 else self.stderr
        if self.too_much:
            return
        kept += data
        if len(kept) > MAX_OUTPUT_BYTES:
            self.too_much = True
            if self._transport is not None:
                _kill_group(self._transport.get_pid())
            if not self.done.done():  # (its answer is known: a daemon holding its outputs must not delay it)
                self.done.set_result(None)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        self._finish()

    def process_exited(self) -> None:
        self._exited = True
        if not self.exited.done():
            self.exited.set_result(None)
        self._finish()

    def _finish(self) -> None:
        if self._exited and not self._open and not self.done.done():
            self.done.set_result(None)


def _kill_group(pid: int | None) -> None:
    """SIGKILL to the plugin's process group (the plugin and what it ran)."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _credential(stdout: bytes, plugin: ExecPlugin, who: str) -> ExecCredential:
    """The ExecCredential's status (never quoting the output: it holds the token)."""
    try:
        document = json.loads(stdout)
        status = document["status"]
        api_version = document.get("apiVersion")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExecPluginError(f"{who}: printed no ExecCredential with a status ({type(exc).__name__})") from None
    if api_version != plugin.api_version:
        raise ExecPluginError(f"{who}: answered apiVersion {str(api_version)[:100]}, not {plugin.api_version}")
    if not isinstance(status, dict):
        raise ExecPluginError(f"{who}: its status is not a mapping")
    token = status.get("token")
    cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
    if not (isinstance(token, str) and token) and not (isinstance(cert, str) and isinstance(key, str)):
        raise ExecPluginError(f"{who}: its status has neither a token nor a client certificate and key")
    expiry = None
    if "expirationTimestamp" in status:
        try:
            expiry = datetime.fromisoformat(str(status["expirationTimestamp"]).replace("Z", "+00:00"))
        except ValueError:
            raise ExecPluginError(f"{who}: its expirationTimestamp is not an RFC 3339 time") from None
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=timezone.utc)
    if isinstance(token, str) and token:
        return ExecCredential(token=token, expiry=expiry)
    return ExecCredential(client_certificate=cert, client_key=key, expiry=expiry)
