"""The article's outbound layout, on stock Envoy.

The outbound listener picks a chain by destination port, then source pod IP, then destination IP
(and, for a service VIP, port):

    DestinationPort{PORT_OUTBOUND -> BlackHoleCluster}
      -> SourceIP{local meshed pod -> DestinationIP{VIP -> DestinationPort{port -> service chain},
                                                   meshed pod IP -> pod chain}}
      -> PassthroughFilterChain

A service chain ``<spiffe>_to_<port>_<fqdn>_outbound_internal`` proxies to the EDS cluster of the
same name; its mesh endpoints are the identity's internal listener (``contract.tunnel_listener``), whose
tcp_proxy opens the HTTP/2 CONNECT tunnel through ``outbound_tunnel_clus_<spiffe>``, after pinning
the endpoint's identity. A pod chain ``fc-outbound_pod[_local]_tunnel_clus_<spiffe>_to_<peer>``,
one per destination identity, pins ``<peer>`` and tunnels straight from the outbound listener
through ``outbound_pod[_local]_tunnel_clus_<spiffe>`` (identity_pinning.py).
Only VIP:ports with an endpoint for this node are captured (:meth:`NodeView.served_vips`); the
others pass through to kube-proxy.
"""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.listener.v3.listener_components_pb2 import FilterChain

from .. import contract
from . import clusters, endpoints, identity_pinning, matcher, names
from .context import LocalIdentity, NodeView, ServedVip
from .inputs import MeshInput, ServicePortInput
from .envoy_common import (
    access_log,
    original_dst_filter,
    original_src_filter,
    socket_address,
    socket_mark,
)
from .layout import register
from .limits import DataPathLimits, idle_timeout
from .resources import NodeResources
from .source_address import FORWARDED_FOR, keep_client_address
from .tcp_proxy import proxy_chain, tcp_proxy

Listener = listener_pb2.Listener
#: The tunnel's CONNECT authority on the outbound listener itself (pod-IP destinations): the
#: original destination. (On the internal listener: ``contract.TUNNEL_DESTINATION_FORMAT``.)
DOWNSTREAM_DESTINATION = "%DOWNSTREAM_LOCAL_ADDRESS%"


@register(contract.ARTICLE_LAYOUT)
def article_layout(view: NodeView, out: NodeResources) -> None:
    outbound = _outbound_listener(view)
    out.listeners[outbound.name] = outbound
    for identity in view.identities:
        _identity_resources(view, identity, out)
    served = view.served_vips()
    _service_resources(view, served, outbound, out)
    outbound.filter_chain_matcher.CopyFrom(_matcher(view))


def _outbound_listener(view: NodeView) -> Listener:
    listener = Listener(
        name=contract.OUTBOUND_LISTENER,
        address=socket_address(view.options.bind_address, contract.PORT_OUTBOUND),
        transparent=wrappers_pb2.BoolValue(value=True),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        listener_filters=[original_dst_filter(), original_src_filter()],
        socket_options=[
            socket_mark(contract.OUTBOUND_SOCKET_MARK, "Set socket mark to packets coming back from outbound listener")
        ],
        access_log=[access_log(contract.OUTBOUND_LISTENER)],
    )
    idle = idle_timeout(view.options.limits)
    listener.filter_chains.extend(
        [
            proxy_chain(names.PASSTHROUGH_CHAIN, names.PASSTHROUGH_CLUSTER, idle_timeout=idle),
            proxy_chain(names.BLACKHOLE_CHAIN, names.BLACKHOLE_CLUSTER, idle_timeout=idle),
        ]
    )
    return listener


def _tunnel_listener(sid: str, limits: DataPathLimits) -> Listener:
    """The identity's internal listener: its one chain opens the CONNECT tunnel."""
    tunnel_listener = Listener(
        name=contract.tunnel_listener(sid),
        use_original_dst=wrappers_pb2.BoolValue(value=False),
        listener_filters=[original_dst_filter()],
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    identity_pinning.pin_from_endpoint(),
                    tcp_proxy(
                        names.tunnel_cluster(sid),
                        idle_timeout=idle_timeout(limits),
                        stat_prefix=contract.tunnel_listener(sid),
                        log_site=contract.tunnel_listener(sid),
                        tunnel_target=contract.TUNNEL_DESTINATION_FORMAT,
                        tunnel_headers=(FORWARDED_FOR,),  # the client pod, for source.ip policies at the destination
                    ),
                ]
            )
        ],
    )
    tunnel_listener.internal_listener.SetInParent()
    return tunnel_listener


def _pod_chain(cluster_name: str, peer: str, limits: DataPathLimits) -> FilterChain:
    """The chain tunnelling to the pod IPs of identity ``peer`` through ``cluster_name``, pinning it."""
    tunnel = tcp_proxy(
        cluster_name,
        idle_timeout=idle_timeout(limits),
        tunnel_target=DOWNSTREAM_DESTINATION,
        tunnel_headers=(FORWARDED_FOR,),
    )
    return listener_components_pb2.FilterChain(
        name=names.pod_chain(cluster_name, peer), filters=[identity_pinning.pin(peer), tunnel]
    )


def _pod_cluster(source_identity: str, same_node: bool) -> str:
    return names.pod_local_tunnel_cluster(source_identity) if same_node else names.pod_tunnel_cluster(source_identity)


