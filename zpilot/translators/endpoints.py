"""ClusterLoadAssignments of service ports, carrying the HBONE ``tunnel`` metadata contract.

A mesh endpoint is an ``envoy_internal_address`` of the source identity's internal listener,
with metadata saying where the tunnel goes (``tunnel.address``, the peer ztunnel's HBONE port,
or the same-node hairpin port for a pod on this node), what it carries (``tunnel.destination``,
podIP:port) and who must answer (``tunnel.identity``, the pod's SPIFFE ID, which the tunnel's TLS
then requires of the peer: identity_pinning.py). Every outbound layout builds its mesh endpoints
with :func:`tunnel_metadata`, so each pins its destinations the same way. The original_dst filter's ``local`` key is the stock
replacement for Istio's ``set_dst_address`` filter: the internal listener's original_dst filter
reads it as the connection's destination, which the ORIGINAL_DST tunnel cluster then dials.
The keys are :mod:`zpilot.contract`'s, since ``zpilot explain`` reads them back.

A plain endpoint (a pod outside the mesh, a hostNetwork pod, an address that is no pod) has no
metadata at all: the cluster's ``tlsMode-disabled`` socket dials its address directly.

Endpoints are grouped by locality (the node's ``topology.kubernetes.io/region`` and ``zone``),
in (region, zone) order: the order Envoy keeps them in and dumps them back.

The fields Envoy itself fills in when it dumps endpoints (locality, weight, health, the
overprovisioning factor) are set explicitly in the article's layout, so that what we render
equals Envoy's own ``/config_dump?include_eds``; the linear layout leaves an endpoint's out
(:func:`bare_lb_endpoint`), and ``zpilot diff`` ignores them where Envoy adds them.

The linear layout's endpoints (``linear_*``) name no source identity and no node: every mesh endpoint
is the one internal listener ``contract.LINEAR_TUNNEL_LISTENER`` with endpoint id ``podIP:port`` (its
destination), and metadata ``tunnel.identity`` only where its cluster does not name the identity of
all its mesh endpoints; no transport socket match metadata (its cluster's one transport socket
serves plain endpoints too). A real Envoy holds each namespace of each endpoint's metadata, about
2 KiB apiece: 20,000 endpoints at issue 13's R (docs/scale.md), most of which now have none.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

from google.protobuf import wrappers_pb2

from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from ..model.index import Endpoint
from .. import contract
from ..model.objects import Locality
from .envoy_common import socket_address, struct

ClusterLoadAssignment = endpoint_pb2.ClusterLoadAssignment
OVERPROVISIONING_FACTOR = 140  # Envoy's default, which its config_dump always shows


def lb_endpoint(address: address_pb2.Address, metadata: base_pb2.Metadata | None = None):
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address, health_check_config=endpoint_components_pb2.Endpoint.HealthCheckConfig()
        ),
        health_status=health_check_pb2.HEALTHY,
        load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
    )
    if metadata is not None:
        endpoint.metadata.CopyFrom(metadata)
    return endpoint


def bare_lb_endpoint(address: address_pb2.Address, metadata: base_pb2.Metadata | None = None):
    """An endpoint without the fields Envoy fills in alike (health, weight, an empty health check
    config): the linear layout's, which a node has tens of thousands of (``zpilot diff`` ignores
    the defaults Envoy's dump adds, xds/dump_diff.py)."""
    endpoint = endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=address))
    if metadata is not None:
        endpoint.metadata.CopyFrom(metadata)
    return endpoint


