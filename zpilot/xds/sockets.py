"""Binding listen addresses ourselves, so a taken port is one clear error of ours.

Addresses are written as the command line takes them: ``host:port`` split into ``host`` (a name,
an IPv4 address, an IPv6 address with or without brackets) and ``port`` (0: any free port), or
``unix:/path`` for a Unix socket.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

UNIX_PREFIX = "unix:"


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to the first address of ``host`` that can be bound (not listening yet).

    SO_REUSEADDR is set, as gRPC and uvicorn set it, so a port whose last connections are in
    TIME_WAIT counts as free; SO_REUSEPORT is not, so a port another process listens on does not.
    Raises OSError (with the errno of the first failure) naming the address when none can be bound.
    """
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc.strerror}") from None
    first: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            return sock
        except OSError as exc:
            sock.close()
            first = first or exc
    assert first is not None  # getaddrinfo returns at least one address or raises
    raise OSError(first.errno, first.strerror or str(first))


def ensure_bindable(host: str, port: int) -> None:
    """Raise OSError now if ``host:port`` cannot be bound (a taken port), instead of letting a
    library find out and print its own error first. A Unix socket or port 0 always passes."""
    if host.startswith(UNIX_PREFIX) or port == 0:
        return
    bind_tcp(host, port).close()


def listen_unix(path: str) -> socket.socket:
    """A listening Unix socket at ``path``. A socket file nobody answers on (left by a killed
    run) is replaced; one a live server answers on, or any other file, is an error."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # stale
            else:
                raise OSError(errno.EADDRINUSE, f"a server already listens on {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def listen(host: str, port: int) -> socket.socket:
    """A listening socket for ``host:port`` or ``unix:/path`` (given as ``host``)."""
    if host.startswith(UNIX_PREFIX):
        return listen_unix(host[len(UNIX_PREFIX):])
    sock = bind_tcp(host, port)
    try:
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def describe(host: str, port: int) -> str:
    """``host:port``, ``[v6]:port`` or ``unix:/path``, as in messages."""
    if host.startswith(UNIX_PREFIX):
        return host
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"
