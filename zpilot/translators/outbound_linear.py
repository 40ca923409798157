"""The linear outbound layout: its size grows with (local pods + destinations), not their product.

The article's layout repeats every destination for every local pod, and a cluster and its
endpoints for every (local identity, service port); a node of a large cluster gets hundreds of
megabytes (scalable-layout-notes.md). Here each destination and each local pod appears once
(names: ``contract`` for those other parts share, ``names`` for the rest):

    the outbound listener (contract.PORT_OUTBOUND), listener filters in this order:
      original_dst          explicit and first: the set_filter_state below must see the real destination
      set_filter_state      records the pod's address and the destination for the internal listener (ONCE)
      original_src          the passthrough chain keeps the pod's address as the source
    DestinationPort{contract.PORT_OUTBOUND -> BlackHoleCluster}
      -> source gate: SourceIP in {local meshed pods}, else PassthroughFilterChain
      -> DestinationIP{VIP -> DestinationPort{port -> "<port>_<fqdn>"},
                       else IP ranges{pod CIDR of a node -> "pods_on_<node>",
                                      stray pod IPs of an identity -> "pod_direct_to_<that identity>"}}

    "<port>_<fqdn>": tcp_proxy -> its EDS cluster (one per service port, identical on every
        node), naming the identity its mesh endpoints share if they do; a mesh endpoint is the
        internal listener contract.LINEAR_TUNNEL_LISTENER with endpoint id ``podIP:targetPort``,
        and ``tunnel.identity`` = its pod's identity where the cluster does not name it
    "pods_on_<node>" (one per node with an IPv4 pod CIDR, pods or not): through the pod-select
        internal listener to the EDS cluster "pods_on_<node>", whose override_host policy picks the
        destination pod's endpoint: the same internal listener, endpoint id = the pod IP,
        ``tunnel.identity`` = its pod's; else (an unmeshed pod) a passthrough endpoint (pod_select.py)
    "pod_direct_to_<id>" (one per identity of the strays: meshed pods outside their node's pod CIDR,
        or on a node without one): tcp_proxy -> STATIC cluster outbound_pod_internal_to_<id>, whose
        one endpoint is the same internal listener with ``tunnel.identity = <id>``

    the internal listener, listener filters set_filter_state then original_dst: destination =
      the endpoint id, else (none: a stray's path; a bare pod IP, which Envoy skips: the pod-select
      path) the recorded destination (filter_state.py);
      source = the recorded pod address; every chain
      first pins the endpoint's ``tunnel.identity`` for the tunnel's TLS (identity_pinning.py)
      -> DestinationIP in {local meshed pods}: SourceIP{pod -> "tunnel_local_<its identity>"}
         else                                  SourceIP{pod -> "tunnel_<its identity>"}
    "tunnel_<id>": HTTP/2 CONNECT to %DOWNSTREAM_LOCAL_ADDRESS% (also x-envoy-original-dst-host),
        x-forwarded-for: the pod's address, through ORIGINAL_DST cluster outbound_tunnel_clus_<id>
        (TLS as <id>), which dials the address the chain gives it in filter state: the destination's
        IP on contract.PORT_HBONE; "tunnel_local_<id>" the same through the same cluster, on
        contract.PORT_HBONE_LOCAL, which the ztunnel's own nat OUTPUT rule redirects to its HBONE
        listener (a destination pod on this node). One cluster per identity, not one per port: each
        is an Envoy cluster (its stats, its TLS context, its thread-local parts) on every node the
        identity has a pod on; the two ports' hosts (the same IP, each port) stay apart, pools and all.

Only VIP:ports with an endpoint for this node are captured (:meth:`NodeView.served_vips`), as in
the article's layout. The receiving side is unchanged. What the article's layout loses and this one keeps: the client
pod's address reaches the destination ztunnel on the service-VIP path too (``x-forwarded-for``
on the CONNECT, which its HTTP connection manager takes as the stream's remote address).

What depends on the destinations alone (the service ports' chains, clusters and endpoints, the
pod-IP chains and clusters, each node's pod endpoints, the destination map) is the same on every
node that captures the same VIP:ports: each is one shared piece, built and serialized once per model
change for all of them (fragments.py), and the outbound listener records how it was put together
(``ListenerParts``) so its own bytes are all a node holds of it. No listener and no cluster depends
on the pods inside their node's pod CIDR (``PodRoutes.shape``): a pod coming or going there changes,
of another node's config, its node's ClusterLoadAssignment alone.
"""

