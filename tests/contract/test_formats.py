"""Each format of the contract and the reading of it back, in one place: they must round-trip."""

from __future__ import annotations

import re

import pytest

from zpilot import contract

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def test_node_id_round_trip():
    node = "gke-jimmy-cluster-default-pool-d5041909-d10i"
    assert contract.node_of_id(contract.node_id(node)) == node
    assert contract.node_of_id(contract.node_id(node) + "~10.4.4.18~more") == node
    assert contract.node_of_id("sidecar~10.4.4.18~x") is None
    assert contract.node_of_id(contract.node_id("")) is None


def test_spiffe_id_round_trip_and_form():
    assert contract.spiffe_id("cluster.local", "default", "sleep") == SLEEP
    assert contract.split_spiffe_id(SLEEP) == ("cluster.local", "default", "sleep")
    assert contract.SPIFFE_ID_FORM == "spiffe://<trust domain>/ns/<namespace>/sa/<service account>"


@pytest.mark.parametrize("uri", ["spiffe://td/ns/a/sa", "spiffe://td/sa/a/ns/b", "https://td/ns/a/sa/b",
                                 "spiffe://td/ns/a/sa/b/c"])
def test_other_shapes_are_not_spiffe_ids(uri):
    assert contract.split_spiffe_id(uri) is None


def test_the_identity_regex_accepts_the_trust_domain_s_identities_only():
    pattern = re.compile(contract.spiffe_id_regex("cluster.local"))
    assert pattern.match(SLEEP)
    assert not pattern.match(contract.spiffe_id("clusterXlocal", "default", "sleep"))  # the dot is literal
    assert not pattern.match(SLEEP + "/extra")


def test_workload_secret_name_round_trip():
    name = contract.workload_secret_name(SLEEP, "sleep-5644bdc767-2dfg7", "85c8c34e-7ae3-4d29-9582-0819e2b10c69")
    assert name == f"{SLEEP}~sleep-5644bdc767-2dfg7~85c8c34e-7ae3-4d29-9582-0819e2b10c69"
    assert contract.identity_of_secret_name(name) == SLEEP == contract.identity_of_secret_name(SLEEP)


def test_the_contract_imports_nothing_of_zpilot():
    source = open(contract.__file__).read()
    assert not re.search(r"^\s*(from|import)\s+(zpilot|\.)", source, re.MULTILINE)


def test_node_credential_id_round_trip():
    node = "gke-jimmy-cluster-default-pool-d5041909-d10i"
    uri = contract.node_credential_id("cluster.local", node)
    assert uri == f"spiffe://cluster.local/ns/istio-system/sa/ztunnel/node/{node}"
    assert contract.node_of_credential_id(uri, "cluster.local") == node
    assert contract.node_of_credential_id(uri, "other.local") is None  # another trust domain's
    assert contract.node_of_credential_id(uri + "/x", "cluster.local") is None
    assert contract.node_of_credential_id(contract.spiffe_id("cluster.local", "istio-system", "ztunnel"),
                                          "cluster.local") is None  # the ztunnel's workload identity


# "node-a\n": re's "$" matched before a final newline, and the credential named a node no cluster can have
@pytest.mark.parametrize("node", ["", "A", "a/b", "..", "a" * 254, "-a", "a_b", "node-a\n"])
def test_a_node_credential_names_a_kubernetes_node_or_nothing(node):
    with pytest.raises(ValueError):
        contract.node_credential_id("cluster.local", node)
    assert contract.node_of_credential_id(f"spiffe://cluster.local/ns/istio-system/sa/ztunnel/node/{node}",
                                          "cluster.local") is None
