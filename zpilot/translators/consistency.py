"""Is one node's config whole? Checked before it is cached, so Envoy is never sent what it refuses.

Envoy refuses a listener update outright when two filter chains share a name, when a matcher
names a chain the listener lacks, or when two chains match the same connections; and it rejects
the whole LDS response with it, so one bad Service took the outbound listener from every node.
References that do not resolve are no better: a cluster whose endpoints never come stays
warming, a listener whose secret never comes never listens, a tcp_proxy to a missing cluster
resets every connection. Like go-control-plane's ``Snapshot.Consistent``, this looks at the
resources alone (no model, no I/O): it is the net under every translator, present and future.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Iterable, Iterator

from google.protobuf import wrappers_pb2
from xds.type.matcher.v3 import ip_pb2, matcher_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from ..model.problems import clip
from .resources import NodeResources

#: How many findings one error message lists (the rest are counted).
SHOWN = 5

_TCP_PROXY = tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name
_HCM = http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_TLS_CONTEXTS = {
    tls_pb2.DownstreamTlsContext.DESCRIPTOR.full_name: tls_pb2.DownstreamTlsContext,
    tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name: tls_pb2.UpstreamTlsContext,
}
_INTERNAL_UPSTREAM = internal_upstream_pb2.InternalUpstreamTransport.DESCRIPTOR.full_name
_IP_MATCHER = ip_pb2.IPMatcher.DESCRIPTOR.full_name


class InconsistentResources(ValueError):
    """The node's config would be refused by Envoy, or names something it does not contain."""

    def __init__(self, node: str, findings: list[str]) -> None:
        self.node = node
        self.findings = findings
        shown = "; ".join(findings[:SHOWN])
        more = f" (and {len(findings) - SHOWN} more)" if len(findings) > SHOWN else ""
        super().__init__(f"node {node}: {shown}{more}")


def check(resources: NodeResources) -> None:
    """Raise :class:`InconsistentResources` listing every finding of :func:`findings`."""
    found = findings(resources)
    if found:
        raise InconsistentResources(resources.node, found)


def findings(resources: NodeResources) -> list[str]:
    """Everything wrong with ``resources``, each naming the resource (empty when consistent)."""
    out: list[str] = []
    out.extend(_misfiled(resources))
    internal = {name for name, lis in resources.listeners.items() if lis.HasField("internal_listener")}
    addresses: dict[tuple[str, int], str] = {}
    for name, listener in resources.listeners.items():
        where = f"listener {_q(name)}"
        if listener.HasField("address") and listener.address.HasField("socket_address"):
            sa = listener.address.socket_address
            other = addresses.setdefault((sa.address, sa.port_value), name)
            if other != name:
                out.append(f"{where} binds {sa.address}:{sa.port_value} like listener {_q(other)}")
        out.extend(_chain_findings(where, listener, resources))
    for name, cluster in resources.clusters.items():
        where = f"cluster {_q(name)}"
        if cluster.type == cluster_pb2.Cluster.EDS and name not in resources.endpoints:
            out.append(f"{where} has no endpoints resource (it would stay warming)")
        for secret in _cluster_secrets(cluster):
            if secret not in resources.secrets:
                out.append(f"{where} uses secret {_q(secret)}, which is not served")
    assignments = [(f"cluster {_q(n)} names", c.load_assignment) for n, c in resources.clusters.items()]
    assignments += [(f"endpoints {_q(n)} name", a) for n, a in resources.endpoints.items()]
    for where, assignment in assignments:
        for group in assignment.endpoints:
            for lb in group.lb_endpoints:
                address = lb.endpoint.address
                if address.HasField("envoy_internal_address"):
                    target = address.envoy_internal_address.server_listener_name
                    if target not in internal:
                        out.append(f"{where} internal listener {_q(target)}, which does not exist")
    return out


def _q(name: str) -> str:
    return repr(clip(name, 200))


def _misfiled(resources: NodeResources) -> Iterator[str]:
    """Each resource must be stored under its own name (the cache keys and Envoy's names agree)."""
    for kind, items, attr in (
        ("listener", resources.listeners, "name"),
        ("cluster", resources.clusters, "name"),
        ("endpoints", resources.endpoints, "cluster_name"),
        ("secret", resources.secrets, "name"),
    ):
        for key, message in items.items():
            actual = getattr(message, attr)
            if not key or actual != key:
                yield f"{kind} stored as {_q(key)} is named {_q(actual)}"


def _chain_findings(where: str, listener: listener_pb2.Listener, resources: NodeResources) -> Iterator[str]:
    chains = list(listener.filter_chains)
    named = Counter(c.name for c in chains if c.name)
    for name, count in sorted(named.items()):
        if count > 1:
            yield f"{where} has {count} filter chains named {_q(name)}"
    if listener.HasField("filter_chain_matcher"):
        for target in sorted(_matcher_targets(listener.filter_chain_matcher)):
            if target not in named:
                yield f"{where}'s filter chain matcher selects chain {_q(target)}, which does not exist"
    else:
        matches = Counter(_match_key(c.filter_chain_match) for c in chains)
        for key, count in matches.items():
            if count > 1:
                yield f"{where} has {count} filter chains matching the same connections ({key[:120]})"
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        chain_where = f"{where} chain {_q(chain.name)}" if chain.name else where
        for cluster in _chain_clusters(chain):
            if cluster not in resources.clusters:
                yield f"{chain_where} sends to cluster {_q(cluster)}, which does not exist"
        for secret in _socket_secrets(chain.transport_socket) if chain.HasField("transport_socket") else ():
            if secret not in resources.secrets:
                yield f"{chain_where} uses secret {_q(secret)}, which is not served"


