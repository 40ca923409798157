import os
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from zpilot.certs.ca import CLOCK_SKEW, CertificateAuthority, CertificateAuthorityError
from zpilot.certs.storage import EXTRA_ROOTS_FILE, ROOT_CERT_FILE, ROOT_KEY_FILE

from .conftest import cert_pem, key_pem, make_ca_cert

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def leaf_and_rest(chain_pem: bytes) -> tuple[x509.Certificate, list[x509.Certificate]]:
    certs = x509.load_pem_x509_certificates(chain_pem)
    return certs[0], certs[1:]


def verify_with_cryptography(ca: CertificateAuthority, chain_pem: bytes, clock) -> None:
    """Raises if the chain does not verify as a client certificate against the CA's trust bundle."""
    leaf, rest = leaf_and_rest(chain_pem)
    roots = x509.load_pem_x509_certificates(ca.trust_bundle_pem())
    verifier = PolicyBuilder().store(Store(roots)).time(clock()).build_client_verifier()
    verifier.verify(leaf, rest)


def verify_with_openssl(tmp_path: Path, bundle: bytes, chain_pem: bytes) -> subprocess.CompletedProcess:
    leaf, rest = leaf_and_rest(chain_pem)
    (tmp_path / "bundle.pem").write_bytes(bundle)
    (tmp_path / "leaf.pem").write_bytes(cert_pem(leaf))
    (tmp_path / "untrusted.pem").write_bytes(cert_pem(*rest) if rest else b"")
    args = ["openssl", "verify", "-purpose", "sslclient", "-CAfile", str(tmp_path / "bundle.pem")]
    if rest:
        args += ["-untrusted", str(tmp_path / "untrusted.pem")]
    return subprocess.run([*args, str(tmp_path / "leaf.pem")], capture_output=True, text=True)


# -- workload certificates --------------------------------------------------------------------


