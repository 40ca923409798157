"""Reading a node's translated Envoy resources the way Envoy would use them for one connection:
which filter chain the listener picks, what its tcp_proxy does, which endpoints a cluster has
and which identity a TLS context presents and accepts."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from google.protobuf import wrappers_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.listener.v3.listener_components_pb2 import FilterChain
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf.json_format import MessageToDict
from xds.type.matcher.v3 import ip_pb2

from ..translators.filter_state import UPSTREAM_ADDRESS_STATE
from ..translators.identity_pinning import UPSTREAM_SANS
from ..translators.resources import NodeResources

_INPUTS = {
    network_inputs_pb2.DestinationPortInput.DESCRIPTOR.full_name: "dport",
    network_inputs_pb2.SourceIPInput.DESCRIPTOR.full_name: "src",
    network_inputs_pb2.DestinationIPInput.DESCRIPTOR.full_name: "dst",
}


@dataclass(frozen=True)
class Connection:
    """What a listener's matcher looks at."""

    src: str
    dst: str
    dport: int


@dataclass(frozen=True)
class MatchStep:
    input: str  # "dport" | "src" | "dst"
    value: str
    matched: bool  # False: the map had no such key and on_no_match was taken


def _unpack(any_msg, cls):
    msg = cls()
    any_msg.Unpack(msg)
    return msg


def select_chain(listener: listener_pb2.Listener, conn: Connection) -> tuple[FilterChain | None, list[MatchStep]]:
    """The chain ``listener`` gives ``conn``: by ``filter_chain_matcher`` if it has one (a nested
    map that finds nothing falls back to the enclosing ``on_no_match``), else by destination
    prefix ranges, else the default chain."""
    steps: list[MatchStep] = []
    if listener.HasField("filter_chain_matcher"):
        name = _evaluate(listener.filter_chain_matcher, conn, steps)
        chain = next((c for c in listener.filter_chains if c.name == name), None) if name else None
        if chain is None and name is None and listener.HasField("default_filter_chain"):
            chain = listener.default_filter_chain
        return chain, steps
    best: tuple[int, FilterChain] | None = None
    for chain in listener.filter_chains:
        for cidr in chain.filter_chain_match.prefix_ranges:
            net = ipaddress.ip_network(f"{cidr.address_prefix}/{cidr.prefix_len.value}", strict=False)
            if ipaddress.ip_address(conn.dst) in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, chain)
    if best is not None:
        steps.append(MatchStep("dst", conn.dst, True))
        return best[1], steps
    steps.append(MatchStep("dst", conn.dst, False))
    return (listener.default_filter_chain if listener.HasField("default_filter_chain") else None), steps


def _evaluate(matcher, conn: Connection, steps: list[MatchStep]) -> str | None:
    if matcher.HasField("matcher_list"):  # the first predicate that holds wins (regexes: RE2 full match)
        for field in matcher.matcher_list.matchers:
            single = field.predicate.single_predicate
            key = _INPUTS[single.input.typed_config.type_url.rpartition("/")[2]]
            value = str(getattr(conn, key))
            matched = re.fullmatch(single.value_match.safe_regex.regex, value) is not None
            steps.append(MatchStep(key, value, matched))
            if matched:
                found = _on_match(field.on_match, conn, steps)
                if found is not None:
                    return found
    else:
        tree = matcher.matcher_tree
        key = _INPUTS[tree.input.typed_config.type_url.rpartition("/")[2]]
        value = str(getattr(conn, key))
        if tree.HasField("custom_match"):  # an IP range matcher: one outcome for a set of ranges
            on_match = _in_ranges(tree.custom_match, value)
            steps.append(MatchStep(f"{key} in ranges", value, on_match is not None))
        else:
            on_match = tree.exact_match_map.map.get(value)
            steps.append(MatchStep(key, value, on_match is not None))
        if on_match is not None:
            found = _on_match(on_match, conn, steps)
            if found is not None:
                return found
    if matcher.HasField("on_no_match"):
        return _on_match(matcher.on_no_match, conn, steps)
    return None


def _in_ranges(custom_match, value: str):
    """The on_match of the most specific range of an ``xds.type.matcher.v3.IPMatcher`` holding ``value``."""
    ranges = _unpack(custom_match.typed_config, ip_pb2.IPMatcher)
    address = ipaddress.ip_address(value)
    best = None
    for range_matcher in ranges.range_matchers:
        for cidr in range_matcher.ranges:
            net = ipaddress.ip_network(f"{cidr.address_prefix}/{cidr.prefix_len.value}", strict=False)
            if address in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, range_matcher.on_match)
    return best[1] if best else None


def _on_match(on_match, conn: Connection, steps: list[MatchStep]) -> str | None:
    if on_match.HasField("action"):
        return _unpack(on_match.action.typed_config, wrappers_pb2.StringValue).value
    return _evaluate(on_match.matcher, conn, steps)


def tcp_proxy(chain: FilterChain) -> tcp_proxy_pb2.TcpProxy | None:
    for f in chain.filters:
        if f.typed_config.type_url.endswith(tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name):
            return _unpack(f.typed_config, tcp_proxy_pb2.TcpProxy)
    return None


def connect_route_cluster(chain: FilterChain) -> str | None:
    """The cluster an HTTP connection manager sends CONNECT requests to."""
    for f in chain.filters:
        if f.typed_config.type_url.endswith(hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name):
            manager = _unpack(f.typed_config, hcm_pb2.HttpConnectionManager)
            for vhost in manager.route_config.virtual_hosts:
                for r in vhost.routes:
                    if r.match.HasField("connect_matcher"):
                        return r.route.cluster
    return None


