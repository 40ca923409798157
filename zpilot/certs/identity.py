"""Workload certificates per SPIFFE identity: issued once, shared, and renewed on time.

Every secret name of one service account (``<spiffe>``, ``<spiffe>~<pod>~<uid>``, ...) carries the
same certificate, so a node with fifty replicas of one deployment costs one signature, and a
push does not re-key fifty times. A certificate is reused until half its lifetime has passed
(Istio's rule: leaves room for a missed push or a slow reconnect before expiry), and every
certificate is replaced as soon as the signing CA changes.

Certificates are issued for *windows*: time is cut into steps of half the lifetime, counted from
the Unix epoch, and a certificate issued during a step is dated from its start and derived from
the CA's key, the identity and the step (``CertificateAuthority.issue(window_start=...)``). So two
``zpilot serve`` replicas with one CA hand out the same bytes, and a ztunnel that reconnects to
another replica keeps its certificates and their content-hash versions. Renewal falls at the end
of the step, when at least half the lifetime is still left.

The ADS server drives rotation: ``next_rotation_at()`` says when to wake up,
``due_for_rotation()`` which identities to re-push; ``get()`` then returns the fresh certificate.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

from zpilot.certs.ca import DEFAULT_LIFETIME, CertificateAuthority, Clock, IssuedCertificate
from zpilot.certs.spiffe import parse_spiffe_id
from zpilot.certs.x509_helpers import serial_hex, sha256_hex

log = logging.getLogger("zpilot.certs.identity")

#: Fraction of a certificate's lifetime after which it is renewed.
RENEW_AT_FRACTION = 0.5


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def window_start(now: datetime, lifetime: timedelta) -> datetime:
    """The start of the issuing window ``now`` falls in: steps of half ``lifetime`` from the Unix epoch.

    Whole microseconds, so that every replica computes the same instant for the same step.
    """
    step = renewal_step(lifetime)
    return _EPOCH + ((now - _EPOCH) // step) * step


def renewal_step(lifetime: timedelta) -> timedelta:
    """How long a certificate is served before it is renewed: half its lifetime."""
    return lifetime * RENEW_AT_FRACTION


@dataclass(frozen=True)
class AuthorityChange:
    """What swapping the CA means for connected ztunnels."""

    reissue: list[str]  # identities whose certificates are now stale and must be re-pushed
    trust_bundle_changed: bool  # the trust bundle secret must be re-pushed


class IdentityCache:
    """The current certificate of each SPIFFE identity, issued on first use. Thread-safe."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        lifetime: timedelta = DEFAULT_LIFETIME,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(lifetime, timedelta) or lifetime <= timedelta(0):
            raise ValueError(f"workload certificate lifetime must be a positive timedelta, not {lifetime!r}")
        self._ca = ca
        self.lifetime = lifetime
        self._clock = clock or ca.clock
        self._certs: dict[str, IssuedCertificate] = {}
        self._lock = threading.RLock()

    @property
    def ca(self) -> CertificateAuthority:
        return self._ca

    @property
    def trust_domain(self) -> str:
        return self._ca.trust_domain

    def trust_bundle_pem(self) -> bytes:
        """The roots ztunnels must trust (the ``contract.ROOT_CA_SECRET`` secret)."""
        return self._ca.trust_bundle_pem()

    def get(self, spiffe_id: str) -> IssuedCertificate:
        """The certificate to serve for ``spiffe_id`` now, issuing a new one if none is current.

        Raises ValueError (naming the ID) for an ID that is malformed or of another trust domain.
        """
        with self._lock:
            cert = self._certs.get(spiffe_id)
            if cert is None or self._stale(cert, self._clock()):
                if cert is None:
                    parse_spiffe_id(spiffe_id, self._ca.trust_domain)  # a clear error before any key is made
                now = self._clock()
                cert = self._ca.issue(spiffe_id, self.lifetime, window_start=window_start(now, self.lifetime))
                previous = self._certs.get(spiffe_id)
                self._certs[spiffe_id] = cert
                log.info(
                    "issued certificate for %s serial %s valid until %s%s",
                    spiffe_id, serial_hex(cert.serial), cert.not_after.isoformat(),
                    f" (replaces serial {serial_hex(previous.serial)})" if previous else "",
                )
            return cert

    def peek(self, spiffe_id: str) -> IssuedCertificate | None:
        """The cached certificate, even if due for renewal, without issuing (for debug output)."""
        with self._lock:
            return self._certs.get(spiffe_id)

    def identities(self) -> list[str]:
        """Every identity that has a certificate."""
        with self._lock:
            return sorted(self._certs)

    def __len__(self) -> int:
        return len(self._certs)

    def due_for_rotation(self, now: datetime | None = None) -> list[str]:
        """Identities whose certificate must be replaced at ``now`` (default: the clock's now)."""
        now = now or self._clock()
        with self._lock:
            return sorted(sid for sid, cert in self._certs.items() if self._stale(cert, now))

    def rotate_due(self, now: datetime | None = None) -> list[str]:
        """Re-issue every identity due at ``now``; returns them, for the server to push."""
        due = self.due_for_rotation(now)
        for spiffe_id in due:
            self.get(spiffe_id)
        return due

    def next_rotation_at(self) -> datetime | None:
        """The earliest renewal time of any cached certificate (None if there are none)."""
        with self._lock:
            if not self._certs:
                return None
            return min(
                self._clock() if cert.ca_fingerprint != self._ca.fingerprint else self._renewal_time(cert)
                for cert in self._certs.values()
            )

    def retain(self, spiffe_ids: Iterable[str]) -> list[str]:
        """Forget identities no longer referenced by any node (so they stop being renewed)."""
        keep = set(spiffe_ids)
        with self._lock:
            gone = sorted(sid for sid in self._certs if sid not in keep)
            for sid in gone:
                del self._certs[sid]
            return gone

    def replace_authority(self, ca: CertificateAuthority) -> AuthorityChange:
        """Switch to ``ca`` (e.g. the result of ``ca.reload()``) and say what must be re-pushed.

        Certificates signed by another key become due at once; ``get`` re-issues them.
        """
        if ca.trust_domain != self._ca.trust_domain:
            raise ValueError(
                f"new CA ({ca.source}) is for trust domain {ca.trust_domain!r}, not {self._ca.trust_domain!r};"
                " changing the trust domain changes every identity and needs a restart"
            )
        with self._lock:
            bundle_changed = sha256_hex(ca.trust_bundle_pem()) != sha256_hex(self._ca.trust_bundle_pem())
            self._ca = ca
            stale = sorted(sid for sid, cert in self._certs.items() if cert.ca_fingerprint != ca.fingerprint)
        if stale or bundle_changed:
            log.warning(
                "CA changed (%s): %d identities to re-issue, trust bundle %s",
                ca.source, len(stale), "changed" if bundle_changed else "unchanged",
            )
        return AuthorityChange(reissue=stale, trust_bundle_changed=bundle_changed)

    def _renewal_time(self, cert: IssuedCertificate) -> datetime:
        """The end of the certificate's window: exactly where the next window starts, so renewal
        always yields a new certificate (a certificate cut short by the CA's expiry included)."""
        return cert.issued_at + renewal_step(self.lifetime)

    def _stale(self, cert: IssuedCertificate, now: datetime) -> bool:
        return cert.ca_fingerprint != self._ca.fingerprint or now >= self._renewal_time(cert)