from __future__ import annotations

import functools
from typing import Iterable

from google.protobuf import wrappers_pb2

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.listener.v3.listener_components_pb2 import FilterChain

from .. import contract
from . import clusters, endpoints, identity_pinning, matcher, names, pod_select
from .context import ListenerParts, NodeView
from .envoy_common import (
    access_log,
    original_dst_filter,
    original_src_filter,
    socket_address,
    socket_mark,
)
from .filter_state import endpoint_destination_filter, record_addresses_filter, upstream_address
from .fragments import Fragment, FragmentGroup, Fragments
from .inputs import MeshInput, NodeInput, PodFact, ServedPorts, ServedShape, ServicePortInput
from .layout import LateEndpoints, register
from .limits import DataPathLimits, idle_timeout
from .resources import CLUSTER_TYPE, ENDPOINT_TYPE, NodeResources
from .tcp_proxy import proxy_chain, tcp_proxy

Listener = listener_pb2.Listener
#: Behind the internal listener's original_dst these are the real destination and the client pod.
DESTINATION = "%DOWNSTREAM_LOCAL_ADDRESS%"
CLIENT_ADDRESS = "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
FORWARDED_FOR_HEADER = "x-forwarded-for"


def _linear_endpoints(view: NodeView, out: NodeResources) -> None:
    """The layout's ClusterLoadAssignments: each served service port's, shared by every node
    that captures the same ports, and each node's pods' (made apart from the rest: layout.LateEndpoints)."""
    if not view.identities:  # no meshed pod here: nothing is captured, no cluster wants endpoints
        return
    served = view.mesh.served_ports(view.served_key())
    args = (view.fragments, served, view.served_key(), view.cluster_domain, view.trust_domain)
    view.add_resources(out, ENDPOINT_TYPE, _service_endpoints, *args)
    # each node's meshed pods inside its pod CIDR (pod_select.py), the same on every node
    routes = view.mesh.pod_routes
    view.add_resources(out, ENDPOINT_TYPE, pod_select.node_endpoint_sets, view.fragments, routes, view.trust_domain)


def _linear_shape(mesh: MeshInput) -> tuple:
    """What the layout's listeners and clusters read of the mesh (layout.LateEndpoints): which
    VIP:ports there are and whether each is captured, the identity a port's mesh endpoints share
    (its cluster names it), and the pod routes' shape: each node's pod CIDR and the pods outside
    their node's (the destination map lists their IPs), never a pod inside its node's CIDR."""
    return (mesh.cluster_domain, mesh.vip_order, mesh.port_shapes, mesh.pod_routes.shape)


def _linear_endpoints_key(node_input: NodeInput) -> tuple:
    """What the layout's endpoints read of the node: which ports it captures, and whether it
    has a meshed pod (without one it captures nothing)."""
    return (node_input.mesh.served_key(node_input.node), bool(node_input.local_pods))


