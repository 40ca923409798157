"""The revocation list of node credentials: what it revokes, its bounds, and its two stores (the CA
directory, the CA Secret against the in-process API server), and ``zpilot revoke``'s command line."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

from tests.kube.apiserver.fixtures import api_client
from zpilot.certs import CertificateAuthority
from zpilot.certs.kube_secret import REVOCATIONS_KEY, SecretCaStore, SecretName, revocations_from_secret
from zpilot.certs.revocation import (
    EMPTY,
    MAX_BYTES,
    MAX_ENTRIES,
    REVOCATIONS_NAME,
    RevocationError,
    RevocationList,
    cut_after,
    parse_serial,
    read_directory,
    revoke_node,
    revoke_serial,
    update_directory,
)
from zpilot.certs.revocation_secret import update_secret_with
from zpilot.certs.xds_credentials import issue_node_credential, read_node_credential

NOW = datetime(2026, 12, 2, 12, 0, 0, 500_000, tzinfo=timezone.utc)
DAY = timedelta(days=1)
SECRET = SecretName("istio-system", "zpilot-ca")


def test_a_node_revocation_covers_what_was_issued_before_it_and_not_after():
    listed = revoke_node(EMPTY, "node-a", NOW, DAY)
    cut = cut_after(NOW)
    assert cut == datetime(2026, 12, 2, 12, 0, 1, tzinfo=timezone.utc)
    assert listed.revokes("node-a", 1, NOW - timedelta(days=3))  # an old copy
    assert listed.revokes("node-a", 2, NOW.replace(microsecond=0))  # issued in the revocation's second
    assert listed.revokes("node-a", 3, cut) is None  # issued once the command returned
    assert listed.revokes("node-b", 4, NOW - DAY) is None  # another node


def test_a_listed_entry_revokes_past_its_until_and_only_a_write_drops_it():
    """A credential presented after the entry's ``until`` was issued for longer than the revocation assumed
    (``--credential-lifetime``): the server keeps refusing it; the next ``zpilot revoke`` prunes the entry."""
    listed = revoke_serial(revoke_node(EMPTY, "node-a", NOW, DAY), 0x5F1E, NOW, DAY)
    assert listed.revokes("node-a", 1, NOW - DAY)
    assert listed.revokes("node-b", 0x5F1E, NOW - DAY)
    pruned = revoke_node(listed, "node-c", NOW + 2 * DAY, DAY)
    assert [e.node for e in pruned.nodes] == ["node-c"] and not pruned.serials
    assert pruned.revokes("node-a", 1, NOW - DAY) is None


def test_revoking_a_node_again_replaces_its_entry():
    twice = revoke_node(revoke_node(EMPTY, "node-a", NOW, DAY), "node-a", NOW + timedelta(hours=1), DAY)
    assert len(twice) == 1 and twice.nodes[0].issued_before == cut_after(NOW + timedelta(hours=1))
    longer_first = revoke_node(revoke_node(EMPTY, "node-a", NOW, 10 * DAY), "node-a", NOW + timedelta(hours=1), DAY)
    assert len(longer_first) == 2  # the first is kept longer: both stay


def test_a_serial_revocation_covers_that_certificate_only():
    listed = revoke_serial(EMPTY, 0x5F1E, NOW, DAY)
    assert "serial 5f1e" in listed.revokes("node-a", 0x5F1E, NOW - DAY)
    assert listed.revokes("node-a", 0x5F1F, NOW - DAY) is None


def test_a_real_node_credential_is_revoked_by_node_and_by_serial():
    ca = CertificateAuthority.generate()
    issued = issue_node_credential(ca, "node-a")
    credential = read_node_credential(issued.cert_chain_pem.split(b"-----END CERTIFICATE-----")[0]
                                      + b"-----END CERTIFICATE-----\n", ca.trust_domain)
    assert credential is not None and credential.issued_at is not None
    now = datetime.now(timezone.utc)
    assert credential.issued_at <= now
    assert revoke_node(EMPTY, "node-a", now, DAY).revokes("node-a", credential.serial_number, credential.issued_at)
    by_serial = revoke_serial(EMPTY, parse_serial(credential.serial.upper()), now, DAY)
    assert by_serial.revokes("node-a", credential.serial_number, credential.issued_at)


@pytest.mark.parametrize("text, value", [("5f1e", 0x5F1E), ("5F:1E", 0x5F1E), ("0x5f1e", 0x5F1E), ("f1e", 0xF1E)])
def test_serials_are_read_as_they_are_printed(text, value):
    assert parse_serial(text) == value


@pytest.mark.parametrize("text", ["", "xyz", "5f1e" * 11, "-1"])
def test_a_bad_serial_is_refused_naming_it(text):
    with pytest.raises(RevocationError):
        parse_serial(text)


def test_the_list_round_trips_and_drops_expired_entries_when_written():
    listed = revoke_node(EMPTY, "node-a", NOW - 3 * DAY, DAY).with_serial(7, NOW + DAY)
    again = RevocationList.parse(listed.to_bytes(), "here")
    assert again == listed and len(again) == 2
    later = revoke_node(again, "node-b", NOW, DAY)  # the node-a entry expired two days ago: gone
    assert [e.node for e in later.nodes] == ["node-b"] and len(later) == 2


def test_the_list_is_bounded():
    listed = EMPTY
    for serial in range(MAX_ENTRIES):
        listed = listed.with_serial(serial + 1, NOW + DAY)
    listed.to_bytes()
    with pytest.raises(RevocationError, match=f"at most {MAX_ENTRIES}"):
        listed.with_serial(MAX_ENTRIES + 1, NOW + DAY).to_bytes()
    with pytest.raises(RevocationError, match="larger than"):
        RevocationList.parse(b" " * (MAX_BYTES + 1), "here")


@pytest.mark.parametrize("document, error", [
    (b"{", "not JSON"),
    # within MAX_BYTES, deeper than the parser's recursion limit (a RecursionError ended the poll's task)
    pytest.param(b"[" * 100_000, "nested too deep", id="nested-too-deep"),
    (json.dumps({"version": 1, "revoked": [{"serial": "ab", "until": "9999-12-31T23:59:59-01:00"}]}).encode(),
     "entry 0 until: .* out of range"),
    (json.dumps({"version": 2, "revoked": []}).encode(), "version 1"),
    (json.dumps({"version": 1, "revoked": [{"until": "2027-01-01T00:00:00Z"}]}).encode(), "entry 0: names neither"),
    (json.dumps({"version": 1, "revoked": [{"node": "A/..", "issued_before": "2026-01-01T00:00:00Z",
                                            "until": "2027-01-01T00:00:00Z"}]}).encode(), "entry 0: node"),
    (json.dumps({"version": 1, "revoked": [{"serial": "ab", "until": "tomorrow"}]}).encode(), "entry 0 until"),
])
def test_a_bad_list_is_an_error_naming_its_source_and_entry(document, error):
    with pytest.raises(RevocationError, match=error) as exc:
        RevocationList.parse(document, "/ca/revoked-node-credentials.json")
    assert str(exc.value).startswith("/ca/revoked-node-credentials.json")


def test_the_directory_store_is_replaced_whole_under_the_lock(tmp_path):
    ca_dir = tmp_path / "ca"
    with pytest.raises(RevocationError, match="not a CA directory"):
        update_directory(ca_dir, lambda current: current)
    CertificateAuthority.load_or_create(ca_dir)
    assert read_directory(ca_dir) == EMPTY

    def revoke(node: str) -> None:
        update_directory(ca_dir, lambda current: revoke_node(current, node, datetime.now(timezone.utc), DAY))

    threads = [threading.Thread(target=revoke, args=(f"node-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {e.node for e in read_directory(ca_dir).nodes} == {f"node-{i}" for i in range(8)}  # none lost
    assert sorted(p.name for p in ca_dir.iterdir() if "revoked" in p.name) == [REVOCATIONS_NAME]


def revoke_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zpilot.cli", "revoke", *args], capture_output=True, text=True,
                          timeout=60)


def test_the_command_records_a_revocation_in_the_ca_directory_and_refuses_bad_arguments(tmp_path):
    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir)
    before = datetime.now(timezone.utc)
    done = revoke_cli("--ca-dir", str(ca_dir), "--node", "node-a", "--credential-lifetime", "3600")
    assert done.returncode == 0, done.stderr
    assert "revoked node node-a" in done.stderr and "bootstrap --renew --force" in done.stderr
    assert "its list holds 1 entry," in done.stderr  # (not "1 entries")
    done = revoke_cli("--ca-dir", str(ca_dir), "--serial", "AB:CD", "--credential-lifetime", "3600")
    assert done.returncode == 0 and "revoked serial AB:CD" in done.stderr and "holds 2 entries," in done.stderr
    listed = read_directory(ca_dir)
    [node] = listed.nodes
    assert node.node == "node-a" and before < node.issued_before <= datetime.now(timezone.utc)  # it waited past it
    assert node.until == node.issued_before + timedelta(hours=1)
    assert [s.serial for s in listed.serials] == [0xABCD]
    for args, error in [
        (("--ca-dir", str(ca_dir)), "say what to revoke"),
        (("--node", "node-a"), "give the CA's store"),
        (("--ca-dir", str(ca_dir), "--node", "Node_A"), "not a Kubernetes node name"),
        (("--ca-dir", str(ca_dir), "--serial", "xyz"), "not a certificate serial"),
        (("--ca-dir", str(tmp_path / "nothing"), "--node", "node-a"), "not a CA directory"),
    ]:
        refused = revoke_cli(*args)
        assert refused.returncode == 2 and error in refused.stderr, (args, refused.stderr)
    assert read_directory(ca_dir) == listed


@pytest.fixture
def istio_system(apiserver):
    from tests.kube.apiserver.objects import make_namespace

    apiserver.create(make_namespace("istio-system"))
    return apiserver


async def test_the_secret_store_keeps_the_ca_keys_and_its_watch_tells_revocations_apart(istio_system):
    server = istio_system
    async with api_client(server) as api:
        store = SecretCaStore(api, SECRET, watch_timeout=1)
        ca = await store.open()
        before = dict(server.get("secrets", "zpilot-ca", "istio-system")["data"])
        reloads: list[int] = []
        revocations: asyncio.Queue = asyncio.Queue()

        async def on_change() -> None:
            reloads.append(1)

        follow = asyncio.create_task(store.follow(on_change, lambda: revocations.put_nowait(store.revocation_list())))
        try:
            await server.wait_for_watchers("secrets", 1)
            written = await update_secret_with(api, SECRET, lambda c: revoke_node(c, "node-a", NOW, DAY * 3650))
            listed = await asyncio.wait_for(revocations.get(), 10)
            assert listed == written and [e.node for e in listed.nodes] == ["node-a"]
            stored = server.get("secrets", "zpilot-ca", "istio-system")["data"]
            assert {k: v for k, v in stored.items() if k != REVOCATIONS_KEY} == before  # the CA as it was
            assert revocations_from_secret(SECRET, stored) == written
            # a second revocation adds to the first
            await update_secret_with(api, SECRET, lambda c: revoke_serial(c, 9, NOW, DAY * 3650))
            listed = await asyncio.wait_for(revocations.get(), 10)
            assert len(listed) == 2
            assert reloads == []  # the CA was never reloaded for a revocation
            # deleted, the Secret lifts no revocation (the CA reload fails and the CA stays, as before)
            server.delete("secrets", "zpilot-ca", "istio-system")
            await until_true(lambda: reloads == [1])
            assert revocations.empty()
            with pytest.raises(RevocationError, match="was deleted"):
                store.revocation_list()
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
    assert ca.fingerprint


async def until_true(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_concurrent_change_of_the_secret_is_read_again_not_overwritten(istio_system):
    server = istio_system
    async with api_client(server) as api:
        await SecretCaStore(api, SECRET).open()
        changed = False

        def change(current: RevocationList) -> RevocationList:
            nonlocal changed
            if not changed:  # someone else writes in between our read and our replace
                changed = True
                stored = server.get("secrets", "zpilot-ca", "istio-system")
                other = revoke_serial(EMPTY, 1, NOW, DAY * 3650).to_bytes()
                server.update({**stored, "data": {**stored["data"], REVOCATIONS_KEY: base64.b64encode(other).decode()}})
            return revoke_node(current, "node-a", NOW, DAY * 3650)

        written = await update_secret_with(api, SECRET, change)
    assert [s.serial for s in written.serials] == [1] and [n.node for n in written.nodes] == ["node-a"]
    assert revocations_from_secret(SECRET, server.get("secrets", "zpilot-ca", "istio-system")["data"]) == written
