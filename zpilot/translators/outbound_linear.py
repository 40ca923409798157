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
      -> DestinationIP{VIP -> DestinationPort{port -> "<port>_<fqdn>_outbound_internal"},
                       meshed pod IP -> "pod_direct_to_<the pod's identity>"}

    "<port>_<fqdn>_outbound_internal": tcp_proxy -> its EDS cluster (one per service port,
        identical on every node); a mesh endpoint is the internal listener
        contract.LINEAR_TUNNEL_LISTENER with ``original_dst.local = podIP:targetPort`` and
        ``tunnel.identity`` = its pod's identity
    "pod_direct_to_<id>" (one per identity of the mesh): tcp_proxy -> STATIC cluster
        outbound_pod_internal_to_<id>, whose one endpoint is the same internal listener with
        ``tunnel.identity = <id>``

    the internal listener, listener filter original_dst: destination = endpoint metadata
      ``local``, else the recorded destination; source = the recorded pod address; every chain
      first pins the endpoint's ``tunnel.identity`` for the tunnel's TLS (identity_pinning.py)
      -> DestinationIP in {local meshed pods}: SourceIP{pod -> "tunnel_local_<its identity>"}
         else                                  SourceIP{pod -> "tunnel_<its identity>"}
    "tunnel_<id>": HTTP/2 CONNECT to %DOWNSTREAM_LOCAL_ADDRESS% (also x-envoy-original-dst-host),
        x-forwarded-for: the pod's address, through ORIGINAL_DST cluster outbound_tunnel_clus_<id>
        (port contract.PORT_HBONE, TLS as <id>); "tunnel_local_<id>" the same through
        outbound_local_tunnel_clus_<id> on contract.PORT_HBONE_LOCAL, which the ztunnel's own nat
        OUTPUT rule redirects to its HBONE listener (a destination pod on this node).