@register("linear", endpoints=LateEndpoints(_linear_endpoints, _linear_shape, _linear_endpoints_key))
def linear_layout(view: NodeView, out: NodeResources) -> None:
    outbound = _outbound_listener(view)
    out.listeners[outbound.name] = outbound
    if not view.identities:  # no meshed pod here: everything passes through, nothing else is needed
        outbound.filter_chain_matcher.CopyFrom(_outbound_matcher(view, None))
        return
    limits, domain, td = view.options.limits, view.cluster_domain, view.trust_domain
    served = view.mesh.served_ports(view.served_key())
    chains = served.names(_chain_name, domain)
    view.add_resources(
        out, CLUSTER_TYPE, _service_clusters, view.fragments, served.shape, view.served_key(), domain, td, limits
    )
    # pod-IP destinations: by node pod CIDR (pod_select.py), and the strays by identity, which each pins
    routes = view.mesh.pod_routes
    cidr_nodes = tuple(n.node for n in routes.nodes)
    view.add_resources(out, CLUSTER_TYPE, pod_select.node_clusters, view.fragments, cidr_nodes, limits)
    peers = _stray_identities(routes.strays, td)
    view.add_resources(out, CLUSTER_TYPE, _pod_internal_clusters, view.fragments, peers, limits)
    # The node's own part is the fixed chains and the gate of its pods; the service chains, the
    # pod-IP chains and the destination map are every node's, recorded as such (ListenerParts).
    service_chains = view.fragment(_service_chains, chains, limits)
    node_chains = view.fragment(pod_select.node_chains, cidr_nodes, limits)
    pod_chains = view.fragment(_pod_direct_chains, peers, limits)
    destinations = view.fragment(_destinations, served.shape, domain, routes.shape, td)
    gated = bool(_gated_pods(view, destinations))
    to_destinations = (view.fragment(_serialized_nested, destinations),) if gated else ()
    own = outbound
    own.filter_chain_matcher.CopyFrom(_outbound_matcher(view, destinations, own_part=True))
    view.listener_parts[own.name] = ListenerParts(
        own,
        chains=(service_chains, node_chains, pod_chains),
        matches=to_destinations,
        match_paths=(_GATE_ON_MATCH,) if gated else (),
    )
    if view.whole_listeners:  # the whole message, as Envoy gets it (the producer joins bytes instead)
        whole = Listener()
        whole.CopyFrom(own)
        whole.filter_chains.extend(service_chains.value)
        whole.filter_chains.extend(node_chains.value)
        whole.filter_chains.extend(pod_chains.value)
        whole.filter_chain_matcher.CopyFrom(_outbound_matcher(view, destinations))
        out.listeners[whole.name] = whole
    out.listeners[contract.LINEAR_TUNNEL_LISTENER] = _tunnel_listener(view, out)
    if cidr_nodes:
        out.listeners[names.POD_SELECT_LISTENER] = view.shared(pod_select.pod_select_listener, limits)
        out.listeners[names.MESH_PASSTHROUGH_LISTENER] = view.shared(pod_select.mesh_passthrough_listener, limits)


def _stray_identities(strays: tuple[PodFact, ...], trust_domain: str) -> tuple[str, ...]:
    """The identities of the strays (pods found by their own IP), sorted: one chain and cluster each."""
    return tuple(sorted({contract.spiffe_id(trust_domain, ns, account) for _ip, ns, account in strays}))


#: Where the destination map goes in the outbound listener: its matcher's gate (``on_no_match``
#: of the port matcher, a range matcher of the local pods), whose ``on_match`` it is.
_GATE_ON_MATCH = (
    Listener.DESCRIPTOR.fields_by_name["filter_chain_matcher"].number,
    *matcher.ON_NO_MATCH_MATCHER,
    *matcher.IN_RANGES_ON_MATCH,
)


def _outbound_listener(view: NodeView) -> Listener:
    """The outbound listener without its matcher and its shared chains: a new message (the layout
    adds to it), copied from one made once (a node's own part is made again on each pod change)."""
    listener = Listener()
    listener.CopyFrom(_outbound_template(view.options.bind_address, view.options.limits))
    return listener


@functools.lru_cache(maxsize=64)
def _outbound_template(bind_address: str, limits: DataPathLimits) -> Listener:
    """:func:`_outbound_listener`'s message (never modified: copied)."""
    listener = Listener(
        name=contract.OUTBOUND_LISTENER,
        address=socket_address(bind_address, contract.PORT_OUTBOUND),
        transparent=wrappers_pb2.BoolValue(value=True),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        # the order matters: Envoy appends the implicit original_dst of use_original_dst after
        # these, too late for set_filter_state, which would record the listener's own address as the destination
        listener_filters=[original_dst_filter(), record_addresses_filter(), original_src_filter()],
        socket_options=[socket_mark(contract.OUTBOUND_SOCKET_MARK, "Set socket mark to packets coming back from outbound listener")],
        access_log=[access_log(contract.OUTBOUND_LISTENER)],
    )
    idle = idle_timeout(limits)
    listener.filter_chains.extend(
        [
            proxy_chain(names.PASSTHROUGH_CHAIN, names.PASSTHROUGH_CLUSTER, idle_timeout=idle),
            proxy_chain(names.BLACKHOLE_CHAIN, names.BLACKHOLE_CLUSTER, idle_timeout=idle),
        ]
    )
    return listener


