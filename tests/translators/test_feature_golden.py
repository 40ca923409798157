"""Per-feature goldens: ``testdata/features/<case>/in.yaml`` -> ``out/<translator>.<type>.yaml``.

The whole-node dumps (``test_golden.py``) catch any change but are thousands of lines; these are
for reading. Each case is the smallest cluster showing one feature, and each output file is what
one translator module (``zpilot/translators/<translator>.py``) makes of it for one node, one Envoy
type per file, as YAML of the protojson form (fields in .proto order, map keys sorted), plus
the problems the case reports. ``CASES`` says which files a case has: a golden that is missing, or
one no case produces, fails. Regenerate with ``ZPILOT_UPDATE_GOLDEN=1`` and review the diff.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from google.protobuf import json_format, symbol_database
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from zpilot import contract
from zpilot.certs.secrets import redact_secret
from zpilot.translators import identity_pinning, inbound_guard, names, rbac, source_address
from zpilot.translators.bootstrap import BootstrapOptions, bootstrap, with_missing_fields
from zpilot.translators.context import NodeView, TranslateOptions
from zpilot.translators.inbound import inbound_listener, inbound_plaintext_listener
from zpilot.translators.filter_state import record_addresses_filter
from zpilot.translators.outbound_article import article_layout
from zpilot.translators.layout import add_outbound
from zpilot.translators.resources import NodeResources
from zpilot.translators.static import rewrite, static_bootstrap
from zpilot.translators.tcp_proxy import TCP_PROXY
from zpilot.translators.tls import TLS_SOCKET

from .render_util import UPDATE_GOLDEN, Rendered, blank_secret, golden, render_node

FEATURES = Path(__file__).parent / "testdata" / "features"
#: Every case is seen from this node's ztunnel.
NODE = "node-1"
XDS = "zpilot.istio-system.svc:15010"

#: case -> its golden files, "<translator>.<type>" (each a key of OUTPUTS)
CASES: dict[str, tuple[str, ...]] = {
    "outbound-service-vip": (
        "outbound_article.listeners",
        "outbound_article.clusters",
        "outbound_article.endpoints",
        "matcher.filter_chain_matcher",
        "tcp_proxy.filters",
        "limits.circuit_breakers",
        "outbound_linear.listeners",
        "outbound_linear.clusters",
        "outbound_linear.endpoints",
        "filter_state.listener_filters",
    ),
    "outbound-same-node": ("matcher.filter_chain_matcher", "endpoints.endpoints", "outbound_article.endpoints",
                           "outbound_linear.listeners"),
    "multi-port-service": ("matcher.filter_chain_matcher", "outbound_article.clusters", "outbound_linear.clusters"),
    "named-target-port": ("endpoints.endpoints",),
    "non-mesh-pod": ("endpoints.endpoints", "matcher.filter_chain_matcher", "inbound.listeners"),
    "pod-without-ip": ("inbound.listeners",),
    "inbound-local-pods": ("inbound.listeners",),
    "empty-node": ("clusters.clusters", "inbound.listeners", "matcher.filter_chain_matcher", "outbound_linear.listeners"),
    "identities-and-secrets": ("clusters.clusters", "tls.transport_sockets", "tls.secrets"),
    "identities-and-secrets-article": ("clusters.clusters", "tls.transport_sockets", "tls.secrets"),
    "inbound-guard": ("inbound_guard.filters",),
    "identity-pinning": ("identity_pinning.filters", "outbound_article.endpoints", "outbound_linear.clusters",
                         "outbound_linear.endpoints"),
    "pod-select": ("pod_select.listeners", "pod_select.clusters", "pod_select.endpoints"),
    "bootstrap": ("bootstrap.bootstrap",),
    "static-bootstrap": ("static.bootstrap",),
    "selectorless-service": ("endpoints.endpoints", "matcher.filter_chain_matcher"),
    "service-without-endpoints": ("matcher.filter_chain_matcher", "outbound_article.endpoints"),
    "host-network-endpoint": ("endpoints.endpoints",),
    "endpoint-conditions": ("endpoints.endpoints", "matcher.filter_chain_matcher"),
    "localities": ("endpoints.endpoints",),
    "source-address": ("source_address.filters",),
    # L4 policy, one row of Istio's semantics each (httpbin on node-1 is the destination)
    "policy-none": ("rbac.connect_filters", "rbac.plaintext_filters", "inbound.listeners"),
    **{
        case: ("rbac.connect_filters", "rbac.plaintext_filters")
        for case in (
            "policy-allow", "policy-deny-before-allow", "policy-allow-nothing", "policy-allow-everything",
            "policy-not-fields", "policy-l7-fail-closed", "policy-ports-vs-notports", "policy-root-namespace",
            "policy-when-conditions", "policy-source-ip", "peer-authentication-strict",
            "peer-authentication-port-strict", "policy-unsupported",
        )
    },
}


# -- what each translator makes of a case ----------------------------------------------------


#: A case translated with other options than the defaults (the default layout): its outputs are that
#: layout's whole node (its outbound half alone: ``outbound_<layout>.*``, which each layout's view makes).
CASE_OPTIONS: dict[str, TranslateOptions] = {
    "identities-and-secrets-article": TranslateOptions(layout=contract.ARTICLE_LAYOUT),
}


@dataclass(frozen=True)
class Translated:
    rendered: Rendered  # the whole node, through translate_node
    options: TranslateOptions = TranslateOptions()

    @property
    def view(self) -> NodeView:
        return NodeView.of(self.rendered.index, NODE, self.options)

    def article(self) -> NodeResources:
        """The article's outbound layout's resources alone (with its per-pod secret names)."""
        out = NodeResources(node=NODE)
        article_layout(NodeView.of(self.rendered.index, NODE, TranslateOptions(layout=contract.ARTICLE_LAYOUT)), out)
        return out

    def linear(self) -> NodeResources:
        """The linear outbound layout's resources alone."""
        out = NodeResources(node=NODE)
        add_outbound("linear", self.view, out)
        return out


