"""Envoy ``Secret`` resources (SDS) for the names the translators reference, and safe views of them.

Names follow the 2022 ztunnel (:mod:`zpilot.contract`): ``contract.ROOT_CA_SECRET`` is the
validation context (the trust bundle), and a workload's certificate is named by its SPIFFE ID, alone
or as ``contract.workload_secret_name``. All names of one identity share one issued certificate
(``IdentityCache``).

Secrets hold private keys, so anything that shows them to a human goes through ``redact_secret``
(the same ``[redacted]`` placeholder Envoy's own /config_dump uses, applied to every field the
Envoy API marks ``sensitive``) or ``describe_secret`` (subject, SANs, serial and validity only).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Protocol

from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf.descriptor import FieldDescriptor
from udpa.annotations import sensitive_pb2

from zpilot import contract
from zpilot.certs.ca import IssuedCertificate
from zpilot.certs.identity import IdentityCache
from zpilot.certs.x509_helpers import fingerprint, serial_hex
from zpilot.model.problems import Problems

log = logging.getLogger("zpilot.certs.secrets")

#: What Envoy puts in place of sensitive strings and bytes in /config_dump.
REDACTED = "[redacted]"


class SecretRequest(Protocol):
    """A secret some resource references: its name, and the identity whose certificate it holds
    (None: the trust bundle). The translators' ``SecretRef`` is one; declared here as a shape, so
    that certificates need not import translation (the layers in README.md, "Architecture")."""

    @property
    def name(self) -> str: ...

    @property
    def spiffe_id(self) -> str | None: ...


def name_matches_identity(name: str, spiffe_id: str) -> bool:
    """Whether a secret called ``name`` may carry ``spiffe_id``'s certificate.

    A name that starts with a SPIFFE ID announces whose certificate it holds; serving a different
    one under it would make a ztunnel present the wrong identity. Other names are not checked.
    """
    if not name.startswith(contract.SPIFFE_SCHEME):
        return True
    return name == spiffe_id or name.startswith(spiffe_id + contract.SECRET_NAME_SEPARATOR)


def tls_certificate_secret(name: str, cert: IssuedCertificate) -> Secret:
    """A ``tls_certificate`` secret: the chain and key inline, as Envoy's SDS expects them."""
    secret = Secret(name=name)
    secret.tls_certificate.certificate_chain.inline_bytes = cert.cert_chain_pem
    secret.tls_certificate.private_key.inline_bytes = cert.private_key_pem
    return secret


def validation_context_secret(trust_bundle_pem: bytes, name: str = contract.ROOT_CA_SECRET) -> Secret:
    """A ``validation_context`` secret whose trusted CAs are the trust bundle (old and new roots)."""
    secret = Secret(name=name)
    secret.validation_context.trusted_ca.inline_bytes = trust_bundle_pem
    return secret


def build_secrets(
    refs: Iterable[SecretRequest],
    identities: IdentityCache,
    problems: Problems | None = None,
) -> dict[str, Secret]:
    """The Secret for every referenced name. Bad references are skipped and reported, not raised.

    A reference is bad if its SPIFFE ID is malformed or outside the trust domain, if its name
    claims another identity, or if two references give one name different identities (then the
    name is served to nobody rather than with a guess).
    """
    wanted: dict[str, str | None] = {}
    conflicting: set[str] = set()
    for ref in refs:
        if ref.name in wanted and wanted[ref.name] != ref.spiffe_id:
            conflicting.add(ref.name)
        wanted.setdefault(ref.name, ref.spiffe_id)

    def report(name: str, reason: str) -> None:
        log.warning("Secret %s: %s", name, reason, extra={"object": f"Secret {name}"})
        if problems is not None:
            problems.error(f"Secret {name}", reason)

    secrets: dict[str, Secret] = {}
    bundle: bytes | None = None
    for name, spiffe_id in wanted.items():
        if not name:
            report(repr(name), "empty secret name; not served")
            continue
        if name in conflicting:
            report(name, "referenced with different identities; not served")
            continue
        if spiffe_id is None:
            bundle = bundle if bundle is not None else identities.trust_bundle_pem()
            secrets[name] = validation_context_secret(bundle, name)
            continue
        if not name_matches_identity(name, spiffe_id):
            report(name, f"name does not belong to identity {spiffe_id}; not served")
            continue
        try:
            cert = identities.get(spiffe_id)
        except ValueError as exc:
            report(name, f"{exc}; not served")
            continue
        secrets[name] = tls_certificate_secret(name, cert)
    return secrets


