"""Making a kubeconfig's TLS context (its CA, client certificate and key) without writing them to disk.

Python's ``ssl`` takes a CA, certificate and key as file paths only (``create_default_context(cafile=)``,
``load_cert_chain``), and kubernetes-asyncio writes a kubeconfig's ``*-data`` fields to files under the temp
directory that stay there until the process exits. A control plane's client key must not sit in a directory
every local user can list. So each PEM is put in an anonymous memory file (``memfd_create``): its path,
``/proc/self/fd/N``, is this process's own, and the file is gone once its descriptor is closed, right after
the context has read it. Where there are no memory files (not Linux, or ``memfd_create`` refused: an old
kernel, a seccomp profile), a directory only this user may enter (0700) holds them for that moment, and is
removed with them.

The context is made here, as kubernetes-asyncio's ``RESTClientObject`` makes its own from a configuration
(the CA, the client certificate, ``insecure-skip-tls-verify``, strict verification), and handed to each
request (:mod:`.client_tls`): so a client certificate rotated on disk is a new context, not a new client.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import tempfile
from typing import Iterator

from kubernetes_asyncio import client

from .kubeconfig import KubeConfigProblem, TlsMaterial


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


def ssl_context(material: TlsMaterial, configuration: client.Configuration, *, cluster: str,
                user: str | None) -> ssl.SSLContext:
    """The TLS context of ``material`` with ``configuration``'s verification settings, as kubernetes-asyncio's
    ``RESTClientObject`` would make it. KubeConfigProblem, naming the cluster or user, if the CA or the client
    certificate and key are not PEM that TLS can use (found now rather than at the first request)."""
    with tls_paths(material) as (ca, cert, key):
        try:
            context = ssl.create_default_context(cafile=ca)
        except ssl.SSLError as exc:
            raise KubeConfigProblem(f"cluster {cluster}: its certificate authority is not a PEM CA ({exc.reason})"
                                    ) from None
        if cert is not None:
            try:  # (no password: OpenSSL would ask for one on the terminal, and the process would wait on it)
                context.load_cert_chain(cert, key, password=_no_passphrase)
            except _EncryptedKey:
                raise KubeConfigProblem(f"user {str(user)[:200]}: its client key is encrypted (a passphrase, which"
                                        " kubectl cannot use either): give it decrypted") from None
            except ssl.SSLError as exc:
                raise KubeConfigProblem(f"user {str(user)[:200]}: its client certificate and key are not a PEM pair"
                                        f" that goes together ({exc.reason or exc.strerror})") from None
    if not configuration.verify_ssl:  # insecure-skip-tls-verify (refused with a CA)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.disable_strict_ssl_verification:
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def make_client(configuration: client.Configuration, material: TlsMaterial) -> client.ApiClient:
    """An ``ApiClient`` of ``configuration`` whose own TLS context (its connector's default, which each request
    overrides with :mod:`.client_tls`'s) holds ``material`` too: made from the CA alone, kubernetes-asyncio would
    load the system's whole CA store for it, about 30 ms of CPU for every client. The paths it was read from are
    not left in the configuration (they name nothing once the client is made)."""
    with tls_paths(material) as (ca, cert, key):
        configuration.ssl_ca_cert, configuration.cert_file, configuration.key_file = ca, cert, key
        try:
            return client.ApiClient(configuration)
        finally:
            configuration.ssl_ca_cert = configuration.cert_file = configuration.key_file = None


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _EncryptedKey


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