def resources(items: dict[str, Message] | list[Message]) -> list[dict[str, Any]]:
    """Resources of one type (from a dict: in name order)."""
    messages = [items[k] for k in sorted(items)] if isinstance(items, dict) else list(items)
    return [to_data(m) for m in messages]


def tls_transport_sockets(t: Translated) -> list[dict[str, Any]]:
    """Every TLS transport socket of the node, and where it sits."""
    found: list[dict[str, Any]] = []
    node = t.rendered.resources
    for name, cluster in sorted(node.clusters.items()):
        if cluster.transport_socket.name == TLS_SOCKET:
            found.append({"cluster": name, "transport_socket": to_data(cluster.transport_socket)})
    for name, listener in sorted(node.listeners.items()):
        for chain in listener.filter_chains:
            if chain.transport_socket.name == TLS_SOCKET:
                found.append({"listener": name, "chain": chain.name, "transport_socket": to_data(chain.transport_socket)})
    return found


def sds_references(t: Translated) -> list[dict[str, Any]]:
    """The secrets the node is sent over SDS, the identity each carries, and what references it."""
    node = t.rendered.resources
    referrers: dict[str, set[str]] = {}
    for kind, items in (("cluster", node.clusters), ("listener", node.listeners)):
        for name, resource in items.items():

            def note(m: Message, where: str = f"{kind} {name}") -> None:
                if isinstance(m, secret_pb2.SdsSecretConfig):
                    referrers.setdefault(m.name, set()).add(where)

            rewrite(resource, note)
    assert set(referrers) <= set(node.secrets), "a TLS context names a secret the node is not sent"
    return [
        {"name": ref.name, "spiffe_id": ref.spiffe_id, "referenced_by": sorted(referrers.get(ref.name, ()))}
        for ref in sorted(node.secrets.values(), key=lambda r: r.name)
    ]


