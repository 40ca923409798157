"""The RBAC zpilot generates agrees with Istio's documented semantics, for random policies and connections.

Each example is a handful of random AuthorizationPolicies and PeerAuthentications (as a user writes
them: every field of the L4 API, wildcards, not-forms, L7 fields, the root namespace, selectors that do
and do not match) around one destination pod. They go through the real converters, index and
translators; then every connection to the pod (mTLS peers of several identities, and plaintext, from
several addresses to several ports) is decided twice: by a small interpreter of the Envoy RBAC the node
got (``zpilot.explain.rbac_eval``, what Envoy would do with it) and by a reference evaluator written
from Istio's documentation (``policy_reference.py``). They must agree on every one.

Derandomized like the other properties; ``ZPILOT_HYPOTHESIS_EXPLORE=1`` draws fresh examples.
"""

from __future__ import annotations

import os

import json

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zpilot.certs.ca import CertificateAuthority
from zpilot.certs.identity import IdentityCache
from zpilot.certs.secrets import build_secrets
from zpilot.envoy_binary import validate
from zpilot.translators.static import static_bootstrap

from zpilot.explain.rbac_eval import Peer, connection_verdict, stream_verdict
from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.kube.store import ObjectStore
from zpilot.model import MeshIndex, Problems
from zpilot.translators import translate_node
from zpilot.contract import INBOUND_LISTENER, INBOUND_PLAINTEXT_LISTENER
from zpilot.translators.names import inbound_chain
from zpilot.translators.tcp_proxy import ORIGINAL_DST_HEADER

from . import policy_reference as ref

EXPLORE = os.environ.get("ZPILOT_HYPOTHESIS_EXPLORE") == "1"
NODE = "node-1"
DEST = ref.Workload("mesh", {"app": "httpbin", "tier": "back"}, "10.1.1.20")
_CA = CertificateAuthority.generate()
ZTUNNEL_PEER = "10.1.2.2"  # the tunnel's own source: never what a source.ip rule is judged on

BASE = [
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
     "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh", "labels": {"istio.io/dataplane-mode": "ambient"}}},
    {"apiVersion": "v1", "kind": "Pod",
     "metadata": {"name": "httpbin", "namespace": "mesh", "uid": "u1", "labels": dict(DEST.labels)},
     "spec": {"nodeName": NODE, "serviceAccountName": "httpbin", "containers": [{"name": "c", "image": "i"}]},
     "status": {"phase": "Running", "podIP": DEST.ip, "conditions": [{"type": "Ready", "status": "True"}]}},
]

IDENTITIES = [("mesh", "sleep"), ("mesh", "httpbin"), ("other", "robot"), ("foo-bar", "x"), None]
SOURCE_IPS = ["10.1.2.10", "10.1.3.7", "10.9.0.1", "192.168.1.1"]
#: (not the ztunnel's own ports, 15000-15090: the inbound guard refuses those before any policy judges,
#: tests/translators/test_secure_data_path.py)
PORTS = [80, 81, 9080, 8080]
CONNECTIONS = [ref.Connection(i, ip, port) for i in IDENTITIES for ip in SOURCE_IPS for port in PORTS]

PRINCIPALS = ["cluster.local/ns/mesh/sa/sleep", "cluster.local/ns/other/*", "*/sa/robot", "*",
              "cluster.local/ns/mesh/sa/httpbin", "evil/ns/mesh/sa/sleep", "*-bar/sa/x"]
NAMESPACES = ["mesh", "other", "*", "me*", "*her", "foo-bar"]
SERVICE_ACCOUNTS = ["sleep", "other/robot", "mesh/httpbin", "x"]
IP_BLOCKS = ["10.1.2.0/24", "10.1.3.7", "10.0.0.0/8", "192.168.1.1/32", "10.1.2.10/31"]
PORT_VALUES = [str(p) for p in PORTS]
DEST_IPS = ["10.1.1.0/24", "10.1.2.0/24", "10.1.1.20"]


def some(pool: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)


@st.composite
def sources(draw) -> dict:
    fields: dict = {}
    if draw(st.booleans()):
        for name, pool in (("serviceAccounts", SERVICE_ACCOUNTS), ("notServiceAccounts", SERVICE_ACCOUNTS)):
            if draw(st.booleans()):
                fields[name] = draw(some(pool))
    else:
        for name, pool in (("principals", PRINCIPALS), ("notPrincipals", PRINCIPALS),
                           ("namespaces", NAMESPACES), ("notNamespaces", NAMESPACES)):
            if draw(st.integers(0, 2)) == 0:
                fields[name] = draw(some(pool))
    for name in ("ipBlocks", "notIpBlocks"):
        if draw(st.integers(0, 3)) == 0:
            fields[name] = draw(some(IP_BLOCKS))
    if draw(st.integers(0, 5)) == 0:
        fields[draw(st.sampled_from(["requestPrincipals", "remoteIpBlocks"]))] = ["1.2.3.4"] if draw(st.booleans()) else ["*"]
    if not fields:
        fields["principals"] = draw(some(PRINCIPALS))
    return {"source": fields}


