"""Pod-IP destinations of the linear layout, found by node pod CIDR: no pod IP in any listener.

A connection to a pod IP must pin the identity of the pod it reaches (identity_pinning.py), so
the layout once listed every meshed pod's IP in every node's outbound listener, and a pod added
anywhere changed every node's listeners. Here the outbound listener matches each node's pod CIDR
(``Node.spec.podCIDRs``) instead, and the pod is picked at connection time from one
ClusterLoadAssignment per node, the only resource a pod add on node A changes on other nodes:

    outbound chain "pods_on_<A>" (one per node with a CIDR):
        tcp_proxy -> STATIC cluster names.POD_SELECT_CLUSTER, whose transport socket sends a PROXY
        protocol v2 header into the internal listener: the connection's two addresses, and TLVs
        TLV_HOST = envoy://<contract.LINEAR_TUNNEL_LISTENER>/<destination IP> (the address of
        the pod's endpoint), TLV_CLUSTER = "pods_on_<A>"
    internal listener names.POD_SELECT_LISTENER:
        listener filter proxy_protocol: the TLVs -> dynamic metadata SELECT_METADATA {host, cluster}
        set_filter_state: envoy.tcp_proxy.cluster = that cluster; the two addresses recorded again,
            shared ONCE, for the next internal listener's original_dst (filter_state.py)
        tcp_proxy -> that cluster (BlackHoleCluster if it is not set)
    EDS cluster "pods_on_<A>": load balancing policy override_host (the endpoint whose address is
        SELECT_METADATA.host), falling back to the subset policy whose default subset is the
        passthrough endpoint (not a meshed pod: an unmeshed pod inside the CIDR); internal_upstream
        hands the endpoint's ``tunnel`` metadata (the identity to pin) to the internal listener
    ClusterLoadAssignment "pods_on_<A>": per meshed pod in A's CIDRs, the tunnel listener
        (contract.LINEAR_TUNNEL_LISTENER) with endpoint id = the pod IP and ``tunnel.identity``;
        plus the passthrough endpoint, names.MESH_PASSTHROUGH_LISTENER
    internal listener names.MESH_PASSTHROUGH_LISTENER: original_dst (the recorded addresses) and
        original_src (the client pod's address as the source, marked as the outbound
        listener's passthrough is) -> PassthroughCluster

The tunnel listener's first filter makes a service endpoint's id (``podIP:targetPort``) its
destination; a pod-select endpoint's id, a bare IP, is no address that filter state object
accepts, so Envoy skips it ("Failed to create an object", set_filter_state) and the destination
recorded here stays: the pod's IP and the port the client dialled.

Why the cluster a connection names is bounded: the TLV naming it is written by this ztunnel's own
outbound chain (a constant per chain), and an internal listener is reached only by this Envoy's own
internal connections; no client can send it a PROXY header. Each name is a cluster this module
made, and a cluster that is gone (a node deleted) resets the connection (no such cluster).

Why one more internal hop: no stock filter on the outbound listener can put a formatted value
into dynamic metadata, and the override_host policy reads only that (or a header); the PROXY
protocol listener filter is the stock way to turn a formatted value into it.
"""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, extension_pb2, proxy_protocol_pb2, substitution_format_string_pb2
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.listener.proxy_protocol.v3 import proxy_protocol_pb2 as proxy_protocol_listener_pb2
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.load_balancing_policies.subset.v3 import subset_pb2
from envoy.extensions.transport_sockets.proxy_protocol.v3 import upstream_proxy_protocol_pb2
from envoy.type.metadata.v3 import metadata_pb2

from .. import contract
from ..model.objects import NO_LOCALITY
from . import clusters, endpoints, names
from .envoy_common import access_log, original_dst_filter, original_src_filter, pack, struct
from .filter_state import LOCAL_IP_STATE, RECORDED, REMOTE_IP_STATE
from .fragments import FragmentGroup, Fragments
from .inputs import NodePods, PodFact, PodRoutes
from .limits import DataPathLimits, idle_timeout
from .tcp_proxy import proxy_chain, tcp_proxy

#: PROXY protocol TLV types (the range 0xE0-0xEF is for custom use): the endpoint to pick, and the
#: cluster to pick it from.
TLV_HOST, TLV_CLUSTER = 0xE0, 0xE1
#: The dynamic metadata namespace the pod-select listener puts the two TLVs into.
SELECT_METADATA = "zpilot_select"
SELECT_HOST, SELECT_CLUSTER = "host", "cluster"
#: The address override_host looks for: the pod's endpoint (its id is the destination IP).
HOST_FORMAT = f"envoy://{contract.LINEAR_TUNNEL_LISTENER}/%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"
#: The filter state object naming the cluster a tcp_proxy without one of its own goes to.
TCP_PROXY_CLUSTER_STATE = "envoy.tcp_proxy.cluster"
#: The metadata of the passthrough endpoint, the one endpoint of the default subset.
PASSTHROUGH_SUBSET = {"passthrough": "1"}
PASSTHROUGH_ENDPOINT_ID = "passthrough"


