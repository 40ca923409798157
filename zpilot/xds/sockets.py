"""Binding listen addresses ourselves, so a taken port is one clear error of ours.

Addresses are written as the command line takes them: ``host:port`` split into ``host`` (a name,
an IPv4 address, an IPv6 address with or without brackets) and ``port`` (0: any free port), or
``unix:/path`` for a Unix socket.

Every Unix socket zpilot creates is owner-only (0600) whatever the umask: a socket file's mode is
its access control, the ADS socket hands out every node's keys over SDS and the debug socket
every node's config. ``bind()`` creates the file with the process umask (0777 under umask 0), so
the umask is narrowed while binding (:func:`owner_only`; it is process-wide, and binding happens
at start-up, before anything else writes files) and the mode set again after.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from typing import Iterator

UNIX_PREFIX = "unix:"
#: The mode of every Unix socket zpilot creates.
UNIX_SOCKET_MODE = 0o600


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
    library find out and print its own error first. Port 0 always passes; a Unix socket passes
    unless another server listens on it (see :func:`clear_stale_socket`)."""
    if host.startswith(UNIX_PREFIX):
        clear_stale_socket(host[len(UNIX_PREFIX):])
        return
    if port == 0:
        return
    bind_tcp(host, port).close()


@contextlib.contextmanager
def owner_only(path: str) -> Iterator[None]:
    """Bind the Unix socket ``path`` inside this block: the file is created 0600, whatever the umask."""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)
    if os.path.exists(path):
        os.chmod(path, UNIX_SOCKET_MODE)


def clear_stale_socket(path: str) -> None:
    """A socket file nobody answers on (left by a killed run) is removed; one a live server
    answers on, or any other file, is an error (a library binding there would take it over)."""
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


def listen_unix(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600; see :func:`clear_stale_socket` for what
    may be there already."""
    clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with owner_only(path):
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
