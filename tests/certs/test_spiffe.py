import pytest

from zpilot.certs.spiffe import parse_spiffe_id, service_account_identity, validate_trust_domain


def test_parses_a_service_account_identity():
    sid = parse_spiffe_id("spiffe://cluster.local/ns/default/sa/sleep", "cluster.local")
    assert (sid.trust_domain, sid.namespace, sid.service_account) == ("cluster.local", "default", "sleep")
    assert sid.uri == "spiffe://cluster.local/ns/default/sa/sleep"


def test_service_account_names_may_contain_dots():
    assert parse_spiffe_id("spiffe://td/ns/ns-1/sa/my.account-2").service_account == "my.account-2"


@pytest.mark.parametrize(
    "bad, why",
    [
        ("cluster.local/ns/default/sa/sleep", "does not start with"),
        ("https://cluster.local/ns/default/sa/sleep", "does not start with"),
        ("spiffe://cluster.local/ns/default/sa/sleep/", "not of the form"),
        ("spiffe://cluster.local/ns/default/sa/", "invalid service account"),
        ("spiffe://cluster.local/ns//sa/sleep", "invalid namespace"),
        ("spiffe://cluster.local/sa/sleep/ns/default", "not of the form"),
        ("spiffe://cluster.local/ns/default/sa/sleep/extra", "not of the form"),
        ("spiffe://cluster.local/ns/Default/sa/sleep", "invalid namespace"),
        ("spiffe://cluster.local/ns/default/sa/Sleep", "invalid service account"),
        ("spiffe://Cluster.Local/ns/default/sa/sleep", "invalid trust domain"),
        ("spiffe:///ns/default/sa/sleep", "invalid trust domain"),
        ("spiffe://cluster.local/ns/default/sa/sl%65ep", "percent-encoding"),
        ("spiffe://cluster.local/ns/default/sa/sleep?x=1", "query"),
        ("spiffe://cluster.local/ns/default/sa/sleep#f", "fragment"),
        ("spiffe://cluster.local:443/ns/default/sa/sleep", "port"),
        ("spiffe://cluster.local/ns/" + "a" * 64 + "/sa/sleep", "invalid namespace"),
        ("spiffe://cluster.local/ns/default/sa/" + "a" * 2100, "longer than"),
        # a final newline: re's "$" matched before it
        ("spiffe://cluster.local/ns/default/sa/sleep\n", "invalid service account"),
    ],
)
def test_malformed_ids_are_refused_with_the_id_named(bad, why):
    with pytest.raises(ValueError, match=why) as err:
        parse_spiffe_id(bad)
    assert bad[:40] in str(err.value)


def test_other_trust_domain_is_refused():
    with pytest.raises(ValueError, match="outside this CA's trust domain 'cluster.local'"):
        parse_spiffe_id("spiffe://evil.example/ns/default/sa/sleep", "cluster.local")


def test_non_string_is_refused_cleanly():
    with pytest.raises(ValueError, match="must be a string"):
        parse_spiffe_id(None)  # type: ignore[arg-type]


def test_trust_domain_validation():
    assert validate_trust_domain("example.org") == "example.org"
    with pytest.raises(ValueError, match="trust domain 'Bad Domain'"):
        validate_trust_domain("Bad Domain")


def test_service_account_identity_builds_and_validates():
    assert service_account_identity("default", "sleep") == "spiffe://cluster.local/ns/default/sa/sleep"
    with pytest.raises(ValueError, match="invalid service account"):
        service_account_identity("default", "Not_Valid")


@pytest.mark.parametrize("bad,why", [("spiffe://cluster.local/ns/default\n/sa/sleep", "invalid namespace"),
                                     ("spiffe://cluster.local\n/ns/default/sa/sleep", "invalid trust domain")])
def test_a_part_ending_in_a_newline_is_refused(bad, why):
    """re's "$" matched before a final newline: each part was checked with it."""
    with pytest.raises(ValueError, match=why):
        parse_spiffe_id(bad)