def _chain_name(port: ServicePortInput, domain: str) -> str:
    return names.linear_service_chain(port.service, port.port, domain)


def service_port_cluster(name: str, identity: str | None, limits: DataPathLimits):
    """A service port's EDS cluster: one ``internal_upstream`` socket for every endpoint, passing
    the cluster's ``tunnel`` namespace (``identity``, when all its mesh endpoints share it), then
    each endpoint's own ``tunnel``, which replaces it (the destination is the endpoint id: filter_state.py)."""
    cluster = clusters.Cluster()
    cluster.CopyFrom(_service_port_template(limits))  # all alike but for the name and identity: copied (2,000 at R)
    cluster.name = name
    cluster.alt_stat_name = names.service_cluster_stat_name(name)
    if identity is not None:
        cluster.metadata.CopyFrom(endpoints.identity_metadata_template(identity))
    return cluster


@functools.lru_cache(maxsize=64)
def _service_port_template(limits: DataPathLimits) -> clusters.Cluster:
    """:func:`service_port_cluster`'s without a name and an identity (never modified: copied)."""
    return clusters.service_port(
        "",
        limits,
        passthrough=(contract.TUNNEL_METADATA,),
        match_by_metadata=False,
        cluster_passthrough=(contract.TUNNEL_METADATA,),
    )


def _service_clusters(
    fragments: Fragments, served: ServedShape, node: str | None, domain: str, trust_domain: str, limits: DataPathLimits
) -> FragmentGroup:
    """One EDS cluster per served service port, named as its chain, naming the identity all the
    port's mesh endpoints share (if they do) so that its endpoints need not (endpoints.shared_identity):
    built again only when a port's shape changed (an endpoint coming or going leaves it)."""
    members = {}
    for port, name in zip(served.ports, served.names(_chain_name, domain)):
        identity = endpoints.shared_identity(port.endpoints(node if port.service.node_local else None), trust_domain)
        members[name] = fragments.get(service_port_cluster, name, identity, limits)
    return FragmentGroup(members)


def _port_endpoints(name: str, port: ServicePortInput, node: str | None, trust_domain: str) -> ClusterLoadAssignment:
    """Where the port's connections go from ``node`` (None: any node, the service not being node-local)."""
    return endpoints.linear_service_port_endpoints(name, list(port.endpoints(node)), trust_domain)


def _service_endpoints(
    fragments: Fragments, served: ServedPorts, node: str | None, domain: str, trust_domain: str
) -> FragmentGroup:
    """Each served service port's endpoints: rebuilt only for the ports whose endpoints changed.
    When ``served`` are the ports of the last model with a few replaced (``ServedPorts.moved_from``)
    and the group built for those is still held, it is that group with those few members looked up
    again: a pod change looks at its services' ports, not at the thousands of others."""
    chain_names = served.names(_chain_name, domain)
    lineage = served.moved_from()
    last = fragments.find(_service_endpoints, fragments, lineage[0], node, domain, trust_domain) if lineage else None
    if last is not None:
        members = dict(last.value.members)
        positions: Iterable[int] = lineage[1]  # type: ignore[index]
    else:
        members, positions = {}, range(len(served.ports))
    for i in positions:
        port, name = served.ports[i], chain_names[i]
        members[name] = fragments.get(
            _port_endpoints, name, port, node if port.service.node_local else None, trust_domain
        )
    if last is not None:
        return FragmentGroup(members, base=(last.value, tuple(chain_names[i] for i in positions)))
    return FragmentGroup(members)


def _service_chains(chains: tuple[str, ...], limits: DataPathLimits) -> tuple[FilterChain, ...]:
    idle = idle_timeout(limits)
    return tuple(proxy_chain(name, name, idle_timeout=idle, stat_prefix=names.service_tcp_stat_prefix(name)) for name in chains)