def tcp_proxy_filters(t: Translated) -> list[dict[str, Any]]:
    """Every tcp_proxy filter of the node's listeners, and the listener and filter chain it is in."""
    found: list[dict[str, Any]] = []
    for name, listener in sorted(t.rendered.resources.listeners.items()):
        chains = [(chain.name, chain) for chain in listener.filter_chains]
        if listener.HasField("default_filter_chain"):
            chains.append((f"{listener.default_filter_chain.name} (default)", listener.default_filter_chain))
        for chain_name, chain in chains:
            for f in chain.filters:
                if f.name == TCP_PROXY:
                    found.append({"listener": name, "chain": chain_name, "tcp_proxy": to_data(f.typed_config)})
    return found


def inbound_guards(t: Translated) -> list[dict[str, Any]]:
    """The inbound guard where it sits: each 15008 chain's CONNECT HTTP filters, in order (the
    guard before the router), and the 15006 listener's chain matcher and refusing chain."""
    node = t.rendered.resources
    found: list[dict[str, Any]] = []
    for chain in node.listeners[contract.INBOUND_LISTENER].filter_chains:
        for f in chain.filters:
            if f.typed_config.type_url.endswith(hcm.HttpConnectionManager.DESCRIPTOR.full_name):
                manager = hcm.HttpConnectionManager()
                f.typed_config.Unpack(manager)
                found.append({"listener": contract.INBOUND_LISTENER, "chain": chain.name,
                              "http_filters": [to_data(h) for h in manager.http_filters]})
    plaintext = node.listeners[contract.INBOUND_PLAINTEXT_LISTENER]
    found.append({
        "listener": contract.INBOUND_PLAINTEXT_LISTENER,
        "filter_chain_matcher": to_data(plaintext.filter_chain_matcher),
        "chains": [to_data(c) for c in plaintext.filter_chains if c.name == inbound_guard.REFUSED_PLAINTEXT_CHAIN],
    })
    return found


def pinning_filters(t: Translated) -> dict[str, list[dict[str, Any]]]:
    """Every filter pinning a tunnel's peer identity, with its chain and the cluster it tunnels
    through, in each layout (the linear layout's pod-IP clusters name the identity in their
    endpoint: outbound_linear.clusters)."""
    return {"article": _pinning_filters(t.article()), "linear": _pinning_filters(t.linear())}


def _pinning_filters(node: NodeResources) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for name, listener in sorted(node.listeners.items()):
        for chain in listener.filter_chains:
            pins = [f for f in chain.filters if f.name == identity_pinning.SET_FILTER_STATE]
            if pins:
                proxy = tcp_proxy_pb2.TcpProxy()
                chain.filters[-1].typed_config.Unpack(proxy)
                found.append({"listener": name, "chain": chain.name, "filters": [to_data(f) for f in pins],
                              "then_tunnel_through": proxy.cluster})
    return found


def circuit_breakers(t: Translated) -> list[dict[str, Any]]:
    """Each cluster's circuit breakers (limits.py): every cluster that carries traffic has them."""
    return [
        {"cluster": name, "circuit_breakers": to_data(cluster.circuit_breakers) if cluster.HasField("circuit_breakers") else None}
        for name, cluster in sorted(t.rendered.resources.clusters.items())
    ]


def policy_filters(t: Translated, make: Callable) -> list[dict[str, Any]]:
    """The authorization filters of each local pod's chain (15008: HTTP RBAC; 15006: network RBAC)."""
    return [
        {"pod": f"{pod.namespace}/{pod.name}", "filters": [to_data(f) for f in make(pod, t.view.policies_for(pod))]}
        for pod in t.view.local_pods
    ]


def source_address_parts(t: Translated) -> list[dict[str, Any]]:
    """What carries the client's address to the destination: filters and CONNECT headers, and where,
    in each outbound layout (the article's needs the network filter; the linear one records the
    address with its listener filter, ``filter_state.*``)."""
    found: list[dict[str, Any]] = []
    for layout, outbound in (("article", t.article()), ("linear", t.linear())):
        for name, listener in sorted(outbound.listeners.items()):
            for chain in listener.filter_chains:
                for f in chain.filters:
                    if f.name == source_address.SET_FILTER_STATE:
                        found.append({"layout": layout, "listener": name, "chain": chain.name, "filter": to_data(f)})
                    elif f.name == TCP_PROXY:
                        proxy = tcp_proxy_pb2.TcpProxy()
                        f.typed_config.Unpack(proxy)
                        headers = [to_data(h) for h in proxy.tunneling_config.headers_to_add
                                   if h.header.key == source_address.FORWARDED_FOR_HEADER]
                        if headers:
                            found.append({"layout": layout, "listener": name, "chain": chain.name,
                                          "tunnel_headers": headers})
    return found


