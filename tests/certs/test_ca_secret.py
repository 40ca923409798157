"""The CA kept in a Kubernetes Secret, against the in-process API server (real HTTP, real client).

Replicas agree on one root: the first creates the Secret, the others read it, two racing end on
the one the API server accepted; a user's ``cacerts`` is used as is; a change is followed (watch,
410 Gone, dropped connections), and a Secret that becomes unusable or disappears fails the reload
so that the current CA stays.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest
from cryptography import x509

from tests.kube.apiserver.fixtures import api_client
from tests.kube.apiserver.objects import make_secret
from zpilot.certs import CertificateAuthority, CertificateAuthorityError
from zpilot.certs.kube_secret import (
    CA_CERT_KEY,
    CA_KEY_KEY,
    CERT_CHAIN_KEY,
    EXTRA_ROOTS_KEY,
    MANAGED_BY,
    MAX_CA_BYTES,
    PERMISSIONS,
    ROOT_CERT_KEY,
    CaSecretUnavailable,
    SecretCaStore,
    SecretName,
    material_from_secret,
)
from zpilot.certs.ca import new_root_files, utc_now
from zpilot.certs.x509_helpers import fingerprint

from .conftest import cert_pem, key_pem

SECRET = SecretName("istio-system", "zpilot-ca")
SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def requests_of(server, verb: str) -> list:
    return [r for r in server.requests if r.verb == verb and r.resource == "secrets"]


def secret_data(**keys: bytes) -> dict[str, str]:
    """A Secret's ``data`` as the API returns it: base64 strings (``ca_cert`` -> ``ca-cert.pem``)."""
    return {k.replace("_", "-") + ".pem": base64.b64encode(v).decode() for k, v in keys.items()}


def cacerts(name: str = "zpilot-ca", **keys: bytes) -> dict:
    """A Secret like Istio's ``cacerts`` (``make_secret(..., data=...)``, keys as in :func:`secret_data`)."""
    return make_secret(name, "istio-system", data={k.replace("_", "-") + ".pem": v for k, v in keys.items()})


class Root:
    """A new self-signed root as PEM, and the fingerprint a CA under it has."""

    def __init__(self) -> None:
        files = new_root_files("cluster.local", utc_now())
        self.cert, self.key = files.cert_pem, files.key_pem
        self.fingerprint = fingerprint(x509.load_pem_x509_certificate(self.cert))


@pytest.fixture
def istio_system(apiserver):
    from tests.kube.apiserver.objects import make_namespace

    apiserver.create(make_namespace("istio-system"))
    return apiserver


# -- the Secret's contents ----------------------------------------------------------------------


def test_material_names_the_secret_and_key_and_never_quotes_a_value():
    with pytest.raises(CertificateAuthorityError) as exc:
        material_from_secret(SECRET, {CA_CERT_KEY: base64.b64encode(b"x").decode()})
    assert str(exc.value).startswith("Secret istio-system/zpilot-ca: no ca-key.pem")
    assert "keys present: ca-cert.pem" in str(exc.value)

    cert = Root().cert
    broken = {**secret_data(ca_cert=cert), CA_KEY_KEY: base64.b64encode(b"SECRET-KEY-BYTES").decode()}
    with pytest.raises(CertificateAuthorityError) as exc:
        CertificateAuthority.from_material(material_from_secret(SECRET, broken))
    assert "Secret istio-system/zpilot-ca key ca-key.pem: not a PEM private key" in str(exc.value)
    assert "SECRET-KEY-BYTES" not in str(exc.value)

    with pytest.raises(CertificateAuthorityError, match="key ca-cert.pem: not base64"):
        material_from_secret(SECRET, {CA_CERT_KEY: "!!", CA_KEY_KEY: "!!"})
    huge = {**secret_data(ca_cert=cert, ca_key=Root().key), EXTRA_ROOTS_KEY: base64.b64encode(b"x" * MAX_CA_BYTES).decode()}
    with pytest.raises(CertificateAuthorityError, match=f"more than {MAX_CA_BYTES} bytes"):
        material_from_secret(SECRET, huge)