def test_workload_certificate_has_exactly_the_required_shape(clock):
    ca = CertificateAuthority.generate(clock=clock)
    issued = ca.issue(SLEEP)
    leaf, rest = leaf_and_rest(issued.cert_chain_pem)
    assert rest == []  # signed by the root itself: the root is not sent
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(SLEEP)]
    assert leaf.subject == x509.Name([])
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) and leaf.public_key().curve.name == "secp256r1"
    assert leaf.not_valid_before_utc == clock() - CLOCK_SKEW
    assert leaf.not_valid_after_utc == clock() + timedelta(hours=24)
    assert (issued.serial, issued.not_before, issued.not_after) == (
        leaf.serial_number, leaf.not_valid_before_utc, leaf.not_valid_after_utc,
    )
    key = serialization.load_pem_private_key(issued.private_key_pem, None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()


def test_chain_verifies_against_the_root(clock, tmp_path):
    ca = CertificateAuthority.generate(clock=clock)
    issued = ca.issue(SLEEP)
    verify_with_cryptography(ca, issued.cert_chain_pem, clock)
    result = verify_with_openssl(tmp_path, ca.trust_bundle_pem(), issued.cert_chain_pem)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chain_does_not_verify_against_another_root(clock, tmp_path):
    issued = CertificateAuthority.generate(clock=clock).issue(SLEEP)
    other = CertificateAuthority.generate(clock=clock)
    result = verify_with_openssl(tmp_path, other.trust_bundle_pem(), issued.cert_chain_pem)
    assert result.returncode != 0


def test_configurable_lifetime_and_trust_domain(clock):
    ca = CertificateAuthority.generate("example.org", clock=clock)
    issued = ca.issue("spiffe://example.org/ns/a/sa/b", timedelta(seconds=20))
    assert issued.not_after - clock() == timedelta(seconds=20)
    with pytest.raises(ValueError, match="outside this CA's trust domain 'example.org'"):
        ca.issue(SLEEP)


@pytest.mark.parametrize("lifetime", [timedelta(0), timedelta(seconds=-1), 3600])
def test_bad_lifetime_is_refused(lifetime):
    with pytest.raises(ValueError, match="lifetime"):
        CertificateAuthority.generate().issue(SLEEP, lifetime)


@pytest.mark.parametrize("bad", ["spiffe://cluster.local/ns/default/sa/", "spiffe://other/ns/default/sa/sleep", "sleep"])
def test_bad_spiffe_ids_are_refused(bad):
    with pytest.raises(ValueError, match="SPIFFE ID"):
        CertificateAuthority.generate().issue(bad)


def test_a_window_must_lie_within_the_lifetime_before_now(clock):
    ca = CertificateAuthority.generate(clock=clock)
    for start in (clock() + timedelta(seconds=1), clock() - timedelta(hours=24)):
        with pytest.raises(ValueError, match="not within the lifetime before now"):
            ca.issue(SLEEP, timedelta(hours=24), window_start=start)
    derived = ca.issue(SLEEP, timedelta(hours=24), window_start=clock() - timedelta(hours=1))
    assert derived == ca.issue(SLEEP, timedelta(hours=24), window_start=clock() - timedelta(hours=1))


def test_each_issue_has_a_new_key_and_serial():
    ca = CertificateAuthority.generate()
    a, b = ca.issue(SLEEP), ca.issue(SLEEP)
    assert a.serial != b.serial and a.private_key_pem != b.private_key_pem


def test_repr_never_shows_the_key():
    ca = CertificateAuthority.generate()
    issued = ca.issue(SLEEP)
    body = issued.private_key_pem.decode().split("-----")[2].strip().splitlines()[0]
    for text in (repr(issued), str(issued), f"{issued}", repr(ca), repr([issued])):
        assert "PRIVATE KEY" not in text and body not in text
    assert "redacted" in repr(issued) and SLEEP in repr(issued)


def test_workload_cert_never_outlives_the_signing_cert(clock, tmp_path):
    root, root_key = make_ca_cert("Short Root", not_after=clock() + timedelta(hours=1))
    (tmp_path / "c.pem").write_bytes(cert_pem(root))
    (tmp_path / "k.pem").write_bytes(key_pem(root_key))
    ca = CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem", clock=clock)
    issued = ca.issue(SLEEP)
    assert issued.not_after == root.not_valid_after_utc
    clock.advance(timedelta(hours=2))
    with pytest.raises(CertificateAuthorityError, match="expired"):
        ca.issue(SLEEP)


# -- the persisted self-signed root -----------------------------------------------------------


def test_root_is_created_once_persisted_and_key_is_0600(tmp_path, clock):
    d = tmp_path / "ca"
    ca = CertificateAuthority.load_or_create(d, clock=clock)
    assert stat.S_IMODE((d / ROOT_KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    root = x509.load_pem_x509_certificate((d / ROOT_CERT_FILE).read_bytes())
    assert root.not_valid_after_utc - clock() >= timedelta(days=3649)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    again = CertificateAuthority.load_or_create(d, clock=clock)
    assert again.fingerprint == ca.fingerprint
    # a certificate from the first instance verifies against the second one's bundle
    verify_with_cryptography(again, ca.issue(SLEEP).cert_chain_pem, clock)


def test_created_key_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        CertificateAuthority.load_or_create(tmp_path / "ca")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ca" / ROOT_KEY_FILE).stat().st_mode) == 0o600


def test_none_directory_means_in_memory(tmp_path):
    a = CertificateAuthority.load_or_create(None)
    b = CertificateAuthority.load_or_create(None)
    assert a.fingerprint != b.fingerprint
    assert a.reload() is a


def test_half_present_ca_directory_is_refused(tmp_path):
    d = tmp_path / "ca"
    CertificateAuthority.load_or_create(d)
    (d / ROOT_CERT_FILE).unlink()
    with pytest.raises(CertificateAuthorityError, match="root-cert.pem is missing"):
        CertificateAuthority.load_or_create(d)


def test_corrupt_key_file_is_named_and_not_quoted(tmp_path):
    d = tmp_path / "ca"
    CertificateAuthority.load_or_create(d)
    secret_looking = b"-----BEGIN PRIVATE KEY-----\nTOPSECRETBYTES\n-----END PRIVATE KEY-----\n"
    (d / ROOT_KEY_FILE).write_bytes(secret_looking)
    with pytest.raises(CertificateAuthorityError) as err:
        CertificateAuthority.load_or_create(d)
    assert str(d / ROOT_KEY_FILE) in str(err.value)
    assert "TOPSECRET" not in str(err.value) and err.value.__cause__ is None


def test_loose_key_mode_is_warned_about(tmp_path, caplog):
    d = tmp_path / "ca"
    CertificateAuthority.load_or_create(d)
    (d / ROOT_KEY_FILE).chmod(0o644)
    CertificateAuthority.load_or_create(d)
    assert "chmod 600" in caplog.text


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CertificateAuthorityError, match="CA directory"):
        CertificateAuthority.load_or_create(blocker / "ca")


def test_bad_trust_domain_is_refused():
    with pytest.raises(ValueError, match="trust domain"):
        CertificateAuthority.load_or_create(None, "Not A Domain")


# -- a user-provided root or intermediate -----------------------------------------------------


def test_user_root(user_ca, clock, tmp_path):
    ca = CertificateAuthority.from_files(user_ca.root_path, user_ca.root_key_path, clock=clock)
    issued = ca.issue(SLEEP)
    assert len(leaf_and_rest(issued.cert_chain_pem)[1]) == 0
    assert verify_with_openssl(tmp_path, cert_pem(user_ca.root), issued.cert_chain_pem).returncode == 0


@pytest.mark.parametrize("layout", ["chain_in_cert_file", "separate_root_file"])
def test_user_intermediate_is_served_in_the_chain(user_ca, clock, tmp_path, layout):
    if layout == "chain_in_cert_file":
        ca = CertificateAuthority.from_files(user_ca.intermediate_chain_path, user_ca.intermediate_key_path, clock=clock)
    else:
        ca = CertificateAuthority.from_files(
            user_ca.intermediate_path, user_ca.intermediate_key_path, root_path=user_ca.root_path, clock=clock
        )
    issued = ca.issue(SLEEP)
    leaf, rest = leaf_and_rest(issued.cert_chain_pem)
    assert rest == [user_ca.intermediate]  # the intermediate, never the root
    assert leaf.issuer == user_ca.intermediate.subject
    assert x509.load_pem_x509_certificates(ca.trust_bundle_pem()) == [user_ca.root]
    verify_with_cryptography(ca, issued.cert_chain_pem, clock)
    result = verify_with_openssl(tmp_path, cert_pem(user_ca.root), issued.cert_chain_pem)
    assert result.returncode == 0, result.stdout + result.stderr


def test_intermediate_without_its_root_is_refused(user_ca):
    with pytest.raises(CertificateAuthorityError, match="no root certificate.*Example Mesh Intermediate"):
        CertificateAuthority.from_files(user_ca.intermediate_path, user_ca.intermediate_key_path)


def test_key_of_another_certificate_is_refused(user_ca):
    with pytest.raises(CertificateAuthorityError, match="does not belong to the certificate"):
        CertificateAuthority.from_files(user_ca.root_path, user_ca.intermediate_key_path)


def test_wrong_root_is_refused(user_ca, tmp_path):
    other, _ = make_ca_cert("Unrelated Root")
    (tmp_path / "other.pem").write_bytes(cert_pem(other))
    with pytest.raises(CertificateAuthorityError, match="not signed by any of the given roots"):
        CertificateAuthority.from_files(user_ca.intermediate_path, user_ca.intermediate_key_path, root_path=tmp_path / "other.pem")


def test_non_ca_certificate_is_refused(tmp_path):
    cert, key = make_ca_cert("Just A Server", ca=False)
    (tmp_path / "c.pem").write_bytes(cert_pem(cert))
    (tmp_path / "k.pem").write_bytes(key_pem(key))
    with pytest.raises(CertificateAuthorityError, match="not a CA certificate"):
        CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem")


def test_expired_ca_is_refused(tmp_path, clock):
    cert, key = make_ca_cert("Old Root", not_before=clock() - timedelta(days=10), not_after=clock() - timedelta(days=1))
    (tmp_path / "c.pem").write_bytes(cert_pem(cert))
    (tmp_path / "k.pem").write_bytes(key_pem(key))
    with pytest.raises(CertificateAuthorityError, match="Old Root.*expired"):
        CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem", clock=clock)


def test_encrypted_key_gets_an_explanation(user_ca, tmp_path):
    encrypted = user_ca.root_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    (tmp_path / "k.pem").write_bytes(encrypted)
    with pytest.raises(CertificateAuthorityError, match="encrypted"):
        CertificateAuthority.from_files(user_ca.root_path, tmp_path / "k.pem")


@pytest.mark.parametrize("content", [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"])
def test_garbage_cert_file_is_named(user_ca, tmp_path, content):
    (tmp_path / "c.pem").write_bytes(content)
    with pytest.raises(CertificateAuthorityError, match=str(tmp_path / "c.pem")):
        CertificateAuthority.from_files(tmp_path / "c.pem", user_ca.root_key_path)


def test_missing_file_is_named(tmp_path, user_ca):
    with pytest.raises(CertificateAuthorityError, match="nope.pem: cannot read"):
        CertificateAuthority.from_files(tmp_path / "nope.pem", user_ca.root_key_path)


# -- trust bundle and root rotation -----------------------------------------------------------


def test_extra_roots_join_the_trust_bundle_for_a_rotation_overlap(tmp_path, clock):
    """Phase 1 of docs/certificates.md: the new root is trusted before anything is signed by it."""
    d = tmp_path / "ca"
    old = CertificateAuthority.load_or_create(d, clock=clock)
    new_root, _ = make_ca_cert("New Root")
    (d / EXTRA_ROOTS_FILE).write_bytes(cert_pem(new_root) * 2)  # duplicates are ignored
    overlapping = old.reload()
    bundle = x509.load_pem_x509_certificates(overlapping.trust_bundle_pem())
    assert bundle == [old.signing_certificate, new_root]
    assert overlapping.fingerprint == old.fingerprint  # still signing with the old root


def test_rotation_overlap_accepts_certificates_of_both_roots(tmp_path, clock):
    """Phase 2: the new root signs, the old one is still trusted; both generations verify."""
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old = CertificateAuthority.load_or_create(old_dir, clock=clock)
    new = CertificateAuthority.load_or_create(new_dir, clock=clock)
    (new_dir / EXTRA_ROOTS_FILE).write_bytes((old_dir / ROOT_CERT_FILE).read_bytes())
    new = new.reload()
    for issued in (old.issue(SLEEP), new.issue(SLEEP)):
        verify_with_cryptography(new, issued.cert_chain_pem, clock)
        assert verify_with_openssl(tmp_path, new.trust_bundle_pem(), issued.cert_chain_pem).returncode == 0


def test_expired_extra_root_is_left_out(tmp_path, clock, caplog):
    d = tmp_path / "ca"
    CertificateAuthority.load_or_create(d, clock=clock)
    old, _ = make_ca_cert("Retired Root", not_before=clock() - timedelta(days=10), not_after=clock() - timedelta(days=1))
    (d / EXTRA_ROOTS_FILE).write_bytes(cert_pem(old))
    ca = CertificateAuthority.load_or_create(d, clock=clock)
    assert len(ca.roots) == 1 and "Retired Root" in caplog.text


def test_extra_root_that_is_not_a_ca_is_refused(tmp_path):
    d = tmp_path / "ca"
    CertificateAuthority.load_or_create(d)
    leaf, _ = make_ca_cert("Not A CA", ca=False)
    (d / EXTRA_ROOTS_FILE).write_bytes(cert_pem(leaf))
    with pytest.raises(CertificateAuthorityError, match="extra root #1 .*Not A CA"):
        CertificateAuthority.load_or_create(d)


def test_certificate_with_an_unsupported_key_type_is_refused_cleanly(tmp_path, user_ca):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "Ed Root")])
    now = user_ca.root.not_valid_before_utc
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, None)
    )
    (tmp_path / "c.pem").write_bytes(cert_pem(cert))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(CertificateAuthorityError, match="unsupported key type"):
        CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "k.pem")
    # an EC key next to the Ed25519 certificate: a mismatch, not a crash
    with pytest.raises(CertificateAuthorityError, match="does not belong"):
        CertificateAuthority.from_files(tmp_path / "c.pem", user_ca.root_key_path)


def _fingerprint_of(directory: str) -> str:
    return CertificateAuthority.load_or_create(Path(directory)).fingerprint


def test_concurrent_first_starts_agree_on_one_root(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(4) as pool:
        prints = pool.map(_fingerprint_of, [str(tmp_path / "ca")] * 8)
    assert len(set(prints)) == 1
    assert sorted(p.name for p in (tmp_path / "ca").iterdir() if not p.name.startswith(".")) == [ROOT_CERT_FILE, ROOT_KEY_FILE]