def static_config(t: Translated) -> dict[str, Any]:
    secrets = {name: redact_secret(s) for name, s in t.rendered.secrets.items()}
    data = to_data(static_bootstrap(t.rendered.resources, secrets))
    for secret in data["static_resources"].get("secrets", []):
        blank_secret(secret)
    return data


_POD_SELECT_LISTENERS = (contract.OUTBOUND_LISTENER, names.POD_SELECT_LISTENER, names.MESH_PASSTHROUGH_LISTENER)

OUTPUTS: dict[str, Callable[[Translated], Any]] = {
    "outbound_article.listeners": lambda t: resources(t.article().listeners),
    "outbound_article.clusters": lambda t: resources(t.article().clusters),
    "outbound_article.endpoints": lambda t: resources(t.article().endpoints),
    "matcher.filter_chain_matcher": lambda t: to_data(
        t.article().listeners[contract.OUTBOUND_LISTENER].filter_chain_matcher
    ),
    "outbound_linear.listeners": lambda t: resources(t.linear().listeners),
    "outbound_linear.clusters": lambda t: resources(t.linear().clusters),
    "outbound_linear.endpoints": lambda t: resources(t.linear().endpoints),
    "filter_state.listener_filters": lambda t: resources([record_addresses_filter()]),
    # the linear layout's resources of pod-IP destinations: the outbound listener (its CIDR and stray
    # chains), the internal listeners, the node clusters and their endpoints
    "pod_select.listeners": lambda t: resources(
        [m for n, m in t.linear().listeners.items() if n in _POD_SELECT_LISTENERS]
    ),
    "pod_select.clusters": lambda t: resources(
        [m for n, m in t.linear().clusters.items() if n.startswith(("pods_on_", names.POD_SELECT_CLUSTER, "outbound_pod_internal_to_"))]
    ),
    "pod_select.endpoints": lambda t: resources([m for n, m in t.linear().endpoints.items() if n.startswith("pods_on_")]),
    "inbound.listeners": lambda t: resources([inbound_listener(t.view), inbound_plaintext_listener(t.view)]),
    "clusters.clusters": lambda t: resources(t.rendered.resources.clusters),
    "endpoints.endpoints": lambda t: resources(t.rendered.resources.endpoints),
    "tls.transport_sockets": tls_transport_sockets,
    "tls.secrets": sds_references,
    "tcp_proxy.filters": tcp_proxy_filters,
    "inbound_guard.filters": inbound_guards,
    "identity_pinning.filters": pinning_filters,
    "limits.circuit_breakers": circuit_breakers,
    "bootstrap.bootstrap": lambda t: with_missing_fields(to_data(bootstrap(BootstrapOptions(node=NODE, xds=XDS)))),
    "static.bootstrap": static_config,
    "rbac.connect_filters": lambda t: policy_filters(t, rbac.connect_filters),
    "rbac.plaintext_filters": lambda t: policy_filters(t, rbac.plaintext_filters),
    "source_address.filters": source_address_parts,
}


# -- YAML a reviewer can read ----------------------------------------------------------------

_POOL = symbol_database.Default().pool


def to_data(message: Message) -> Any:
    return _in_field_order(json_format.MessageToDict(message, preserving_proto_field_name=True), message.DESCRIPTOR)