def test_istio_layouts_parse_as_the_files_do(user_ca):
    """cacerts (intermediate, chain, root) and istio-ca-secret (a root, empty chain and root keys)."""
    plugged = secret_data(ca_cert=cert_pem(user_ca.intermediate), ca_key=key_pem(user_ca.intermediate_key),
                          cert_chain=cert_pem(user_ca.intermediate, user_ca.root), root_cert=cert_pem(user_ca.root))
    ca = CertificateAuthority.from_material(material_from_secret(SECRET, plugged))
    assert ca.roots == [user_ca.root] and ca.signing_certificate == user_ca.intermediate
    leaf_chain = x509.load_pem_x509_certificates(ca.issue(SLEEP).cert_chain_pem)
    assert leaf_chain[1:] == [user_ca.intermediate]  # the intermediate is sent, the root never

    own = Root()
    self_signed = {**secret_data(ca_cert=own.cert, ca_key=own.key), CERT_CHAIN_KEY: "", ROOT_CERT_KEY: ""}
    assert CertificateAuthority.from_material(material_from_secret(SECRET, self_signed)).fingerprint == own.fingerprint

    no_root = secret_data(ca_cert=cert_pem(user_ca.intermediate), ca_key=key_pem(user_ca.intermediate_key))
    with pytest.raises(CertificateAuthorityError, match="Secret istio-system/zpilot-ca: no root certificate"):
        CertificateAuthority.from_material(material_from_secret(SECRET, no_root))