def _matcher_targets(root: matcher_pb2.Matcher) -> set[str]:
    """The chain names a filter_chain_matcher's actions select (iteratively: trees can be large)."""
    actions: set[bytes] = set()  # the serialized StringValue of each action (most are repeated)
    stack = [root]
    while stack:
        matcher = stack.pop()
        on_matches: list[matcher_pb2.Matcher.OnMatch] = []
        if matcher.HasField("on_no_match"):
            on_matches.append(matcher.on_no_match)
        kind = matcher.WhichOneof("matcher_type")
        if kind == "matcher_tree":
            tree = matcher.matcher_tree
            tree_kind = tree.WhichOneof("tree_type")
            if tree_kind in ("exact_match_map", "prefix_match_map"):
                on_matches.extend(getattr(tree, tree_kind).map.values())
            elif tree_kind == "custom_match" and tree.custom_match.typed_config.type_url.endswith("/" + _IP_MATCHER):
                ranges = ip_pb2.IPMatcher.FromString(tree.custom_match.typed_config.value)
                on_matches.extend(r.on_match for r in ranges.range_matchers)
        elif kind == "matcher_list":
            on_matches.extend(m.on_match for m in matcher.matcher_list.matchers)
        for on_match in on_matches:
            which = on_match.WhichOneof("on_match")
            if which == "matcher":
                stack.append(on_match.matcher)
            elif which == "action":
                actions.add(on_match.action.typed_config.value)
    return {wrappers_pb2.StringValue.FromString(value).value for value in actions}


def _match_key(match: listener_components_pb2.FilterChainMatch) -> str:
    """What a chain matches, with CIDRs in canonical form (10.0.0.1/24 and 10.0.0.0/24 are one range)."""
    key = listener_components_pb2.FilterChainMatch()
    key.CopyFrom(match)
    for ranges in (key.prefix_ranges, key.source_prefix_ranges, key.direct_source_prefix_ranges):
        for cidr in ranges:
            length = cidr.prefix_len.value if cidr.HasField("prefix_len") else None
            try:
                network = ipaddress.ip_network(
                    cidr.address_prefix if length is None else f"{cidr.address_prefix}/{length}", strict=False
                )
            except ValueError:
                continue  # Envoy reports an invalid range itself
            cidr.address_prefix = str(network.network_address)
            cidr.prefix_len.value = network.prefixlen
    return str(key).replace("\n", " ").strip() or "any"


def _chain_clusters(chain: listener_components_pb2.FilterChain) -> Iterator[str]:
    for network_filter in chain.filters:
        type_name = network_filter.typed_config.type_url.rpartition("/")[2]
        if type_name == _TCP_PROXY:
            proxy = tcp_proxy_pb2.TcpProxy.FromString(network_filter.typed_config.value)
            if proxy.cluster:
                yield proxy.cluster
            yield from (w.name for w in proxy.weighted_clusters.clusters)
        elif type_name == _HCM:
            manager = http_connection_manager_pb2.HttpConnectionManager.FromString(network_filter.typed_config.value)
            for host in manager.route_config.virtual_hosts:
                for route in host.routes:
                    if route.route.cluster:
                        yield route.route.cluster
                    yield from (w.name for w in route.route.weighted_clusters.clusters)


def _socket_secrets(socket: base_pb2.TransportSocket) -> Iterator[str]:
    """SDS names a transport socket uses, looking through internal_upstream's wrapped socket."""
    type_name = socket.typed_config.type_url.rpartition("/")[2]
    context_type = _TLS_CONTEXTS.get(type_name)
    if context_type is not None:
        common = context_type.FromString(socket.typed_config.value).common_tls_context
        yield from (s.name for s in common.tls_certificate_sds_secret_configs)
        if common.HasField("validation_context_sds_secret_config"):
            yield common.validation_context_sds_secret_config.name
        combined = common.combined_validation_context
        if combined.HasField("validation_context_sds_secret_config"):
            yield combined.validation_context_sds_secret_config.name
    elif type_name == _INTERNAL_UPSTREAM:
        inner = internal_upstream_pb2.InternalUpstreamTransport.FromString(socket.typed_config.value)
        if inner.HasField("transport_socket"):
            yield from _socket_secrets(inner.transport_socket)


def _cluster_secrets(cluster: cluster_pb2.Cluster) -> Iterable[str]:
    sockets = [m.transport_socket for m in cluster.transport_socket_matches]
    if cluster.HasField("transport_socket"):
        sockets.append(cluster.transport_socket)
    return [secret for socket in sockets for secret in _socket_secrets(socket)]