def tunnel_metadata(endpoint: Endpoint, peer_identity: str, same_node: bool) -> base_pb2.Metadata:
    """The HBONE contract of one mesh endpoint (the module docstring), whatever listener it names."""
    if not peer_identity:
        raise ValueError(f"mesh endpoint {endpoint.authority} without an identity to pin")
    tunnel_port = contract.PORT_HBONE_LOCAL if same_node else contract.PORT_HBONE
    tunnel_address = f"{endpoint.address}:{tunnel_port}"
    tunnel = {
        contract.TUNNEL_ADDRESS: tunnel_address,
        contract.TUNNEL_DESTINATION: endpoint.authority,
        contract.TUNNEL_IDENTITY: peer_identity,
    }
    return base_pb2.Metadata(
        filter_metadata={
            contract.TRANSPORT_SOCKET_MATCH_METADATA: struct(contract.TUNNEL_PROTOCOL),
            contract.TUNNEL_METADATA: struct(tunnel),
            contract.ORIGINAL_DST_FILTER: struct({contract.ORIGINAL_DST_LOCAL: tunnel_address}),
        }
    )


def mesh_endpoint(endpoint: Endpoint, identity: str, peer_identity: str, same_node: bool):
    """``identity`` (the source's) names the internal listener; ``peer_identity`` is the pod's."""
    address = address_pb2.Address(
        envoy_internal_address=address_pb2.EnvoyInternalAddress(
            server_listener_name=contract.tunnel_listener(identity), endpoint_id=endpoint.authority
        )
    )
    return lb_endpoint(address, tunnel_metadata(endpoint, peer_identity, same_node))


T = TypeVar("T")


def load_assignment(
    cluster_name: str, groups: dict[Locality, list[T]], write: Callable[[object, T], None] | None = None
) -> ClusterLoadAssignment:
    """One ``LocalityLbEndpoints`` per locality that has endpoints, in (region, zone) order.

    ``groups`` hold the endpoints as messages, or, with ``write``, as whatever ``write(lb_endpoints,
    item)`` makes an endpoint of in place (``lb_endpoints.add()``): a message built apart is copied
    whole into its group, ten times what making it there costs (tens of thousands at R)."""
    cla = ClusterLoadAssignment(cluster_name=cluster_name)
    cla.policy.overprovisioning_factor.value = OVERPROVISIONING_FACTOR
    for locality in sorted(groups):
        if not groups[locality]:
            continue
        group = cla.endpoints.add()
        group.locality.SetInParent()
        if locality.region:
            group.locality.region = locality.region
        if locality.zone:
            group.locality.zone = locality.zone
        if write is None:
            group.lb_endpoints.extend(groups[locality])
        else:
            for item in groups[locality]:
                write(group.lb_endpoints, item)
    return cla


def service_port_endpoints(
    cluster_name: str, identity: str, endpoints: list[Endpoint], node: str, trust_domain: str
) -> ClusterLoadAssignment:
    groups: dict[Locality, list] = {}
    for ep in endpoints:
        if ep.meshed:
            lb = mesh_endpoint(ep, identity, peer_identity(ep, trust_domain), same_node=ep.node_name == node)
        else:
            lb = lb_endpoint(socket_address(ep.address, ep.port))
        groups.setdefault(ep.locality, []).append(lb)
    return load_assignment(cluster_name, groups)


def identity_metadata(peer_identity: str) -> base_pb2.Metadata:
    """Only the identity to pin (``tunnel.identity``): what the linear layout's way to the internal
    listener for pod-IP destinations carries."""
    if not peer_identity:
        raise ValueError("no identity to pin")
    return base_pb2.Metadata(filter_metadata={contract.TUNNEL_METADATA: struct({contract.TUNNEL_IDENTITY: peer_identity})})


def peer_identity(endpoint: Endpoint, trust_domain: str) -> str:
    """The identity a mesh endpoint's peer must prove: its pod's."""
    if endpoint.workload is None:  # the model marks only known meshed pods meshed
        raise ValueError(f"meshed endpoint {endpoint.authority} has no pod")
    return contract.spiffe_id(trust_domain, endpoint.workload.namespace, endpoint.workload.service_account)


