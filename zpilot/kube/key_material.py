"""Handing a kubeconfig's CA, client certificate and key to kubernetes-asyncio without writing them to disk.

kubernetes-asyncio takes TLS material as file paths only (``Configuration.ssl_ca_cert``, ``cert_file``,
``key_file``, read by Python's ``ssl`` when an ``ApiClient`` is made), and writes a kubeconfig's ``*-data``
fields to files under the temp directory that stay there until the process exits. A control plane's client
key must not sit in a directory every local user can list. So each PEM is put in an anonymous memory file
(``memfd_create``): its path, ``/proc/self/fd/N``, is this process's own, and the file is gone once its
descriptor is closed, right after the client has read it. Where there are no memory files (not Linux, or
``memfd_create`` refused: an old kernel, a seccomp profile), a directory only this user may enter (0700)
holds them for that moment, and is removed with them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from kubernetes_asyncio import client

from .kubeconfig import TlsMaterial


@contextlib.contextmanager
def tls_paths(material: TlsMaterial) -> Iterator[tuple[str | None, str | None, str | None]]:
    """Paths of the CA, client certificate and key (None where not given), readable until the block ends."""
    pems = (material.ca, material.client_certificate, material.client_key)
    if not any(p is not None for p in pems):
        yield None, None, None
        return
    fds = _memory_files(pems)
    if fds is not None:
        try:
            paths = iter(f"/proc/self/fd/{fd}" for fd in fds)
            yield tuple(next(paths) if pem is not None else None for pem in pems)  # type: ignore[misc]
        finally:
            for fd in fds:
                os.close(fd)
        return
    directory = tempfile.mkdtemp(prefix="zpilot-kube-tls-")  # (mkdtemp: 0700, this user's only)
    try:
        named = []
        for name, pem in zip(("ca.crt", "client.crt", "client.key"), pems):
            if pem is None:
                named.append(None)
                continue
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, pem)
            finally:
                os.close(fd)
            named.append(path)
        yield tuple(named)  # type: ignore[misc]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _memory_files(pems: tuple[bytes | None, ...]) -> list[int] | None:
    """A memory file holding each PEM given, or None where there are none: not Linux, no ``/proc``, or
    ``memfd_create`` refused (an old kernel's ENOSYS, a container's seccomp profile's EPERM)."""
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        return None
    fds: list[int] = []
    try:
        for pem in pems:
            if pem is not None:
                fds.append(os.memfd_create("zpilot-kube-tls", os.MFD_CLOEXEC))
                _write_all(fds[-1], pem)
    except OSError:
        for fd in fds:
            os.close(fd)
        return None
    return fds


def make_client(configuration: client.Configuration, material: TlsMaterial) -> client.ApiClient:
    """An ``ApiClient`` of ``configuration`` whose TLS context holds ``material``; the paths it was read from
    are not left in the configuration (they name nothing once the client is made)."""
    with tls_paths(material) as (ca, cert, key):
        configuration.ssl_ca_cert, configuration.cert_file, configuration.key_file = ca, cert, key
        try:
            return client.ApiClient(configuration)
        finally:
            configuration.ssl_ca_cert = configuration.cert_file = configuration.key_file = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
