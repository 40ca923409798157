import base64
import json
from datetime import timedelta

import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import json_format, text_format

from zpilot import contract
from zpilot.certs.ca import CertificateAuthority
from zpilot.certs.identity import IdentityCache
from zpilot.certs.secrets import (
    build_secrets,
    describe_certificate,
    describe_secret,
    name_matches_identity,
    redact_secret,
)
from zpilot.model.problems import Problems
from zpilot.translators.resources import SecretRef

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
SLEEP_POD = f"{SLEEP}~sleep-5644bdc767-2dfg7~85c8c34e-7ae3-4d29-9582-0819e2b10c69"
SLEEP_POD_2 = f"{SLEEP}~sleep-5644bdc767-x9zq1~0c6c0a53-0b52-4a3e-9b0b-5ef5e9b7a9f1"
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
ROOTCA = contract.ROOT_CA_SECRET


@pytest.fixture
def identities(clock):
    return IdentityCache(CertificateAuthority.generate(clock=clock))


def key_fragments(secret_bytes: bytes) -> list[str]:
    """Lines of base64 from the private key, any of which would betray it if shown."""
    return [line for line in secret_bytes.decode().splitlines() if not line.startswith("-----")]


def test_names_and_roles(identities):
    refs = [SecretRef(ROOTCA, None), SecretRef(SLEEP_POD, SLEEP), SecretRef(SLEEP, SLEEP), SecretRef(PRODUCTPAGE, PRODUCTPAGE)]
    secrets = build_secrets(refs, identities)
    assert set(secrets) == {ROOTCA, SLEEP_POD, SLEEP, PRODUCTPAGE}
    assert all(s.name == n for n, s in secrets.items())
    root = secrets[ROOTCA]
    assert root.WhichOneof("type") == "validation_context"
    assert root.validation_context.trusted_ca.inline_bytes == identities.trust_bundle_pem()
    tls = secrets[SLEEP_POD].tls_certificate
    issued = identities.peek(SLEEP)
    assert tls.certificate_chain.inline_bytes == issued.cert_chain_pem
    assert tls.private_key.inline_bytes == issued.private_key_pem
    leaf = x509.load_pem_x509_certificate(tls.certificate_chain.inline_bytes)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == [SLEEP]


def test_one_certificate_per_identity_shared_by_all_its_names(identities):
    secrets = build_secrets([SecretRef(SLEEP_POD, SLEEP), SecretRef(SLEEP_POD_2, SLEEP), SecretRef(PRODUCTPAGE, PRODUCTPAGE)], identities)
    a, b, c = (secrets[n].tls_certificate.certificate_chain.inline_bytes for n in (SLEEP_POD, SLEEP_POD_2, PRODUCTPAGE))
    assert a == b != c
    assert len(identities) == 2


def test_secrets_follow_rotation(identities, clock):
    before = build_secrets([SecretRef(SLEEP_POD, SLEEP)], identities)[SLEEP_POD]
    clock.advance(timedelta(hours=12))
    after = build_secrets([SecretRef(SLEEP_POD, SLEEP)], identities)[SLEEP_POD]
    assert before.tls_certificate.certificate_chain != after.tls_certificate.certificate_chain


def test_bad_references_are_skipped_and_reported_by_name(identities):
    problems = Problems()
    refs = [
        SecretRef(ROOTCA, None),
        SecretRef("spiffe://evil.example/ns/default/sa/sleep", "spiffe://evil.example/ns/default/sa/sleep"),
        SecretRef(f"{PRODUCTPAGE}~pp-1~uid", SLEEP),  # name claims productpage, identity is sleep
        SecretRef("dup", SLEEP),
        SecretRef("dup", PRODUCTPAGE),
        SecretRef("", SLEEP),
        SecretRef(SLEEP_POD, SLEEP),
    ]
    secrets = build_secrets(refs, identities, problems)
    assert set(secrets) == {ROOTCA, SLEEP_POD}
    text = "\n".join(map(str, problems))
    assert "Secret spiffe://evil.example/ns/default/sa/sleep: SPIFFE ID" in text and "trust domain" in text
    assert f"Secret {PRODUCTPAGE}~pp-1~uid: name does not belong to identity {SLEEP}" in text
    assert "Secret dup: referenced with different identities" in text
    assert "empty secret name" in text
    assert len(problems) == 4