Only VIP:ports with an endpoint for this node are captured (:meth:`NodeView.served_vips`), as in
the article's layout. The receiving side is unchanged. What the article's layout loses and this one keeps: the client
pod's address reaches the destination ztunnel on the service-VIP path too (``x-forwarded-for``
on the CONNECT, which its HTTP connection manager takes as the stream's remote address).
"""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2

from .. import contract
from ..model.index import ServiceTarget
from . import clusters, endpoints, identity_pinning, matcher, names
from .context import NodeView, ServedVip
from .envoy_common import (
    access_log,
    original_dst_filter,
    original_src_filter,
    socket_address,
    socket_mark,
)
from .filter_state import record_addresses_filter
from .layout import register
from .limits import idle_timeout
from .resources import NodeResources
from .tcp_proxy import proxy_chain, tcp_proxy

Listener = listener_pb2.Listener
#: Behind the internal listener's original_dst these are the real destination and the client pod.
DESTINATION = "%DOWNSTREAM_LOCAL_ADDRESS%"
CLIENT_ADDRESS = "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
FORWARDED_FOR_HEADER = "x-forwarded-for"


@register("linear")
def linear_layout(view: NodeView, out: NodeResources) -> None:
    outbound = _outbound_listener(view)
    out.listeners[outbound.name] = outbound
    if not view.identities:  # no meshed pod here: everything passes through, nothing else is needed
        outbound.filter_chain_matcher.CopyFrom(_outbound_matcher(view, [], {}))
        return
    served = view.served_vips()
    service_chains = _service_resources(view, served, outbound, out)
    idle = idle_timeout(view.options.limits)
    for peer in _mesh_identities(view):  # pod-IP destinations: a way per identity, which it pins
        cluster = names.pod_internal_cluster(peer)
        outbound.filter_chains.append(proxy_chain(names.pod_direct_chain(peer), cluster, idle_timeout=idle))
        out.clusters[cluster] = clusters.internal_listener_cluster(
            cluster, contract.LINEAR_TUNNEL_LISTENER, view.options.limits, metadata=endpoints.identity_metadata(peer)
        )
    outbound.filter_chain_matcher.CopyFrom(_outbound_matcher(view, served, service_chains))
    out.listeners[contract.LINEAR_TUNNEL_LISTENER] = _tunnel_listener(view, out)


def _outbound_listener(view: NodeView) -> Listener:
    listener = Listener(
        name=contract.OUTBOUND_LISTENER,
        address=socket_address(view.options.bind_address, contract.PORT_OUTBOUND),
        transparent=wrappers_pb2.BoolValue(value=True),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        # the order matters: Envoy appends the implicit original_dst of use_original_dst after
        # these, too late for set_filter_state, which would record the listener's own address as the destination
        listener_filters=[original_dst_filter(), record_addresses_filter(), original_src_filter()],
        socket_options=[socket_mark(contract.OUTBOUND_SOCKET_MARK, "Set socket mark to packets coming back from outbound listener")],
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


def _service_resources(
    view: NodeView, served: list[ServedVip], outbound: Listener, out: NodeResources
) -> dict[tuple[str, int], str]:
    """One chain, EDS cluster and load assignment per served service port, whatever the local
    identities; returns the chain of each (service, port)."""
    chains: dict[tuple[str, int], str] = {}
    limits = view.options.limits
    idle = idle_timeout(limits)
    for entry in served:
        target = entry.target
        key = _key(target)
        if key in chains:  # dual-stack: one chain per service port, however many VIPs
            continue
        name = names.linear_service_chain(target.service, target.port, view.cluster_domain)
        chains[key] = name
        outbound.filter_chains.append(proxy_chain(name, name, idle_timeout=idle))
        out.clusters[name] = clusters.service_port(
            name, limits, passthrough=(contract.ORIGINAL_DST_FILTER, contract.TUNNEL_METADATA)
        )
        out.endpoints[name] = endpoints.linear_service_port_endpoints(name, list(entry.endpoints), view.trust_domain)
    return chains


def _mesh_identities(view: NodeView) -> list[str]:
    """The identities of the meshed pods a local pod may dial by IP."""
    return sorted({view.identity_of(w) for w in view.index.meshed_workloads() if w.ip})


def _key(target: ServiceTarget) -> tuple[str, int]:
    return (f"{target.service.namespace}/{target.service.name}", target.port.port)


def _outbound_matcher(
    view: NodeView, served: list[ServedVip], service_chains: dict[tuple[str, int], str]
) -> matcher.Matcher:
    passthrough = matcher.chain(names.PASSTHROUGH_CHAIN)
    blackhole = {str(contract.PORT_OUTBOUND): matcher.chain(names.BLACKHOLE_CHAIN)}
    local = [pod.ip for pod in view.local_pods if pod.ip]
    destinations: dict[str, matcher.OnMatch] = {}
    if local:
        vips: dict[str, dict[str, matcher.OnMatch]] = {}
        for entry in served:
            port = str(entry.target.port.port)
            vips.setdefault(entry.vip, {})[port] = matcher.chain(service_chains[_key(entry.target)])
        for vip, ports in vips.items():
            destinations[vip] = matcher.nested(matcher.exact("port", ports))
        for pod in view.index.meshed_workloads():
            if pod.ip:
                destinations.setdefault(pod.ip, matcher.chain(names.pod_direct_chain(view.identity_of(pod))))
    # A match map must not be empty, nor a range list: with no meshed pod here, or nowhere to go,
    # everything not for the outbound port itself passes through.
    if not destinations:
        return matcher.exact("port", blackhole, on_no_match=passthrough)
    by_destination = matcher.exact("ip", destinations, on_no_match=passthrough)
    gate = matcher.in_ranges("source-ip", local, matcher.nested(by_destination), passthrough)
    return matcher.exact("port", blackhole, on_no_match=matcher.nested(gate))


def _tunnel_listener(view: NodeView, out: NodeResources) -> Listener:
    """The internal listener: one tunnel chain per local identity and destination side (other
    node / this node), picked by the client pod's address the outbound listener recorded."""
    listener = Listener(
        name=contract.LINEAR_TUNNEL_LISTENER,
        use_original_dst=wrappers_pb2.BoolValue(value=False),
        listener_filters=[original_dst_filter()],
        access_log=[access_log(contract.LINEAR_TUNNEL_LISTENER)],
    )
    listener.internal_listener.SetInParent()
    td, limits = view.trust_domain, view.options.limits
    idle = idle_timeout(limits)
    remote: dict[str, matcher.OnMatch] = {}
    same_node: dict[str, matcher.OnMatch] = {}
    for identity in view.identities:
        sid, secret = identity.spiffe_id, identity.secret_name
        for chain_name, cluster_name, port in (
            (names.linear_tunnel_chain(sid), names.tunnel_cluster(sid), contract.PORT_HBONE),
            (names.linear_local_tunnel_chain(sid), names.local_tunnel_cluster(sid), contract.PORT_HBONE_LOCAL),
        ):
            listener.filter_chains.append(
                listener_components_pb2.FilterChain(
                    name=chain_name,
                    filters=[
                        identity_pinning.pin_from_endpoint(),
                        tcp_proxy(
                            cluster_name,
                            idle_timeout=idle,
                            tunnel_target=DESTINATION,
                            tunnel_headers=((FORWARDED_FOR_HEADER, CLIENT_ADDRESS),),
                        ),
                    ],
                )
            )
            out.clusters[cluster_name] = clusters.hbone_tunnel(cluster_name, secret, td, limits, port_override=port)
        for pod in identity.pods:
            if pod.ip:
                remote[pod.ip] = matcher.chain(names.linear_tunnel_chain(sid))
                same_node[pod.ip] = matcher.chain(names.linear_local_tunnel_chain(sid))
        out.add_secret(secret, sid)
    local = sorted(remote)
    listener.filter_chain_matcher.CopyFrom(
        matcher.in_ranges(
            "ip",
            local,
            matcher.nested(matcher.exact("source-ip", same_node)),
            matcher.nested(matcher.exact("source-ip", remote)),
        )
    )
    return listener