def redact_secret(secret: Secret) -> Secret:
    """A copy with every ``sensitive`` field (private key, password, PKCS#12, ...) replaced as Envoy does.

    Mirrors Envoy's ``MessageUtil::redact``: inside a field annotated ``(udpa.annotations.sensitive)``
    strings and bytes become ``[redacted]`` and other scalars are cleared; so the private key reads
    ``inline_bytes: "[redacted]"`` exactly as in Envoy's /config_dump.
    """
    copy = Secret()
    copy.CopyFrom(secret)
    _redact(copy, ancestor_is_sensitive=False)
    return copy


def _redact(message: Any, ancestor_is_sensitive: bool) -> None:
    for field, value in message.ListFields():
        sensitive = ancestor_is_sensitive or field.GetOptions().Extensions[sensitive_pb2.sensitive]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                items = list(value.items())
                for key, item in items:
                    if hasattr(item, "ListFields"):
                        _redact(item, sensitive)
                    elif sensitive:
                        value[key] = _placeholder(field.message_type.fields_by_name["value"])
                continue
            for item in (value if _is_repeated(field) else [value]):
                _redact(item, sensitive)
        elif sensitive:
            if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                if _is_repeated(field):
                    value[:] = [_placeholder(field)] * len(value)
                else:
                    setattr(message, field.name, _placeholder(field))
            else:
                message.ClearField(field.name)


def _is_repeated(field: FieldDescriptor) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; `label` is gone in 7
    if is_repeated is not None:
        return bool(is_repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def _placeholder(field: FieldDescriptor) -> str | bytes:
    return REDACTED.encode() if field.type == FieldDescriptor.TYPE_BYTES else REDACTED


def describe_certificate(pem: bytes | str) -> dict[str, Any]:
    """Subject, issuer, URI SANs, serial (hex, as Envoy's /certs), validity and fingerprint of the
    first certificate in ``pem``, for debug output. Raises ValueError if there is no certificate."""
    certs = _certificates(pem)
    return _describe(certs[0])


def describe_chain(pem: bytes | str) -> list[dict[str, Any]]:
    """``describe_certificate`` for every certificate in ``pem``."""
    return [_describe(cert) for cert in _certificates(pem)]


def describe_secret(secret: Secret) -> dict[str, Any]:
    """What /debug/config_dump shows for a secret: its certificates described, never key bytes."""
    view: dict[str, Any] = {"name": secret.name}
    if secret.HasField("tls_certificate"):
        tls = secret.tls_certificate
        view["type"] = "tls_certificate"
        view["certificate_chain"] = _describe_source(secret.name, tls.certificate_chain)
        view["private_key"] = REDACTED if tls.HasField("private_key") else None
    elif secret.HasField("validation_context"):
        view["type"] = "validation_context"
        view["trusted_ca"] = _describe_source(secret.name, secret.validation_context.trusted_ca)
    else:
        kind = secret.WhichOneof("type")
        view["type"] = kind or "empty"
    return view


def _describe_source(name: str, source: Any) -> list[dict[str, Any]] | dict[str, str]:
    kind = source.WhichOneof("specifier")
    if kind == "inline_bytes":
        data: bytes | str = source.inline_bytes
    elif kind == "inline_string":
        data = source.inline_string
    elif kind is None:
        return []
    else:
        return {kind: str(getattr(source, kind))}
    try:
        return describe_chain(data)
    except ValueError as exc:
        return {"error": f"secret {name}: {exc}"}


def _certificates(pem: bytes | str) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError("no PEM certificate found")
    return certs


def _describe(cert: x509.Certificate) -> dict[str, Any]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uri_sans = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uri_sans = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "uri_sans": uri_sans,
        "serial": serial_hex(cert.serial_number),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": fingerprint(cert),
    }