@st.composite
def operations(draw) -> dict:
    fields: dict = {}
    for name in ("ports", "notPorts"):
        if draw(st.booleans()):
            fields[name] = draw(some(PORT_VALUES))
    if draw(st.integers(0, 4)) == 0 or not fields:
        fields[draw(st.sampled_from(["methods", "paths"]))] = ["GET"]
    return {"operation": fields}


@st.composite
def conditions(draw) -> dict:
    key = draw(st.sampled_from(["source.ip", "source.namespace", "source.principal", "destination.ip",
                                "destination.port", "request.headers[x-user]"]))
    pool = {"source.ip": IP_BLOCKS, "source.namespace": NAMESPACES, "source.principal": PRINCIPALS,
            "destination.ip": DEST_IPS, "destination.port": PORT_VALUES}.get(key, ["bob"])
    cond: dict = {"key": key}
    which = draw(st.sampled_from(["values", "notValues", "both"]))
    if which in ("values", "both"):
        cond["values"] = draw(some(pool))
    if which in ("notValues", "both"):
        cond["notValues"] = draw(some(pool))
    return cond


rules = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(sources(), min_size=1, max_size=2),
        "to": st.lists(operations(), min_size=1, max_size=2),
        "when": st.lists(conditions(), min_size=1, max_size=2),
    },
)


@st.composite
def authorization_policies(draw, index: int) -> dict:
    spec: dict = {}
    action = draw(st.sampled_from(["ALLOW", "ALLOW", "DENY", "DENY", "AUDIT", None]))
    if action is not None:
        spec["action"] = action
    selector = draw(st.sampled_from([None, {"app": "httpbin"}, {"app": "sleep"}, {}, {"tier": "back"}]))
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    shape = draw(st.integers(0, 9))
    if shape == 0:
        pass  # spec: {} -- no rules: matches nothing
    elif shape == 1:
        spec["rules"] = [{}]  # one empty rule: matches everything
    else:
        spec["rules"] = draw(st.lists(rules, min_size=1, max_size=3))
    if draw(st.integers(0, 15)) == 0:
        spec["targetRefs"] = [{"kind": "Service", "group": "", "name": "httpbin"}]
        spec.pop("selector", None)
    namespace = draw(st.sampled_from(["mesh", "mesh", "other", "istio-system"]))
    return {"apiVersion": draw(st.sampled_from(["security.istio.io/v1", "security.istio.io/v1beta1"])),
            "kind": "AuthorizationPolicy", "metadata": {"name": f"ap-{index}", "namespace": namespace}, "spec": spec}


MODES = st.sampled_from(["STRICT", "PERMISSIVE", "DISABLE", "UNSET"])


@st.composite
def peer_authentications(draw) -> list[dict]:
    out = []
    for i, (namespace, selector) in enumerate(
        [("istio-system", None), ("mesh", None), ("mesh", None), ("mesh", {"app": "httpbin"}), ("mesh", {"app": "other"})]
    ):
        if draw(st.integers(0, 2)) != 0:
            continue
        spec: dict = {"mtls": {"mode": draw(MODES)}}
        if selector is not None:
            spec["selector"] = {"matchLabels": selector}
            ports = draw(st.lists(st.sampled_from(PORT_VALUES), max_size=2, unique=True))
            if ports:
                spec["portLevelMtls"] = {p: {"mode": draw(MODES)} for p in ports}
        created = f"2024-01-0{draw(st.integers(1, 9))}T00:00:00Z"
        out.append({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                    "metadata": {"name": f"pa-{i}", "namespace": namespace, "creationTimestamp": created}, "spec": spec})
    return out


@st.composite
def scenarios(draw) -> tuple[list[dict], list[dict]]:
    count = draw(st.integers(0, 4))
    return [draw(authorization_policies(i)) for i in range(count)], draw(peer_authentications())


def translate(docs: list[dict]):
    store, problems = ObjectStore(), Problems()
    for doc in docs:
        store.put(KIND_CONVERTERS[doc["kind"]](doc))  # the generator writes only valid objects
    index = MeshIndex.build(store.snapshot(), problems)
    resources = translate_node(index, NODE)
    chain_of = lambda listener: next(  # noqa: E731
        c for c in resources.listeners[listener].filter_chains if c.name == inbound_chain(DEST.ip)
    )
    return chain_of(INBOUND_LISTENER), chain_of(INBOUND_PLAINTEXT_LISTENER)