def _pod_internal_cluster(peer: str, limits: DataPathLimits):
    cluster = names.pod_internal_cluster(peer)
    return clusters.internal_listener_cluster(
        cluster, contract.LINEAR_TUNNEL_LISTENER, limits, metadata=endpoints.identity_metadata(peer)
    )


def _pod_internal_clusters(fragments: Fragments, peers: tuple[str, ...], limits: DataPathLimits) -> FragmentGroup:
    """Per identity of the mesh, the static cluster its pod-IP destinations go through (pinning it)."""
    return FragmentGroup({names.pod_internal_cluster(p): fragments.get(_pod_internal_cluster, p, limits) for p in peers})


def _pod_direct_chains(peers: tuple[str, ...], limits: DataPathLimits) -> tuple[FilterChain, ...]:
    idle = idle_timeout(limits)
    return tuple(
        proxy_chain(names.pod_direct_chain(peer), names.pod_internal_cluster(peer), idle_timeout=idle) for peer in peers
    )


def _destinations(
    served: ServedShape, domain: str, pod_shape: tuple, trust_domain: str
) -> matcher.Matcher | None:
    """Where a local pod's connection goes, by destination IP: the same map on every node that
    captures the same VIP:ports; None when there is nowhere to go. ``pod_shape``: the pod CIDR of
    each node and the strays (``PodRoutes.shape``): never an in-CIDR pod, so a pod coming or
    going inside its node's CIDR changes no listener.

    The VIPs first (an exact map, then the port), then the pod IPs in one IP range matcher: each
    node's pod CIDRs -> its "pods_on_<node>" chain (the pod picked from the node's endpoints,
    pod_select.py), and each stray identity's pod IPs (host ranges) -> its chain, which pins it
    (a stray inside another node's CIDR is found by its own, longer prefix). A VIP whose port is
    not captured falls back to the pod IPs, which it is not one of, then passes through."""
    passthrough = matcher.chain(names.PASSTHROUGH_CHAIN)
    vips: dict[str, dict[str, matcher.OnMatch]] = {}
    for port, name in zip(served.ports, served.names(_chain_name, domain)):
        for vip in port.vips:
            vips.setdefault(vip, {})[str(port.port.port)] = matcher.chain(name)
    node_cidrs, strays = pod_shape
    outcomes = [(list(cidrs), matcher.chain(names.pods_on_node(node))) for node, cidrs in node_cidrs]
    by_identity: dict[str, list[str]] = {}
    for ip, namespace, account in strays:
        if ip not in vips:  # a VIP is matched first
            by_identity.setdefault(contract.spiffe_id(trust_domain, namespace, account), []).append(ip)
    outcomes += [(ips, matcher.chain(names.pod_direct_chain(peer))) for peer, ips in sorted(by_identity.items())]
    pods = matcher.by_ranges("ip", outcomes, on_no_match=passthrough) if outcomes else None
    if not vips:
        return pods
    destinations = {vip: matcher.nested(matcher.exact("port", ports)) for vip, ports in vips.items()}
    return matcher.exact("ip", destinations, on_no_match=matcher.nested(pods) if pods is not None else passthrough)


def _gated_pods(view: NodeView, destinations: Fragment | None) -> list[str]:
    """The addresses of the pods whose connections the gate sends to the destination map (none:
    no gate). A match map must not be empty, nor a range list: with no meshed pod here, or
    nowhere to go (no destination map), everything not for the outbound port itself passes through."""
    local = [pod.ip for pod in view.local_pods if pod.ip]
    if not local or destinations is None or destinations.value is None:
        return []
    return local


def _outbound_matcher(view: NodeView, destinations: Fragment | None, own_part: bool = False) -> matcher.Matcher:
    """``own_part``: the gate leads to an empty ``on_match`` instead of the destination map."""
    passthrough = matcher.chain(names.PASSTHROUGH_CHAIN)
    blackhole = {str(contract.PORT_OUTBOUND): matcher.chain(names.BLACKHOLE_CHAIN)}
    local = _gated_pods(view, destinations)
    if not local:
        return matcher.exact("port", blackhole, on_no_match=passthrough)
    to_destination = b"" if own_part else view.shared(_serialized_nested, destinations)
    ranges = view.shared(matcher.serialized_ranges, tuple(local))
    gate = matcher.in_ranges("source-ip", local, to_destination, passthrough, ranges=ranges)
    outer = matcher.exact("port", blackhole)
    outer.on_no_match.matcher.CopyFrom(gate)
    return outer