def node_chains(nodes: tuple[str, ...], limits: DataPathLimits) -> tuple[listener_components_pb2.FilterChain, ...]:
    """The outbound listener's chain for each node with a pod CIDR: to the pod-select listener,
    naming the destination and the node's cluster."""
    idle = idle_timeout(limits)
    return tuple(
        listener_components_pb2.FilterChain(
            name=names.pods_on_node(node),
            filters=[
                tcp_proxy(
                    names.POD_SELECT_CLUSTER,
                    idle_timeout=idle,
                    stat_prefix=names.pods_tcp_stat_prefix(node),
                    proxy_protocol_tlvs=((TLV_HOST, HOST_FORMAT), (TLV_CLUSTER, names.pods_on_node(node))),
                )
            ],
        )
        for node in nodes
    )


def pod_select_cluster(limits: DataPathLimits) -> cluster_pb2.Cluster:
    """The static cluster to the pod-select listener: a PROXY protocol v2 header (with the chain's
    TLVs) around the internal connection."""
    cluster = clusters.internal_listener_cluster(names.POD_SELECT_CLUSTER, names.POD_SELECT_LISTENER, limits)
    upstream = upstream_proxy_protocol_pb2.ProxyProtocolUpstreamTransport(
        # the tcp_proxy's TLVs are sent only as "passed through" (Envoy 1.40 sends none of them without
        # this); the outbound listener reads no PROXY header, so no client's TLV can be among them
        config=proxy_protocol_pb2.ProxyProtocolConfig(
            version=proxy_protocol_pb2.ProxyProtocolConfig.V2,
            pass_through_tlvs=proxy_protocol_pb2.ProxyProtocolPassThroughTLVs(
                match_type=proxy_protocol_pb2.ProxyProtocolPassThroughTLVs.INCLUDE_ALL
            ),
        ),
        transport_socket=cluster.transport_socket,
    )
    cluster.transport_socket.CopyFrom(
        base_pb2.TransportSocket(name="envoy.transport_sockets.upstream_proxy_protocol", typed_config=pack(upstream))
    )
    return cluster


def _value(key: str, format_string: str, shared: "value_pb2.FilterStateValue.SharedWithUpstream.ValueType"):
    return value_pb2.FilterStateValue(
        object_key=key,
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=format_string)
        ),
        shared_with_upstream=shared,
    )


def pod_select_listener(limits: DataPathLimits) -> listener_pb2.Listener:
    """The internal listener that sends a connection to the cluster its PROXY header names."""
    rules = [
        proxy_protocol_listener_pb2.ProxyProtocol.Rule(
            tlv_type=tlv,
            on_tlv_present=proxy_protocol_listener_pb2.ProxyProtocol.KeyValuePair(metadata_namespace=SELECT_METADATA, key=key),
        )
        for tlv, key in ((TLV_HOST, SELECT_HOST), (TLV_CLUSTER, SELECT_CLUSTER))
    ]
    listener = listener_pb2.Listener(
        name=names.POD_SELECT_LISTENER,
        use_original_dst=wrappers_pb2.BoolValue(value=False),
        listener_filters=[
            listener_components_pb2.ListenerFilter(
                name="envoy.filters.listener.proxy_protocol",
                typed_config=pack(proxy_protocol_listener_pb2.ProxyProtocol(rules=rules)),
            )
        ],
        access_log=[access_log(names.POD_SELECT_LISTENER)],
    )
    listener.internal_listener.SetInParent()
    ONCE, NONE = value_pb2.FilterStateValue.ONCE, value_pb2.FilterStateValue.NONE
    values = [_value(TCP_PROXY_CLUSTER_STATE, f"%DYNAMIC_METADATA({SELECT_METADATA}:{SELECT_CLUSTER})%", NONE)]
    # the addresses the PROXY header restored, for the next internal listener's original_dst (the
    # outbound listener's record was shared ONCE: with this listener's connection, no further)
    values += [_value(key, RECORDED[key], ONCE) for key in (REMOTE_IP_STATE, LOCAL_IP_STATE)]
    listener.filter_chains.append(
        listener_components_pb2.FilterChain(
            name=names.POD_SELECT_LISTENER,
            filters=[
                listener_components_pb2.Filter(
                    name="envoy.filters.network.set_filter_state",
                    typed_config=pack(set_filter_state_pb2.Config(on_new_connection=values)),
                ),
                tcp_proxy(names.BLACKHOLE_CLUSTER, idle_timeout=idle_timeout(limits), stat_prefix=names.POD_SELECT_LISTENER),
            ],
        )
    )
    return listener