def rbac_principals(chain: FilterChain) -> list[str]:
    """The network RBAC filters' principal matchers, in words (what the receiving ztunnel allows)."""
    out = []
    for f in chain.filters:
        if f.typed_config.type_url.endswith(rbac_pb2.RBAC.DESCRIPTOR.full_name):
            rules = _unpack(f.typed_config, rbac_pb2.RBAC).rules
            for name, policy in sorted(rules.policies.items()):
                for p in policy.principals:
                    if p.HasField("authenticated"):
                        matcher = p.authenticated.principal_name
                        who = f"principal ~ {matcher.safe_regex.regex or matcher.exact}"
                    else:
                        who = "any peer" if p.any else "some peers"
                    out.append(f"{rbac_config.RBAC.Action.Name(rules.action)} {name}: {who}")
    return out


def pinned_identity(chain: FilterChain) -> str | None:
    """The identity (or the format naming it) a chain pins for its tunnel's TLS peer, if any
    (translators/identity_pinning.py)."""
    for f in chain.filters:
        if f.typed_config.type_url.endswith(set_filter_state_pb2.Config.DESCRIPTOR.full_name):
            for value in _unpack(f.typed_config, set_filter_state_pb2.Config).on_new_connection:
                if value.object_key == UPSTREAM_SANS:
                    return value.format_string.text_format_source.inline_string.replace("%%", "%")
    return None


def upstream_address(chain: FilterChain) -> str | None:
    """The format of the address a chain gives its ORIGINAL_DST cluster in filter state, if it does
    (the linear layout's tunnel chains: translators/filter_state.py)."""
    for f in chain.filters:
        if f.typed_config.type_url.endswith(set_filter_state_pb2.Config.DESCRIPTOR.full_name):
            for value in _unpack(f.typed_config, set_filter_state_pb2.Config).on_new_connection:
                if value.object_key == UPSTREAM_ADDRESS_STATE:
                    return value.format_string.text_format_source.inline_string
    return None


@dataclass(frozen=True)
class TlsFacts:
    certificate: str  # SDS secret name presented
    trust: str  # SDS secret name validating the peer
    peer_san_patterns: tuple[str, ...]
    require_client_certificate: bool = False


def tls_facts(transport_socket) -> TlsFacts | None:
    if not transport_socket.name.endswith("tls"):
        return None
    type_name = transport_socket.typed_config.type_url.rpartition("/")[2]
    downstream = type_name.endswith("DownstreamTlsContext")
    ctx = _unpack(transport_socket.typed_config,
                  tls_pb2.DownstreamTlsContext if downstream else tls_pb2.UpstreamTlsContext)
    common = ctx.common_tls_context
    combined = common.combined_validation_context
    patterns = tuple(m.matcher.safe_regex.regex or m.matcher.exact
                     for m in combined.default_validation_context.match_typed_subject_alt_names)
    return TlsFacts(
        certificate=common.tls_certificate_sds_secret_configs[0].name if common.tls_certificate_sds_secret_configs else "",
        trust=combined.validation_context_sds_secret_config.name,
        peer_san_patterns=patterns,
        require_client_certificate=downstream and ctx.require_client_certificate.value,
    )


@dataclass(frozen=True)
class EndpointFacts:
    address: str  # "ip:port", or "envoy://<internal listener>/<endpoint id>"
    internal_listener: str | None
    #: The endpoint's metadata, and where it has none of a namespace its cluster's internal_upstream
    #: socket hands on from the cluster's metadata, the cluster's: what an internal listener gets.
    metadata: dict


def endpoints(resources: NodeResources, cluster_name: str) -> list[EndpointFacts]:
    """An EDS cluster's endpoints, or a static cluster's own."""
    cla = resources.endpoints.get(cluster_name)
    cluster = resources.clusters.get(cluster_name)
    if cla is None and cluster is not None:
        cla = cluster.load_assignment
    if cla is None:
        return []
    from_cluster = _passed_from_cluster(cluster) if cluster is not None else {}
    out = []
    for group in cla.endpoints:
        for lb in group.lb_endpoints:
            addr = lb.endpoint.address
            metadata = {**from_cluster, **{k: MessageToDict(v) for k, v in lb.metadata.filter_metadata.items()}}
            if addr.HasField("envoy_internal_address"):
                internal = addr.envoy_internal_address
                out.append(EndpointFacts(f"envoy://{internal.server_listener_name}/{internal.endpoint_id}",
                                         internal.server_listener_name, metadata))
            else:
                sa = addr.socket_address
                out.append(EndpointFacts(f"{sa.address}:{sa.port_value}", None, metadata))
    return out


def _passed_from_cluster(cluster: cluster_pb2.Cluster) -> dict:
    """The namespaces of the cluster's own metadata its ``internal_upstream`` socket (the cluster's
    ``transport_socket``) hands on to an internal listener: Envoy copies them before the
    endpoint's, so an endpoint's namespace of the same name replaces one."""
    socket = cluster.transport_socket
    if not socket.typed_config.type_url.endswith("/" + internal_upstream_pb2.InternalUpstreamTransport.DESCRIPTOR.full_name):
        return {}
    transport = _unpack(socket.typed_config, internal_upstream_pb2.InternalUpstreamTransport)
    return {
        source.name: MessageToDict(cluster.metadata.filter_metadata[source.name])
        for source in transport.passthrough_metadata
        if source.kind.HasField("cluster") and source.name in cluster.metadata.filter_metadata
    }


def cluster_kind(c: cluster_pb2.Cluster) -> str:
    return cluster_pb2.Cluster.DiscoveryType.Name(c.type)


def substitute(template: str, values: dict[str, str]) -> str:
    """Envoy's substitution formatters the translators use, filled with known values."""
    out = template
    for key, value in values.items():
        out = out.replace(f"%{key}%", value)
    return out