def _serialized_nested(destinations: Fragment) -> bytes:
    """The destination map as the gate's serialized ``on_match``: once for every node."""
    return matcher.serialized(matcher.nested(destinations.value))


def _tunnel_listener(view: NodeView, out: NodeResources) -> Listener:
    """The internal listener: one tunnel chain per local identity and destination side (other
    node / this node), picked by the client pod's address the outbound listener recorded.

    Its chains are every node's alike for an identity (one piece per identity, built and, for the
    producer, serialized and checked once for every node that has it: ``ListenerParts``); its
    own part (the chain matcher) is the node's, by its pods' addresses. A pod change makes that
    part again, and the chains of an identity new to the node, not every identity's."""
    td, limits = view.trust_domain, view.options.limits
    identities = tuple(
        (identity.spiffe_id, identity.secret_name, tuple(pod.ip for pod in identity.pods if pod.ip))
        for identity in view.identities
    )
    for sid, secret, _ips in identities:
        # both of the identity's chains go through it, each saying where (_tunnel_chains): no port override
        cluster_name = names.tunnel_cluster(sid)
        out.clusters[cluster_name] = view.shared(clusters.hbone_tunnel, cluster_name, secret, td, limits)
        out.add_secret(secret, sid)
    addresses = tuple((sid, ips) for sid, _secret, ips in identities)
    chains = tuple(view.fragment(_tunnel_chains, sid, limits) for sid, _addresses in addresses)
    if view.whole_listeners:  # the whole message, as Envoy gets it (the producer joins bytes instead)
        return view.shared(_tunnel_listener_whole, view.fragment(_tunnel_parts, addresses, limits, chains))
    # for the producer, the two maps of the node's pods are pieces too, joined as bytes where the
    # gate leads (each written from its pods' entries): never parsed into the own part, copied
    # and serialized again with it for each change
    maps = (view.fragment(_source_map, addresses, True), view.fragment(_source_map, addresses, False))
    parts: ListenerParts = view.fragment(_tunnel_own_parts, addresses, limits, chains, maps).value
    view.listener_parts[parts.own.name] = parts
    return parts.own


def _tunnel_chains(sid: str, limits: DataPathLimits) -> tuple[FilterChain, FilterChain]:
    """An identity's two tunnel chains, to another node and to this one: the same on every node. Both
    go through the identity's one tunnel cluster; the filter that pins the peer's identity also gives
    the cluster its address, the destination's IP on the HBONE port or on the same-node hairpin port
    (filter_state.upstream_address). Their tcp_proxy stats are named after the chain, so that the two
    sides, one cluster's, still count apart when every stat is asked for."""
    idle = idle_timeout(limits)
    cluster_name = names.tunnel_cluster(sid)
    return tuple(
        listener_components_pb2.FilterChain(
            name=chain_name,
            filters=[
                identity_pinning.pin_from_endpoint(upstream_address(port)),
                tcp_proxy(
                    cluster_name,
                    idle_timeout=idle,
                    stat_prefix=names.tunnel_tcp_stat_prefix(chain_name),
                    tunnel_target=DESTINATION,
                    tunnel_headers=((FORWARDED_FOR_HEADER, CLIENT_ADDRESS),),
                ),
            ],
        )
        for chain_name, port in (
            (names.linear_tunnel_chain(sid), contract.PORT_HBONE),
            (names.linear_local_tunnel_chain(sid), contract.PORT_HBONE_LOCAL),
        )
    )  # type: ignore[return-value]


def _tunnel_base() -> Listener:
    """The internal listener without its matcher and its chains: a new message, copied from one made once."""
    listener = Listener()
    listener.CopyFrom(_tunnel_template())
    return listener