def mesh_passthrough_listener(limits: DataPathLimits) -> listener_pb2.Listener:
    """Where a pod-IP destination that is no meshed pod goes: straight to it, from the client pod's
    address (original_src, as on the outbound listener's passthrough chain)."""
    listener = listener_pb2.Listener(
        name=names.MESH_PASSTHROUGH_LISTENER,
        use_original_dst=wrappers_pb2.BoolValue(value=False),
        listener_filters=[original_dst_filter(), original_src_filter()],
        access_log=[access_log(names.MESH_PASSTHROUGH_LISTENER)],
    )
    listener.internal_listener.SetInParent()
    listener.filter_chains.append(
        proxy_chain(names.PASSTHROUGH_CHAIN, names.PASSTHROUGH_CLUSTER, idle_timeout=idle_timeout(limits))
    )
    return listener


def _policy(name: str, config) -> cluster_pb2.LoadBalancingPolicy.Policy:
    return cluster_pb2.LoadBalancingPolicy.Policy(
        typed_extension_config=extension_pb2.TypedExtensionConfig(name=f"envoy.load_balancing_policies.{name}", typed_config=pack(config))
    )


def node_cluster(node: str, limits: DataPathLimits) -> cluster_pb2.Cluster:
    """The EDS cluster of ``node``'s pods: the endpoint of the destination pod, else passthrough."""
    subset = subset_pb2.Subset(
        fallback_policy=subset_pb2.Subset.DEFAULT_SUBSET,
        default_subset=struct(PASSTHROUGH_SUBSET),
        subset_lb_policy=cluster_pb2.LoadBalancingPolicy(policies=[_policy("round_robin", round_robin_pb2.RoundRobin())]),
    )
    override = override_host_pb2.OverrideHost(
        override_host_sources=[
            override_host_pb2.OverrideHost.OverrideHostSource(
                metadata=metadata_pb2.MetadataKey(
                    key=SELECT_METADATA, path=[metadata_pb2.MetadataKey.PathSegment(key=SELECT_HOST)]
                )
            )
        ],
        fallback_policy=cluster_pb2.LoadBalancingPolicy(policies=[_policy("subset", subset)]),
    )
    cluster = clusters.service_port(
        names.pods_on_node(node), limits, passthrough=(contract.TUNNEL_METADATA,), match_by_metadata=False
    )
    cluster.load_balancing_policy.policies.append(_policy("override_host", override))
    return cluster


def node_clusters(fragments: Fragments, nodes: tuple[str, ...], limits: DataPathLimits) -> FragmentGroup:
    """Per node with a pod CIDR, its EDS cluster (and the pod-select cluster, when there is one)."""
    members = {names.pods_on_node(n): fragments.get(node_cluster, n, limits) for n in nodes}
    if nodes:
        members[names.POD_SELECT_CLUSTER] = fragments.get(pod_select_cluster, limits)
    return FragmentGroup(members)


def _passthrough_endpoint():
    address = address_pb2.Address(
        envoy_internal_address=address_pb2.EnvoyInternalAddress(
            server_listener_name=names.MESH_PASSTHROUGH_LISTENER, endpoint_id=PASSTHROUGH_ENDPOINT_ID
        )
    )
    metadata = base_pb2.Metadata(filter_metadata={"envoy.lb": struct(PASSTHROUGH_SUBSET)})
    return endpoints.bare_lb_endpoint(address, metadata)


def node_endpoints(pods: NodePods, trust_domain: str) -> ClusterLoadAssignment:
    """The ClusterLoadAssignment of one node's pods: built from that node's pods alone."""

    def write(lb_endpoints, pod: PodFact | None) -> None:
        if pod is None:  # last, the way out for a pod outside the mesh
            lb_endpoints.append(_passthrough_endpoint())
            return
        ip, namespace, account = pod
        metadata = endpoints.identity_metadata_template(contract.spiffe_id(trust_domain, namespace, account))
        endpoints.write_internal_endpoint(lb_endpoints.add(), contract.LINEAR_TUNNEL_LISTENER, ip, metadata)

    return endpoints.load_assignment(names.pods_on_node(pods.node), {NO_LOCALITY: [*pods.pods, None]}, write)


def node_endpoint_sets(fragments: Fragments, routes: PodRoutes, trust_domain: str) -> FragmentGroup:
    """Each node's ClusterLoadAssignment (of ``routes.nodes``), rebuilt only for the nodes whose pods
    changed. When the routes were made from the last ones by the nodes whose pods changed
    (``PodRoutes.moved_from``) and the group built for those is still held, it is that group with
    those nodes' looked up again: a pod change looks at its node, not at every node."""
    lineage = routes.moved_from()
    last = fragments.find(node_endpoint_sets, fragments, lineage[0], trust_domain) if lineage else None
    if last is None:
        return FragmentGroup(
            {names.pods_on_node(n.node): fragments.get(node_endpoints, n, trust_domain) for n in routes.nodes}
        )
    members = dict(last.value.members)
    changed = [n for n in routes.nodes if n.node in lineage[1]]  # type: ignore[index]
    for n in changed:
        members[names.pods_on_node(n.node)] = fragments.get(node_endpoints, n, trust_domain)
    return FragmentGroup(members, base=(last.value, tuple(names.pods_on_node(n.node) for n in changed)))