def envoy_admits(tunnel_chain, plaintext_chain, conn: ref.Connection) -> bool:
    if conn.identity is None:
        peer = Peer(conn.source_ip, conn.source_ip, None, DEST.ip, conn.port)
        return connection_verdict(plaintext_chain, peer).allowed
    spiffe = f"spiffe://{ref.TRUST_DOMAIN}/ns/{conn.identity[0]}/sa/{conn.identity[1]}"
    headers = {ORIGINAL_DST_HEADER: f"{DEST.ip}:{conn.port}", ":authority": f"{DEST.ip}:{conn.port}",
               "x-forwarded-for": conn.source_ip}
    peer = Peer(conn.source_ip, ZTUNNEL_PEER, spiffe, DEST.ip, 15008, headers)
    return stream_verdict(tunnel_chain, peer).allowed


@settings(max_examples=1500 if EXPLORE else 300, derandomize=not EXPLORE, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_generated_rbac_decides_like_istio(scenario) -> None:
    policies, peer_auths = scenario
    tunnel, plaintext = translate(BASE + policies + peer_auths)
    for conn in CONNECTIONS:
        expected = ref.admitted(policies, peer_auths, DEST, conn)
        assert envoy_admits(tunnel, plaintext, conn) == expected, (
            f"{conn}: Istio's semantics say {'admit' if expected else 'refuse'}"
        )


@pytest.mark.envoy
@settings(max_examples=25 if EXPLORE else 8, derandomize=not EXPLORE, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(scenarios(), min_size=3, max_size=3))
def test_envoy_accepts_random_policies(batch) -> None:
    """A real Envoy accepts what random policies become (``envoy --mode validate``), three scenarios'
    worth of policies on three pods of one node at a time. In the default outbound layout only: the
    policies become the inbound side's RBAC, the same in both layouts (tests/translators/
    test_envoy_accepts.py validates every policy case in each)."""
    docs = list(BASE[:2])
    for n, (policies, peer_auths) in enumerate(batch):
        namespace = f"mesh{n}"
        docs.append({**BASE[1], "metadata": {"name": namespace, "labels": {"istio.io/dataplane-mode": "ambient"}}})
        pod = json.loads(json.dumps(BASE[2]))
        pod["metadata"]["namespace"] = namespace
        pod["status"]["podIP"] = f"10.1.1.{20 + n}"
        docs.append(pod)
        for doc in policies + peer_auths:
            doc = json.loads(json.dumps(doc))
            if doc["metadata"]["namespace"] == "mesh":
                doc["metadata"]["namespace"] = namespace
            doc["metadata"]["name"] += f"-{n}"
            docs.append(doc)
    store, problems = ObjectStore(), Problems()
    for doc in docs:
        store.put(KIND_CONVERTERS[doc["kind"]](doc))
    resources = translate_node(MeshIndex.build(store.snapshot(), problems), NODE)
    secrets = build_secrets(resources.secrets.values(), IdentityCache(_CA), problems)
    config = json_format.MessageToDict(static_bootstrap(resources, secrets, admin_port=0), preserving_proto_field_name=True)
    result = validate(config)
    assert result.ok, result.output[-3000:]


def test_reference_evaluator_reads_the_documented_examples() -> None:
    """The reference itself, on the documentation's own examples (so the property compares with something)."""
    sleep = ref.Connection(("mesh", "sleep"), "10.1.2.10", 9080)
    other = ref.Connection(("other", "robot"), "10.1.2.10", 9080)
    plain = ref.Connection(None, "10.1.2.10", 9080)
    allow_sleep = {"metadata": {"name": "a", "namespace": "mesh"},
                   "spec": {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/mesh/sa/sleep"]}}]}]}}
    deny_all = {"metadata": {"name": "d", "namespace": "mesh"}, "spec": {"action": "DENY", "rules": [{}]}}
    allow_nothing = {"metadata": {"name": "n", "namespace": "mesh"}, "spec": {}}
    assert ref.admitted([], [], DEST, plain)  # no policy: everything flows
    assert ref.admitted([allow_sleep], [], DEST, sleep) and not ref.admitted([allow_sleep], [], DEST, other)
    assert not ref.admitted([allow_sleep, deny_all], [], DEST, sleep)  # DENY before ALLOW
    assert not ref.admitted([allow_nothing], [], DEST, sleep)  # spec: {} allows nothing
    strict = {"metadata": {"name": "s", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}
    assert not ref.admitted([], [strict], DEST, plain) and ref.admitted([], [strict], DEST, sleep)
