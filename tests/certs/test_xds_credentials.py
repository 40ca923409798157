"""The ADS connection's own certificates: what they may name, that they cannot pass for workload
identities, and the node's credential directory (atomic swap, renewal)."""

from __future__ import annotations

import os
import re
import stat
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from zpilot import contract
from zpilot.certs import CertificateAuthority, parse_spiffe_id
from zpilot.certs.x509_helpers import serial_hex
from zpilot.certs.credential_files import (
    DATA_LINK,
    read_current,
    renewal_reason,
    write_atomically,
    write_node_credential,
)
from zpilot.certs.xds_credentials import (
    CredentialError,
    issue_node_credential,
    issue_server_certificate,
    node_of_certificate,
    read_node_credential,
)

NODE = "gke-jimmy-cluster-default-pool-d5041909-d10i"
TD = "cluster.local"


def leaf(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def usages(cert: x509.Certificate) -> list:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_a_node_credential_names_its_node_and_only_connects():
    ca = CertificateAuthority.generate()
    issued = issue_node_credential(ca, NODE)
    cert = leaf(issued.cert_chain_pem)
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert uris == [f"spiffe://{TD}/ns/istio-system/sa/ztunnel/node/{NODE}"] == [issued.spiffe_id]
    assert usages(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert node_of_certificate(issued.cert_chain_pem, TD) == NODE
    assert read_node_credential(issued.cert_chain_pem, TD).serial == serial_hex(issued.serial)
    assert node_of_certificate(issued.cert_chain_pem, "other.domain") is None


def test_a_node_credential_is_no_workload_identity_and_no_workload_certificate_is_one():
    ca = CertificateAuthority.generate()
    node_uri = issue_node_credential(ca, NODE).spiffe_id
    with pytest.raises(ValueError):
        parse_spiffe_id(node_uri)  # the CA never issues it as a workload identity
    assert not re.match(contract.spiffe_id_regex(TD), node_uri)  # no mesh TLS context accepts it
    # the ztunnel's own workload identity (its service account) proves no node
    ztunnel = ca.issue(contract.spiffe_id(TD, contract.ZTUNNEL_NAMESPACE, contract.ZTUNNEL_SERVICE_ACCOUNT))
    assert node_of_certificate(ztunnel.cert_chain_pem, TD) is None


@pytest.mark.parametrize("name", ["", "Node-A", "a/b", "../x", "a..b", "x" * 254, "a_b"])
def test_only_kubernetes_node_names_get_a_credential(name):
    with pytest.raises(CredentialError, match="is not a Kubernetes node name"):
        issue_node_credential(CertificateAuthority.generate(), name)


def test_a_certificate_with_two_uris_proves_no_node():
    ca = CertificateAuthority.generate()
    both = ca.issue_leaf(
        [x509.UniformResourceIdentifier(contract.node_credential_id(TD, NODE)),
         x509.UniformResourceIdentifier(contract.node_credential_id(TD, "other-node"))],
        [ExtendedKeyUsageOID.CLIENT_AUTH], timedelta(hours=1), "two nodes")
    assert node_of_certificate(both.cert_chain_pem, TD) is None


def test_the_server_certificate_names_what_ztunnels_dial_and_only_serves():
    ca = CertificateAuthority.generate()
    issued = issue_server_certificate(ca, ["zpilot.istio-system.svc", "10.8.0.10"])
    cert = leaf(issued.cert_chain_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "zpilot.istio-system.svc"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1", "10.8.0.10"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []  # it can pass for no identity
    assert usages(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize("name", ["*.istio-system.svc", "Zpilot", "a b", "zpilot/x", "", "zpilot.istio-system.svc\n"])
def test_the_server_certificate_takes_no_wildcard_or_odd_name(name):
    with pytest.raises(CredentialError, match="neither an IP address nor a DNS name"):
        issue_server_certificate(CertificateAuthority.generate(), [name])


# -- the node's credential directory ------------------------------------------------------------


def test_each_write_is_one_swap_of_the_data_link(tmp_path):
    d = tmp_path / "creds"
    old_umask = os.umask(0)
    try:
        write_atomically(d, {"cert.pem": b"one", "key.pem": b"k1"}, private=frozenset({"key.pem"}))
    finally:
        os.umask(old_umask)
    first = os.readlink(d / DATA_LINK)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / first / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / first / "cert.pem").stat().st_mode) == 0o644
    assert os.readlink(d / "cert.pem") == f"{DATA_LINK}/cert.pem"
    write_atomically(d, {"cert.pem": b"two", "key.pem": b"k2"}, private=frozenset({"key.pem"}))
    second = os.readlink(d / DATA_LINK)
    assert second != first and not (d / first).exists()  # the old generation is gone
    assert read_current(d, "cert.pem") == b"two" and read_current(d, "key.pem") == b"k2"
    assert sorted(p.name for p in d.iterdir()) == sorted([DATA_LINK, second, "cert.pem", "key.pem"])
    (d / "xds.sds.json").write_text("{}")  # other files (the bootstrap's SDS files) are left alone
    write_atomically(d, {"cert.pem": b"three", "key.pem": b"k3"})
    assert (d / "xds.sds.json").read_text() == "{}"


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b"])
def test_a_credential_file_name_is_a_plain_name(tmp_path, name):
    with pytest.raises(CredentialError):
        write_atomically(tmp_path / "d", {name: b"x"})


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def test_a_credential_is_renewed_at_half_its_life_or_when_anything_about_it_changed(tmp_path):
    clock = Clock()
    CertificateAuthority.load_or_create(tmp_path / "ca", clock=clock)
    ca = CertificateAuthority.load(tmp_path / "ca", clock=clock)
    d = tmp_path / "creds"
    assert renewal_reason(d, ca, NODE, clock.now) == "there is no credential yet"
    write_node_credential(d, ca, NODE, timedelta(days=30))
    assert renewal_reason(d, ca, NODE, clock.now) is None
    assert renewal_reason(d, ca, NODE, clock.now + timedelta(days=14)) is None
    assert "past half its lifetime" in renewal_reason(d, ca, NODE, clock.now + timedelta(days=15, minutes=1))
    assert "not a credential of node other" in renewal_reason(d, ca, "other", clock.now)
    # a key that does not belong to the certificate (a half-copied directory)
    other = issue_node_credential(ca, NODE)
    write_atomically(d, {contract.CREDENTIAL_CERT_FILE: read_current(d, contract.CREDENTIAL_CERT_FILE),
                         contract.CREDENTIAL_KEY_FILE: other.private_key_pem,
                         contract.CREDENTIAL_BUNDLE_FILE: ca.trust_bundle_pem()})
    assert renewal_reason(d, ca, NODE, clock.now) == "its key does not belong to its certificate"
    write_node_credential(d, ca, NODE)
    # root rotation, step 2: a new root is trusted too -> the bundle on the node must follow
    new_root = CertificateAuthority.generate()
    (tmp_path / "ca" / "extra-roots.pem").write_bytes(new_root.trust_bundle_pem())
    assert renewal_reason(d, ca.reload(), NODE, clock.now) == "the CA bundle changed"
    # another signing key -> a new certificate
    assert renewal_reason(d, new_root, NODE, clock.now) == "it was signed by another CA certificate than the current one"


def test_credential_files_that_are_not_pem_are_renewed(tmp_path):
    ca = CertificateAuthority.generate()
    d = tmp_path / "creds"
    write_atomically(d, {name: b"garbage" for name in (contract.CREDENTIAL_CERT_FILE, contract.CREDENTIAL_KEY_FILE,
                                                         contract.CREDENTIAL_BUNDLE_FILE)})
    assert renewal_reason(d, ca, NODE, datetime.now(timezone.utc)) == \
        "its files cannot be read as a certificate and a key"