def _pod_destinations(mesh: MeshInput, node: str, trust_domain: str) -> tuple[tuple[bool, str], ...]:
    """(on this node?, identity) of the meshed pods a local pod may dial by IP: one pod chain
    each per local identity, so the chain can pin the identity its destination must prove."""
    return tuple(
        sorted({(w.node_name == node, contract.spiffe_id(trust_domain, w.namespace, w.service_account)) for w in mesh.meshed})
    )


def _identity_resources(view: NodeView, identity: LocalIdentity, out: NodeResources) -> None:
    """Per local identity: its internal listener, its three tunnel clusters and their chains
    (shared with every node where the identity has the same first pod)."""
    sid, secret, td = identity.spiffe_id, identity.secret_name, view.trust_domain
    limits = view.options.limits
    tunnel_listener = view.shared(_tunnel_listener, sid, limits)
    out.listeners[tunnel_listener.name] = tunnel_listener
    for cluster in (
        view.shared(clusters.hbone_tunnel, names.tunnel_cluster(sid), secret, td, limits),
        view.shared(
            clusters.hbone_tunnel, names.pod_tunnel_cluster(sid), secret, td, limits, port_override=contract.PORT_HBONE
        ),
        view.shared(
            clusters.hbone_tunnel,
            names.pod_local_tunnel_cluster(sid),
            secret,
            td,
            limits,
            port_override=contract.PORT_HBONE_LOCAL,
        ),
    ):
        out.clusters[cluster.name] = cluster
    outbound = out.listeners[contract.OUTBOUND_LISTENER]
    for same_node, peer in view.shared(_pod_destinations, view.mesh, view.node, td):
        outbound.filter_chains.append(view.shared(_pod_chain, _pod_cluster(sid, same_node), peer, limits))
    out.add_secret(secret, sid)


def _service_chain(name: str, limits: DataPathLimits) -> FilterChain:
    chain = proxy_chain(name, name, idle_timeout=idle_timeout(limits), stat_prefix=names.service_tcp_stat_prefix(name))
    chain.filters.insert(0, keep_client_address())  # for source.ip policies at the destination
    return chain


def _service_cluster(name: str, limits: DataPathLimits) -> clusters.Cluster:
    cluster = clusters.service_port(name, limits)
    cluster.alt_stat_name = names.service_cluster_stat_name(name)
    return cluster


def _service_endpoints(name: str, sid: str, port: ServicePortInput, node: str, trust_domain: str) -> ClusterLoadAssignment:
    return endpoints.service_port_endpoints(name, sid, list(port.endpoints(node)), node, trust_domain)


def _service_resources(view: NodeView, served: list[ServedVip], outbound: Listener, out: NodeResources) -> None:
    """Per (local identity, served service port): a chain, an EDS cluster and its endpoints."""
    seen: set[tuple[str, int]] = set()
    limits = view.options.limits
    for entry in served:
        target = entry.target
        key = (f"{target.service.namespace}/{target.service.name}", target.port.port)
        if key in seen:  # dual-stack: one chain per service port, however many VIPs
            continue
        seen.add(key)
        for identity in view.identities:
            name = names.service_chain(identity.spiffe_id, target.service, target.port, view.cluster_domain)
            outbound.filter_chains.append(view.shared(_service_chain, name, limits))
            out.clusters[name] = view.shared(_service_cluster, name, limits)
            out.endpoints[name] = view.shared(
                _service_endpoints, name, identity.spiffe_id, entry.port_input, view.node, view.trust_domain
            )


def _destinations(sid: str, node: str, mesh: MeshInput, trust_domain: str) -> matcher.OnMatch:
    """Where a pod of identity ``sid`` on ``node`` can go: one map for all its pods on the node."""
    vips: dict[str, dict[str, matcher.OnMatch]] = {}
    for vip, port, _endpoints in mesh.served(node):
        chain = names.service_chain(sid, port.service, port.port, mesh.cluster_domain)
        vips.setdefault(vip, {})[str(port.port.port)] = matcher.chain(chain)
    destinations: dict[str, matcher.OnMatch] = {vip: matcher.nested(matcher.exact("port", ports)) for vip, ports in vips.items()}
    chains: dict[tuple[bool, str], matcher.OnMatch] = {}
    for dest in mesh.meshed:
        key = (dest.node_name == node, contract.spiffe_id(trust_domain, dest.namespace, dest.service_account))
        if key not in chains:
            chains[key] = matcher.chain(names.pod_chain(_pod_cluster(sid, key[0]), key[1]))
        destinations.setdefault(dest.ip, chains[key])
    return matcher.nested(matcher.exact("ip", destinations))


def _matcher(view: NodeView) -> matcher.Matcher:
    by_source: dict[str, matcher.OnMatch] = {}
    for pod in view.local_pods:
        by_source[pod.ip] = view.shared(_destinations, view.identity_of(pod), view.node, view.mesh, view.trust_domain)
    passthrough = matcher.chain(names.PASSTHROUGH_CHAIN)
    # A match map must not be empty: with no meshed pod here, everything not for the listener's own port passes through.
    after_port = matcher.nested(matcher.exact("source-ip", by_source, on_no_match=passthrough)) if by_source else passthrough
    own_port = {str(contract.PORT_OUTBOUND): matcher.chain(names.BLACKHOLE_CHAIN)}
    return matcher.exact("port", own_port, on_no_match=after_port)