def _in_field_order(data: Any, descriptor: Descriptor) -> Any:
    """Protojson with a message's fields in field-number order (as in the .proto, so a Listener
    starts with its name and a matcher with its input) and map keys sorted (their order is not stable)."""
    if not isinstance(data, dict):  # well-known types with a scalar JSON form: Duration, wrappers...
        return data
    if descriptor.full_name == "google.protobuf.Any":
        inner = _POOL.FindMessageTypeByName(data["@type"].rpartition("/")[2])
        rest = {k: v for k, v in data.items() if k != "@type"}
        return {"@type": data["@type"], **_in_field_order(rest, inner)}
    if descriptor.full_name.startswith("google.protobuf."):  # Struct and friends: maps in disguise
        return _sorted(data)
    fields = descriptor.fields_by_name
    out: dict[str, Any] = {}
    for key in sorted(data, key=lambda k: fields[k].number):
        field, value = fields[key], data[key]
        if field.message_type is None:
            out[key] = value
        elif field.message_type.GetOptions().map_entry:
            value_type = field.message_type.fields_by_name["value"].message_type
            out[key] = {k: _in_field_order(v, value_type) if value_type else v for k, v in sorted(value.items())}
        elif isinstance(value, list):
            out[key] = [_in_field_order(v, field.message_type) for v in value]
        else:
            out[key] = _in_field_order(value, field.message_type)
    return out


def _sorted(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _sorted(data[k]) for k in sorted(data)}
    if isinstance(data, list):
        return [_sorted(v) for v in data]
    return data


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=10_000, allow_unicode=True)


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case,output", [(case, output) for case, outputs in CASES.items() for output in outputs])
def test_translator_output_matches_golden(case: str, output: str) -> None:
    options = CASE_OPTIONS.get(case, TranslateOptions())
    translated = Translated(render_node(FEATURES / case / "in.yaml", NODE, options), options)
    actual = to_yaml(OUTPUTS[output](translated))
    assert "PRIVATE KEY" not in actual, "key material in a golden"
    path = FEATURES / case / "out" / f"{output}.yaml"
    assert actual == golden(path, actual), f"{output} of {case} differs from {path} ({UPDATE_GOLDEN}=1 to accept)"


@pytest.mark.parametrize("case", list(CASES))
def test_problems_match_golden(case: str) -> None:
    """Each case's problems: none for most, the skipped objects (and why) for the edge cases."""
    rendered = render_node(FEATURES / case / "in.yaml", NODE)
    actual = "".join(f"{p}\n" for p in rendered.problems).replace(str(FEATURES / case), "<case>")
    assert actual == golden(FEATURES / case / "out" / "problems.txt", actual)


def test_every_case_and_golden_is_listed() -> None:
    """No case directory without an entry in CASES, and no golden file that no case produces
    (left behind by a rename, it would look reviewed while nothing checks it)."""
    assert sorted(p.name for p in FEATURES.iterdir() if p.is_dir()) == sorted(CASES)
    for case, outputs in CASES.items():
        expected = {f"{o}.yaml" for o in outputs} | {"problems.txt"}
        out = FEATURES / case / "out"
        present = {p.name for p in out.iterdir()} if out.is_dir() else set()
        stale = present - expected
        if stale and os.environ.get(UPDATE_GOLDEN):
            for name in stale:
                (out / name).unlink()
            stale = set()
        assert not stale, f"{case}: goldens no case produces: {sorted(stale)}"
        assert set(outputs) <= set(OUTPUTS), f"{case}: unknown outputs {set(outputs) - set(OUTPUTS)}"


def test_every_translator_has_a_case() -> None:
    """Each translator module that makes resources is shown by at least one case."""
    shown = {output.split(".")[0] for outputs in CASES.values() for output in outputs}
    modules = {p.stem for p in Path(names.__file__).parent.glob("*.py")}
    helpers = {"__init__", "context", "envoy_common", "layout", "names", "resources", "consistency"}  # consistency checks, makes nothing
    # what incremental generation adds: inputs, the memo, options, and the whole node (the node goldens show it)
    helpers |= {"fragments", "incremental", "inputs", "node", "options"}
    assert modules - helpers <= shown, f"translators without a feature golden: {sorted(modules - helpers - shown)}"