def test_bad_references_without_a_problem_list_do_not_raise(identities, caplog):
    assert build_secrets([SecretRef("x", "not-a-spiffe-id")], identities) == {}
    assert "Secret x" in caplog.text


def test_secret_name_helpers():
    name = contract.workload_secret_name(SLEEP, "sleep-5644bdc767-2dfg7", "85c8c34e-7ae3-4d29-9582-0819e2b10c69")
    assert name == SLEEP_POD
    assert contract.identity_of_secret_name(name) == SLEEP and contract.identity_of_secret_name(SLEEP) == SLEEP
    assert name_matches_identity(SLEEP_POD, SLEEP)
    assert not name_matches_identity(SLEEP + "er~p~u", SLEEP)
    assert name_matches_identity("custom-name", SLEEP)


def test_redaction_matches_envoy_and_leaves_no_key_bytes(identities):
    secret = build_secrets([SecretRef(SLEEP_POD, SLEEP)], identities)[SLEEP_POD]
    key = secret.tls_certificate.private_key.inline_bytes
    redacted = redact_secret(secret)
    # Envoy's /config_dump shows exactly this for an inline private key (checked in test_envoy.py).
    assert json_format.MessageToDict(redacted)["tlsCertificate"]["privateKey"] == {
        "inlineBytes": base64.b64encode(b"[redacted]").decode()
    }
    assert redacted.tls_certificate.certificate_chain == secret.tls_certificate.certificate_chain
    assert secret.tls_certificate.private_key.inline_bytes == key  # the original is untouched
    dumps = [
        redacted.SerializeToString(),
        text_format.MessageToString(redacted).encode(),
        json.dumps(json_format.MessageToDict(redacted)).encode(),
        json.dumps(describe_secret(secret)).encode(),
        str(identities.peek(SLEEP)).encode(),
    ]
    for fragment in key_fragments(key):
        encoded = base64.b64encode(fragment.encode())
        for dump in dumps:
            assert fragment.encode() not in dump and encoded not in dump


def test_redaction_covers_every_sensitive_field():
    secret = secret_pb2.Secret(name="other")
    secret.tls_certificate.password.inline_string = "hunter2"
    secret.tls_certificate.pkcs12.filename = "/secret/path"
    secret.session_ticket_keys.keys.add().inline_bytes = b"ticket-key"
    redacted = text_format.MessageToString(redact_secret(secret))
    for leaked in ("hunter2", "/secret/path", "ticket-key"):
        assert leaked not in redacted
    generic = secret_pb2.Secret(name="g")
    generic.generic_secret.secrets["token"].inline_string = "s3cr3t"
    assert "s3cr3t" not in text_format.MessageToString(redact_secret(generic))


def test_describe_certificate_and_secret(identities):
    secrets = build_secrets([SecretRef(ROOTCA, None), SecretRef(SLEEP_POD, SLEEP)], identities)
    issued = identities.peek(SLEEP)
    leaf = describe_certificate(issued.cert_chain_pem)
    assert leaf["uri_sans"] == [SLEEP]
    assert leaf["subject"] == "" and leaf["issuer"] == "CN=zpilot root CA,O=cluster.local"
    assert int(leaf["serial"], 16) == issued.serial
    assert leaf["not_after"] == issued.not_after.isoformat()
    view = describe_secret(secrets[SLEEP_POD])
    assert view["type"] == "tls_certificate" and view["private_key"] == "[redacted]"
    assert view["certificate_chain"][0]["serial"] == leaf["serial"]
    root_view = describe_secret(secrets[ROOTCA])
    assert root_view["type"] == "validation_context"
    assert root_view["trusted_ca"][0]["subject"] == "CN=zpilot root CA,O=cluster.local"


@pytest.mark.parametrize("bad", [b"", "not a pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_describe_refuses_what_is_not_a_certificate(bad):
    with pytest.raises(ValueError, match="no PEM certificate"):
        describe_certificate(bad)


def test_describe_secret_with_garbage_does_not_crash():
    secret = secret_pb2.Secret(name="broken")
    secret.tls_certificate.certificate_chain.inline_bytes = b"garbage"
    assert describe_secret(secret)["certificate_chain"] == {"error": "secret broken: no PEM certificate found"}
