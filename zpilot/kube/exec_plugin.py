"""Running a kubeconfig user's ``exec`` credential plugin, with a time limit, never to prompt.

kubernetes-asyncio runs a plugin without a time limit, and a wait that is cancelled leaves the plugin
running. zpilot runs it here instead, both at the first load (``zpilot serve``'s start) and at each renewal.
A plugin that has not answered in the time given is killed, with whatever it ran (its process group).

The plugin's standard output holds the token, so it is never put in an error or a log. Its standard error
(the plugin's own message, such as "credentials expired, run aws sso login") is put in, cut to 500
characters. The protocol is the client-go credential plugin's:
https://kubernetes.io/docs/reference/access-authn-authz/authentication/#client-go-credential-plugins
(``spec.interactive`` is always false; the cluster's details, ``provideClusterInfo``, are not sent, as
kubernetes-asyncio did not send them either.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
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
    who = f"kubeconfig user {plugin.user}: exec plugin {plugin.command}"
    info = {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    try:
        # A session (and process group) of its own: a plugin that is a script waiting on a command it ran is
        # killed with that command, which would otherwise run on, one more per renewal tried.
        proc = await asyncio.create_subprocess_exec(
            plugin.command, *plugin.args, env={**os.environ, **plugin.env, "KUBERNETES_EXEC_INFO": json.dumps(info)},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise ExecPluginError(f"{who}: cannot be run ({exc.strerror or exc})") from None
    assert proc.stdout is not None and proc.stderr is not None
    parts = [asyncio.ensure_future(_read_bounded(proc.stdout)), asyncio.ensure_future(_read_bounded(proc.stderr)),
             asyncio.ensure_future(proc.wait())]
    answered = False
    try:
        stdout, stderr, _ = await asyncio.wait_for(asyncio.gather(*parts), timeout)
        answered = True
    except TimeoutError:
        raise ExecPluginError(f"{who}: no answer in {timeout:g} s (killed)") from None
    except _TooMuch:
        raise ExecPluginError(f"{who}: printed more than {MAX_OUTPUT_BYTES >> 20} MiB (killed)") from None
    finally:
        if not answered:  # (its outputs still open: the plugin, or what it ran, is still there)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # (every one of them had ended)
                pass
            for part in parts:  # (gather ends at the first error, the other parts still running)
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            # Its outputs read to their end, what is left thrown away: a pipe whose reader stopped (paused
            # full, or cancelled) never sees its end, and its transport, left open, ran Python code (its
            # __del__) inside a later garbage collection, once inside CPython's ast.parse, which raised
            # SystemError. asyncio's wait is for the pipes' end too, which a daemon of its own session may
            # hold: that is waited for KILLED_WAIT_SECONDS at most.
            try:
                await asyncio.wait_for(asyncio.gather(_drain(proc.stdout), _drain(proc.stderr), proc.wait()),
                                       KILLED_WAIT_SECONDS)
            except TimeoutError:
                pass
    if proc.returncode:
        said = stderr.decode(errors="replace").strip()[:STDERR_IN_MESSAGE]
        raise ExecPluginError(f"{who}: exit status {proc.returncode}" + (f": {said}" if said else ""))
    return _credential(stdout, plugin, who)


def due(credential: ExecCredential, now: datetime | None = None) -> bool:
    """Whether ``credential`` is to be renewed now: it has an expiry, and is within EXPIRY_MARGIN of it."""
    if credential.expiry is None:
        return False
    return (now or datetime.now(timezone.utc)) >= credential.expiry - EXPIRY_MARGIN


async def _read_bounded(stream: asyncio.StreamReader) -> bytes:
    """The stream to its end; _TooMuch past MAX_OUTPUT_BYTES (memory is bounded whatever a plugin prints)."""
    data = bytearray()
    while chunk := await stream.read(65536):
        data += chunk
        if len(data) > MAX_OUTPUT_BYTES:
            raise _TooMuch
    return bytes(data)


async def _drain(stream: asyncio.StreamReader) -> None:
    """The stream read to its end and thrown away."""
    while await stream.read(65536):
        pass


class _TooMuch(Exception):
    """A plugin printed more than MAX_OUTPUT_BYTES."""


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