@functools.lru_cache(maxsize=1)
def _tunnel_template() -> Listener:
    """:func:`_tunnel_base`'s message (never modified: copied)."""
    listener = Listener(
        name=contract.LINEAR_TUNNEL_LISTENER,
        use_original_dst=wrappers_pb2.BoolValue(value=False),
        listener_filters=[endpoint_destination_filter(), original_dst_filter()],
        access_log=[access_log(contract.LINEAR_TUNNEL_LISTENER)],
    )
    listener.internal_listener.SetInParent()
    return listener


def _source_chains(addresses: tuple[tuple[str, tuple[str, ...]], ...], same_node: bool) -> dict[str, str]:
    """Each local pod's address -> its identity's tunnel chain to this node (``same_node``) or another."""
    by_ip: dict[str, str] = {}
    for sid, ips in addresses:
        chain = names.linear_local_tunnel_chain(sid) if same_node else names.linear_tunnel_chain(sid)
        for ip in ips:
            by_ip[ip] = chain
    return by_ip


def _source_map(addresses: tuple[tuple[str, tuple[str, ...]], ...], same_node: bool) -> matcher.SerializedMap:
    """The tunnel listener's source-ip map to its chains to this node or another, as the serialized
    ``OnMatch`` the gate leads to: written from its entries, kept (``matcher.serialized_exact_map``)."""
    return matcher.serialized_exact_map("source-ip", _source_chains(addresses, same_node))


def _tunnel_parts(
    addresses: tuple[tuple[str, tuple[str, ...]], ...], limits: DataPathLimits, chains: tuple[Fragment, ...]
) -> ListenerParts:
    """The internal listener as its own part (without chains: its matcher, by each local
    identity's pod addresses) and its identities' chains (``chains``: one piece each, in order)."""
    listener = _tunnel_base()
    # each source-ip map written from its entries, kept (matcher.serialized_exact): the same
    # messages as made from OnMatch messages, the hundred pods' not made again for each change
    gate = matcher.in_ranges("ip", sorted(_source_chains(addresses, False)), bytes(_source_map(addresses, True)))
    gate.on_no_match.MergeFromString(bytes(_source_map(addresses, False)))
    listener.filter_chain_matcher.CopyFrom(gate)
    return ListenerParts(listener, chains=chains)


def _tunnel_own_parts(
    addresses: tuple[tuple[str, tuple[str, ...]], ...],
    limits: DataPathLimits,
    chains: tuple[Fragment, ...],
    maps: tuple[Fragment, Fragment],
) -> ListenerParts:
    """:func:`_tunnel_parts` with the gate's two maps as pieces too (``maps``: :func:`_source_map`'s
    to this node, then to another): the gate leads to an empty ``on_match`` and ``on_no_match``
    where they go (joined, byte for byte the listener of :func:`_tunnel_parts`: tests/xds/test_listener_bytes.py)."""
    listener = _tunnel_base()
    gate = matcher.in_ranges("ip", sorted(_source_chains(addresses, False)), b"")
    gate.on_no_match.SetInParent()
    listener.filter_chain_matcher.CopyFrom(gate)
    return ListenerParts(listener, chains=chains, matches=maps, match_paths=_TUNNEL_MAP_PATHS)


#: Where the tunnel listener's two maps go: the gate's ``on_match`` (its range matcher's), then its ``on_no_match``.
_TUNNEL_MAP_PATHS = (
    (Listener.DESCRIPTOR.fields_by_name["filter_chain_matcher"].number, *matcher.IN_RANGES_ON_MATCH),
    (Listener.DESCRIPTOR.fields_by_name["filter_chain_matcher"].number, *matcher.ON_NO_MATCH_MATCHER[:1]),
)


def _tunnel_listener_whole(pieced: Fragment) -> Listener:
    """The internal listener whole: its own part with its identities' chains (``pieced``: a
    fragment of :func:`_tunnel_parts`)."""
    parts: ListenerParts = pieced.value
    whole = Listener()
    whole.CopyFrom(parts.own)
    for piece in parts.chains:
        whole.filter_chains.extend(piece.value)
    return whole