def shared_identity(endpoints: list[Endpoint] | tuple[Endpoint, ...], trust_domain: str) -> str | None:
    """The identity every mesh endpoint of a service port names, when they all name the same one
    (the usual case: a service's pods run as one service account); else None."""
    return _the_one({peer_identity(ep, trust_domain) for ep in endpoints if ep.meshed})


def _the_one(identities: set[str]) -> str | None:
    return identities.pop() if len(identities) == 1 else None


def write_internal_endpoint(lb, listener: str, endpoint_id: str, metadata: base_pb2.Metadata | None = None) -> None:
    """Make ``lb`` (a new ``LbEndpoint``: ``lb_endpoints.add()``) the bare endpoint (:func:`bare_lb_endpoint`)
    of internal listener ``listener`` with ``endpoint_id`` and ``metadata``, in place."""
    address = lb.endpoint.address.envoy_internal_address
    address.server_listener_name = listener
    address.endpoint_id = endpoint_id
    if metadata is not None:
        lb.metadata.CopyFrom(metadata)


@functools.lru_cache(maxsize=1 << 12)
def identity_metadata_template(peer_identity: str) -> base_pb2.Metadata:
    """:func:`identity_metadata`, made once per identity (never modified: copied into each endpoint)."""
    return identity_metadata(peer_identity)


def linear_mesh_endpoint(endpoint: Endpoint, trust_domain: str, cluster_identity: str | None = None):
    """A mesh endpoint of the linear layout: the one internal listener, told where the connection
    goes (the endpoint id, ``podIP:targetPort``, which the listener makes its destination:
    filter_state.py) and who must answer (``tunnel.identity``), unless its cluster names that
    identity for all its endpoints (``cluster_identity``, :func:`shared_identity`; the cluster's
    ``internal_upstream`` socket passes the cluster's ``tunnel`` namespace on where an endpoint has
    none). The peer ztunnel's port (HBONE, or the hairpin port on this node) is the tunnel
    cluster's business, so the endpoint is the same on every node. Nothing selects its transport
    socket: the linear layout's service cluster has one for every endpoint (``clusters.service_port``)."""
    lb = endpoint_components_pb2.LbEndpoint()
    _write_linear_mesh_endpoint(lb, endpoint, peer_identity(endpoint, trust_domain), cluster_identity)
    return lb


def _write_linear_mesh_endpoint(lb, endpoint: Endpoint, identity: str, cluster_identity: str | None) -> None:
    """:func:`linear_mesh_endpoint` in ``lb``, its pod's ``identity`` given."""
    metadata = identity_metadata_template(identity) if identity != cluster_identity else None
    write_internal_endpoint(lb, contract.LINEAR_TUNNEL_LISTENER, endpoint.authority, metadata)


def linear_service_port_endpoints(cluster_name: str, endpoints: list[Endpoint], trust_domain: str) -> ClusterLoadAssignment:
    """A service port's endpoints with no source identity and no node in them (the identity each
    names is its own pod's, the one to pin, written in the cluster instead when all name the same,
    :func:`shared_identity`): every node that is given the same endpoints gets the same bytes (all
    of them, unless the service keeps traffic on the node: ``internalTrafficPolicy: Local``)."""
    groups: dict[Locality, list[tuple[Endpoint, str | None]]] = {}
    for ep in endpoints:  # each with its identity, found once
        groups.setdefault(ep.locality, []).append((ep, peer_identity(ep, trust_domain) if ep.meshed else None))
    cluster_identity = _the_one({identity for group in groups.values() for _ep, identity in group if identity is not None})

    def write(lb_endpoints, item: tuple[Endpoint, str | None]) -> None:
        ep, identity = item
        lb = lb_endpoints.add()
        if identity is None:
            lb.endpoint.address.CopyFrom(socket_address(ep.address, ep.port))  # bare_lb_endpoint's
            return
        _write_linear_mesh_endpoint(lb, ep, identity, cluster_identity)

    return load_assignment(cluster_name, groups, write)