def test_secret_names_are_checked():
    assert str(SecretName.parse("istio-system/cacerts")) == "istio-system/cacerts"
    # (a final newline too: re's "$" matched before it, and "istio-system/cacerts\n" went into API paths)
    for bad in ("cacerts", "Istio/cacerts", "a/b/c", "/x", "ns/", "ns/UPPER", "istio-system/cacerts\n",
                "istio-system\n/cacerts"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            SecretName.parse(bad)


# -- replicas agree --------------------------------------------------------------------------------


async def test_the_first_replica_creates_the_secret_and_a_second_reads_the_same_root(istio_system):
    server = istio_system
    async with api_client(server) as api_a, api_client(server) as api_b:
        first = await SecretCaStore(api_a, SECRET).open()
        stored = server.get("secrets", "zpilot-ca", "istio-system")
        assert stored["metadata"]["labels"] == MANAGED_BY
        assert set(stored["data"]) == {CA_CERT_KEY, CA_KEY_KEY, ROOT_CERT_KEY}
        second = await SecretCaStore(api_b, SECRET).open()
    assert second.fingerprint == first.fingerprint and second.trust_bundle_pem() == first.trust_bundle_pem()
    assert [r.status for r in requests_of(server, "create")] == [201]  # the second replica only read
    assert second.source == "Secret istio-system/zpilot-ca"


async def test_two_replicas_creating_at_once_end_with_one_root(istio_system, caplog):
    """Both find no Secret and both create; the API server takes one (201), the other gets 409 and
    reads back that Secret instead of using the root it made."""
    server = istio_system
    server.inject(delay=0.5, verb="create", resource="secrets", times=2)  # both lists see nothing
    caplog.set_level(logging.INFO, "zpilot.certs.kube_secret")
    async with api_client(server) as api_a, api_client(server) as api_b:
        a, b = await asyncio.gather(SecretCaStore(api_a, SECRET).open(), SecretCaStore(api_b, SECRET).open())
    assert sorted(r.status for r in requests_of(server, "create")) == [201, 409]
    assert a.fingerprint == b.fingerprint
    stored = material_from_secret(SECRET, server.get("secrets", "zpilot-ca", "istio-system")["data"])
    assert CertificateAuthority.from_material(stored).fingerprint == a.fingerprint
    assert "was created by another replica meanwhile; using that one" in caplog.text


async def test_a_user_provided_cacerts_secret_is_used_as_is(istio_system, user_ca):
    server = istio_system
    server.create(cacerts(ca_cert=cert_pem(user_ca.intermediate), ca_key=key_pem(user_ca.intermediate_key),
                          cert_chain=cert_pem(user_ca.intermediate, user_ca.root), root_cert=cert_pem(user_ca.root)))
    before = server.get("secrets", "zpilot-ca", "istio-system")
    async with api_client(server) as api:
        ca = await SecretCaStore(api, SECRET).open()
    assert ca.signing_certificate == user_ca.intermediate and ca.roots == [user_ca.root]
    assert requests_of(server, "create") == [] and server.get("secrets", "zpilot-ca", "istio-system") == before


async def test_an_unusable_secret_at_start_is_an_error_naming_it_and_nothing_is_replaced(istio_system):
    server = istio_system
    server.create(cacerts(ca_cert=b"not pem", ca_key=b"not pem either"))
    async with api_client(server) as api:
        with pytest.raises(CertificateAuthorityError, match="Secret istio-system/zpilot-ca key ca-cert.pem"):
            await SecretCaStore(api, SECRET).open()
    assert requests_of(server, "create") == []


async def test_forbidden_says_which_server_which_secret_and_what_rbac_is_needed(istio_system):
    server = istio_system
    read_only = server.add_token(allow={("list", "secrets"), ("watch", "secrets")}, user="reader")
    async with api_client(server, token=read_only) as api:
        with pytest.raises(CaSecretUnavailable) as exc:
            await SecretCaStore(api, SECRET).open()
    message = str(exc.value)
    assert message.startswith(f"{server.url}: create Secret istio-system/zpilot-ca: 403")
    assert 'cannot create resource "secrets"' in message
    assert "needs list, watch, create on secrets in namespace istio-system" in message


async def test_the_exported_permissions_are_all_the_store_needs(istio_system):
    """A token allowed exactly PERMISSIONS creates, reads and follows the Secret (the RBAC list is complete)."""
    server = istio_system
    token = server.add_token(allow=set(PERMISSIONS), user="zpilot")
    changes: asyncio.Queue[CertificateAuthority] = asyncio.Queue()
    async with api_client(server, token=token) as api:
        store = SecretCaStore(api, SECRET)
        ca = await store.open()
        follower = asyncio.create_task(store.follow(lambda: changes.put(ca.reload())))
        try:
            await server.wait_for_watchers("secrets", 1)
            new = Root()
            replace_data(server, ca_cert=new.cert, ca_key=new.key)
            assert (await asyncio.wait_for(changes.get(), 10)).fingerprint == new.fingerprint
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    assert all(r.status < 400 for r in server.requests if r.resource == "secrets"), server.requests


# -- following changes ------------------------------------------------------------------------------


class Follower:
    """A store following the Secret; each change's ``reload()`` result (or error) lands in ``results``."""

    def __init__(self, store: SecretCaStore, ca: CertificateAuthority) -> None:
        self.store = store
        self.ca = ca
        self.results: asyncio.Queue[CertificateAuthority | Exception] = asyncio.Queue()
        self.task = asyncio.create_task(store.follow(self._changed))

    async def _changed(self) -> None:
        try:
            self.results.put_nowait(self.ca.reload())
        except CertificateAuthorityError as exc:
            self.results.put_nowait(exc)

    async def next(self):
        return await asyncio.wait_for(self.results.get(), 10)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def replace_data(server, **keys: bytes) -> None:
    current = server.get("secrets", "zpilot-ca", "istio-system")
    server.update({**current, "data": secret_data(**keys)})


async def test_changes_are_followed_through_expiry_drops_and_deletion(istio_system):
    server = istio_system
    async with api_client(server) as api:
        store = SecretCaStore(api, SECRET, watch_timeout=1)
        ca = await store.open()
        follower = Follower(store, ca)
        try:
            await server.wait_for_watchers("secrets", 1)
            # a new root: reload() gives the CA under it
            second = Root()
            replace_data(server, ca_cert=second.cert, ca_key=second.key)
            assert (await follower.next()).fingerprint == second.fingerprint

            # a change made while the watch was cut, and history compacted: 410, list again, nothing missed
            server.inject(status=500, verb="watch", resource="secrets", times=1)
            server.drop_watches("secrets")
            third = Root()
            replace_data(server, ca_cert=third.cert, ca_key=third.key)
            lists = len(requests_of(server, "list"))
            server.compact()
            assert (await follower.next()).fingerprint == third.fingerprint
            assert len(requests_of(server, "list")) == lists + 1  # the 410 made it list again

            # labels only: the data did not change, so no reload
            server.patch("secrets", "zpilot-ca", {"metadata": {"labels": {"team": "mesh"}}}, "istio-system")
            # unusable: the reload fails, naming the key (the runtime then keeps the current CA)
            replace_data(server, ca_cert=third.cert, ca_key=b"garbage")
            failure = await follower.next()
            assert isinstance(failure, CertificateAuthorityError) and "key ca-key.pem" in str(failure)

            # deleted: the reload fails too; recreated, it is followed again
            server.delete("secrets", "zpilot-ca", "istio-system")
            failure = await follower.next()
            assert isinstance(failure, CertificateAuthorityError) and "was deleted" in str(failure)
            fourth = Root()
            server.create(cacerts(ca_cert=fourth.cert, ca_key=fourth.key))
            assert (await follower.next()).fingerprint == fourth.fingerprint
            assert follower.results.empty()
        finally:
            await follower.stop()
    assert [r.status for r in requests_of(server, "create")] == [201]  # only open() ever creates
