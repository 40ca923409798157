from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zpilot.certs.ca import CLOCK_SKEW, CertificateAuthority
from zpilot.certs.identity import IdentityCache, window_start

from .conftest import FakeClock
from .test_ca import verify_with_cryptography

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
#: A start on a window boundary of the 20 s test lifetime (10 s windows from the Unix epoch).
ALIGNED = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ALIGNED)


@pytest.fixture
def cache(clock):
    return IdentityCache(CertificateAuthority.generate(clock=clock), lifetime=timedelta(seconds=20))


def test_certificate_is_reused_until_half_its_lifetime(cache, clock):
    first = cache.get(SLEEP)
    assert cache.next_rotation_at() == clock() + timedelta(seconds=10)
    clock.advance(timedelta(seconds=9))
    assert cache.due_for_rotation() == []
    assert cache.get(SLEEP) is first
    clock.advance(timedelta(seconds=1))
    assert cache.due_for_rotation() == [SLEEP]
    second = cache.get(SLEEP)
    assert second.serial != first.serial
    assert second.issued_at == clock()
    assert cache.due_for_rotation() == []
    assert cache.next_rotation_at() == clock() + timedelta(seconds=10)


def test_rotate_due_reissues_only_what_is_due(cache, clock):
    cache.get(SLEEP)
    clock.advance(timedelta(seconds=15))
    cache.get(PRODUCTPAGE)  # first asked for in the second window: due only at that window's end
    before = cache.peek(PRODUCTPAGE)
    assert cache.rotate_due() == [SLEEP]
    assert cache.peek(PRODUCTPAGE) is before
    assert cache.next_rotation_at() == before.issued_at + timedelta(seconds=10) == ALIGNED + timedelta(seconds=20)


def test_a_certificate_is_dated_from_its_window_and_identities_of_one_window_renew_together(cache, clock):
    """Half-lifetime windows from the epoch: issued 3 s into one, a certificate is valid from its start
    (less the clock skew allowance) and renewed at its end, with everything else issued in it."""
    clock.advance(timedelta(seconds=3))
    sleep = cache.get(SLEEP)
    assert sleep.issued_at == ALIGNED and sleep.not_before == ALIGNED - CLOCK_SKEW
    assert sleep.not_after == ALIGNED + timedelta(seconds=20)
    clock.advance(timedelta(seconds=5))
    assert cache.get(PRODUCTPAGE).issued_at == ALIGNED
    clock.advance(timedelta(seconds=2))  # 10 s: the next window
    assert cache.rotate_due() == sorted([SLEEP, PRODUCTPAGE])
    assert {cache.peek(i).issued_at for i in (SLEEP, PRODUCTPAGE)} == {ALIGNED + timedelta(seconds=10)}


def test_replicas_with_one_ca_issue_identical_certificates_in_a_window(tmp_path, clock):
    """Two caches over two loads of one CA (two replicas): the same bytes, key included; a new
    window, another identity or another CA gives other keys and serials."""
    ca_a = CertificateAuthority.load_or_create(tmp_path / "ca", clock=clock)
    ca_b = CertificateAuthority.load_or_create(tmp_path / "ca", clock=clock)
    a = IdentityCache(ca_a, lifetime=timedelta(seconds=20))
    b = IdentityCache(ca_b, lifetime=timedelta(seconds=20))
    clock.advance(timedelta(seconds=4))
    first = a.get(SLEEP)
    clock.advance(timedelta(seconds=3))
    assert b.get(SLEEP) == first  # every field: chain, key, serial, dates
    assert x509.load_pem_x509_certificate(first.cert_chain_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == serialization.load_pem_private_key(
        first.private_key_pem, None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    verify_with_cryptography(ca_a, first.cert_chain_pem, clock)

    other = a.get(PRODUCTPAGE)
    assert other.private_key_pem != first.private_key_pem and other.serial != first.serial
    clock.advance(timedelta(seconds=3))  # the next window
    renewed = b.get(SLEEP)
    assert renewed.private_key_pem != first.private_key_pem and renewed.serial != first.serial
    assert a.get(SLEEP) == renewed
    foreign = IdentityCache(CertificateAuthority.generate(clock=clock), lifetime=timedelta(seconds=20)).get(SLEEP)
    assert foreign.private_key_pem != renewed.private_key_pem and foreign.serial != renewed.serial


def test_sub_second_windows_renew_once_per_window(clock):
    """A 1 s lifetime has 0.5 s windows (not whole seconds, unlike X.509 dates): renewal still
    happens exactly at each window's end, never in a loop within one."""
    cache = IdentityCache(CertificateAuthority.generate(clock=clock), lifetime=timedelta(seconds=1))
    clock.advance(timedelta(milliseconds=700))
    first = cache.get(SLEEP)
    assert first.issued_at == ALIGNED + timedelta(milliseconds=500)
    assert cache.next_rotation_at() == ALIGNED + timedelta(seconds=1)
    clock.advance(timedelta(milliseconds=299))
    assert cache.due_for_rotation() == []
    clock.advance(timedelta(milliseconds=1))
    assert cache.rotate_due() == [SLEEP] and cache.due_for_rotation() == []
    assert window_start(clock(), timedelta(seconds=1)) == cache.peek(SLEEP).issued_at == clock()


def test_due_for_rotation_accepts_an_explicit_time(cache, clock):
    cache.get(SLEEP)
    assert cache.due_for_rotation(clock() + timedelta(seconds=11)) == [SLEEP]
    assert cache.due_for_rotation(clock()) == []


def test_no_certificates_no_rotation(cache):
    assert cache.next_rotation_at() is None and cache.due_for_rotation() == []


def test_reissue_all_when_the_signing_ca_changes(cache, clock):
    old = cache.get(SLEEP), cache.get(PRODUCTPAGE)
    new_ca = CertificateAuthority.generate(clock=clock)
    change = cache.replace_authority(new_ca)
    assert change.reissue == sorted([SLEEP, PRODUCTPAGE]) and change.trust_bundle_changed
    assert cache.due_for_rotation() == sorted([SLEEP, PRODUCTPAGE])
    assert cache.next_rotation_at() == clock()
    fresh = cache.get(SLEEP)
    assert fresh.serial != old[0].serial and fresh.ca_fingerprint == new_ca.fingerprint


def test_same_ca_reloaded_changes_nothing(tmp_path, clock):
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", clock=clock)
    cache = IdentityCache(ca)
    first = cache.get(SLEEP)
    change = cache.replace_authority(ca.reload())
    assert change.reissue == [] and not change.trust_bundle_changed
    assert cache.get(SLEEP) is first


def test_other_trust_domain_ca_is_refused(cache):
    with pytest.raises(ValueError, match="trust domain 'example.org'"):
        cache.replace_authority(CertificateAuthority.generate("example.org"))


def test_retain_forgets_identities_no_longer_used(cache):
    cache.get(SLEEP)
    cache.get(PRODUCTPAGE)
    assert cache.retain([SLEEP]) == [PRODUCTPAGE]
    assert cache.identities() == [SLEEP]


def test_bad_identity_is_refused_and_not_cached(cache):
    with pytest.raises(ValueError, match="outside this CA's trust domain"):
        cache.get("spiffe://other.domain/ns/default/sa/sleep")
    assert len(cache) == 0


def test_bad_lifetime_is_refused():
    with pytest.raises(ValueError, match="positive"):
        IdentityCache(CertificateAuthority.generate(), lifetime=timedelta(0))
