from datetime import timedelta

import pytest

from zpilot.certs.ca import CertificateAuthority
from zpilot.certs.identity import IdentityCache

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"


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
    clock.advance(timedelta(seconds=5))
    cache.get(PRODUCTPAGE)
    clock.advance(timedelta(seconds=5))
    before = cache.peek(PRODUCTPAGE)
    assert cache.rotate_due() == [SLEEP]
    assert cache.peek(PRODUCTPAGE) is before
    assert cache.next_rotation_at() == before.issued_at + timedelta(seconds=10)


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
