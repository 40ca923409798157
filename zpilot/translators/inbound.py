"""The receiving side: the inbound listener (the HBONE port: mTLS + HTTP/2 CONNECT) and the
plaintext one, one filter chain per meshed pod on this node.

A chain of the inbound listener judges a connection in this order:

1. the mTLS handshake: the client holds a certificate of our CA (and the chain presents the pod's);
2. network RBAC on the outer mTLS peer: any identity of our trust domain, nothing else (the
   source workload's identity, as the 2022 design judged it);
3. in the CONNECT HTTP connection manager (:func:`connect_http_filters`), each stream: the inbound
   guard (it must name this very pod, on a port that is not the ztunnel's: inbound_guard.py), then
   the pod's own policies (``rbac.py``), then the router to ``virtual_inbound``, whose route too
   matches only this pod's address.

The plaintext listener picks its chain with a matcher: a ztunnel port is refused, else the chain
of the destination pod (inbound_guard.py), where the pod's policies judge the connection.
"""

from __future__ import annotations

import functools

from google.protobuf import duration_pb2, wrappers_pb2

from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_filter

from .. import contract
from ..model.addresses import host_prefix_len
from ..model.objects import Workload
from ..model.policy import WorkloadPolicies
from . import inbound_guard, names
from .context import NodeView
from . import rbac
from .envoy_common import (
    access_log,
    original_dst_filter,
    original_src_filter,
    pack,
    socket_address,
    socket_mark,
)
from .limits import DataPathLimits, http_idle_options, idle_timeout
from .tcp_proxy import proxy_chain
from .tls import downstream_tls, identity_matcher

Listener = listener_pb2.Listener


def _pod_match(ip: str) -> listener_components_pb2.FilterChainMatch:
    return listener_components_pb2.FilterChainMatch(
        prefix_ranges=[address_pb2.CidrRange(address_prefix=ip, prefix_len=wrappers_pb2.UInt32Value(value=host_prefix_len(ip)))]
    )


def mesh_identities_rbac(trust_domain: str) -> listener_components_pb2.Filter:
    rules = rbac_config.RBAC(
        action=rbac_config.RBAC.ALLOW,
        policies={
            "mesh-identities": rbac_config.Policy(
                permissions=[rbac_config.Permission(any=True)],
                principals=[
                    rbac_config.Principal(
                        authenticated=rbac_config.Principal.Authenticated(principal_name=identity_matcher(trust_domain))
                    )
                ],
            )
        },
    )
    return listener_components_pb2.Filter(
        name="envoy.filters.network.rbac", typed_config=pack(rbac_filter.RBAC(rules=rules, stat_prefix="tcp."))
    )


def connect_http_filters(pod: Workload, policies: WorkloadPolicies, admin_port: int) -> list[hcm.HttpFilter]:
    """The CONNECT manager's HTTP filters for ``pod``'s chain, in the order they judge a stream:
    first where it may go at all (the guard), then who may go there (the pod's AuthorizationPolicies,
    ``policies``), and last the router."""
    return [
        inbound_guard.connect_guard(pod.ip, admin_port),
        *rbac.connect_filters(pod, policies),
        _ROUTER,
    ]


_ROUTER = hcm.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))


def connect_terminator(
    limits: DataPathLimits, pod_ip: str, http_filters: list[hcm.HttpFilter]
) -> listener_components_pb2.Filter:
    """An HCM that accepts CONNECT to ``pod_ip`` and relays the stream's bytes to ``virtual_inbound``,
    once ``http_filters`` (the last of which is the router) let it through.

    A CONNECT stream is a whole tunnelled TCP connection, so the stream idle timeout is the
    connection's (Envoy's default, 5 minutes, cut quiet database connections), and the route
    has no timeout (Envoy's default 15 s would start once a client half-closes).
    """
    manager = hcm.HttpConnectionManager()
    manager.CopyFrom(_terminator_template(limits))  # all alike but for the pod: copied, not built (10,000 at R)
    manager.route_config.virtual_hosts[0].routes[0].match.CopyFrom(rbac.connect_route_match(pod_ip))
    manager.http_filters.extend(http_filters)
    return listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(manager))


@functools.lru_cache(maxsize=64)
def _terminator_template(limits: DataPathLimits) -> hcm.HttpConnectionManager:
    """:func:`connect_terminator`'s manager without its route's match and its HTTP filters (never
    modified: copied)."""
    idle = idle_timeout(limits)
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(),
        route=route_components_pb2.RouteAction(
            cluster=names.VIRTUAL_INBOUND,
            timeout=duration_pb2.Duration(seconds=0),
            upgrade_configs=[
                route_components_pb2.RouteAction.UpgradeConfig(
                    upgrade_type="CONNECT",
                    connect_config=route_components_pb2.RouteAction.UpgradeConfig.ConnectConfig(),
                )
            ],
        ),
    )
    return hcm.HttpConnectionManager(
        stat_prefix="inbound_hcm",
        route_config=route_pb2.RouteConfiguration(
            name="local_route",
            virtual_hosts=[route_components_pb2.VirtualHost(name="local_service", domains=["*"], routes=[route])],
        ),
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions(allow_connect=True),
        stream_idle_timeout=idle,
        common_http_protocol_options=http_idle_options(limits),
        access_log=[access_log(contract.INBOUND_LISTENER)],
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="CONNECT")],
    )


def _transparent_listener(name: str, bind_address: str, port: int, limits: DataPathLimits) -> Listener:
    """Connections for no local pod end in the blackhole (so do all, on a node with no meshed pod,
    whose listener still has to exist and needs some chain to be valid)."""
    return Listener(
        name=name,
        address=socket_address(bind_address, port),
        transparent=wrappers_pb2.BoolValue(value=True),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        listener_filters=[original_dst_filter(), original_src_filter()],
        socket_options=[
            socket_mark(contract.INBOUND_SOCKET_MARK, "Set socket mark to packets coming back from inbound listener")
        ],
        access_log=[access_log(name)],
        default_filter_chain=proxy_chain(f"blackhole {name}", names.BLACKHOLE_CLUSTER, idle_timeout=idle_timeout(limits)),
    )


#: What an inbound listener's chain of one local pod is made from: the pod, its secret, its policies.
LocalPod = tuple[Workload, str, WorkloadPolicies]


def _hbone_listener(
    bind_address: str, limits: DataPathLimits, trust_domain: str, admin_port: int, pods: tuple[LocalPod, ...]
) -> Listener:
    listener = _transparent_listener(contract.INBOUND_LISTENER, bind_address, contract.PORT_HBONE, limits)
    mesh_rbac = mesh_identities_rbac(trust_domain)
    for pod, secret, policies in pods:
        listener.filter_chains.append(
            listener_components_pb2.FilterChain(
                name=names.inbound_chain(pod.ip),
                filter_chain_match=_pod_match(pod.ip),
                filters=[mesh_rbac, connect_terminator(limits, pod.ip, connect_http_filters(pod, policies, admin_port))],
                transport_socket=downstream_tls(secret, trust_domain),
            )
        )
    return listener


def _plaintext_listener(
    bind_address: str, limits: DataPathLimits, admin_port: int, pods: tuple[LocalPod, ...]
) -> Listener:
    listener = _transparent_listener(
        contract.INBOUND_PLAINTEXT_LISTENER, bind_address, contract.PORT_INBOUND_PLAINTEXT, limits
    )
    for pod, _secret, policies in pods:
        authorization = rbac.plaintext_filters(pod, policies)
        chain = proxy_chain(
            names.inbound_chain(pod.ip),
            names.VIRTUAL_INBOUND,
            idle_timeout=idle_timeout(limits),
            stat_prefix="virtual_inbound_plaintext",
            connect_on_data=bool(authorization),
        )
        proxy = list(chain.filters)
        del chain.filters[:]
        chain.filters.extend([*authorization, *proxy])
        listener.filter_chains.append(chain)  # chosen by IP in the matcher below, not by a filter_chain_match
    listener.filter_chains.append(inbound_guard.refused_plaintext_chain(limits))
    pod_chains = {pod.ip: names.inbound_chain(pod.ip) for pod, _secret, _policies in pods if pod.ip}
    listener.filter_chain_matcher.CopyFrom(inbound_guard.plaintext_matcher(pod_chains, admin_port))
    return listener


def _local_pods(view: NodeView) -> tuple[LocalPod, ...]:
    return tuple((pod, names.workload_secret(view.identity_of(pod), pod), view.policies_for(pod)) for pod in view.local_pods)


def inbound_listeners(view: NodeView) -> tuple[Listener, Listener]:
    """:func:`inbound_listener` and :func:`inbound_plaintext_listener`, from one list of the local
    pods (what keys both in the memo: made once per node)."""
    pods = _local_pods(view)
    return _inbound_listener(view, pods), _inbound_plaintext_listener(view, pods)


def inbound_listener(view: NodeView) -> Listener:
    """The HBONE listener: per local pod, a chain with its TLS identity and its policies. A shared
    piece (fragments.py): a node whose pods and their policies did not change keeps the very same
    one, whatever changed elsewhere."""
    return _inbound_listener(view, _local_pods(view))


def inbound_plaintext_listener(view: NodeView) -> Listener:
    """The plaintext listener: per local pod, a chain with its policies, picked by a matcher that
    refuses the ztunnel's own ports (inbound_guard.py). A shared piece, as the HBONE listener."""
    return _inbound_plaintext_listener(view, _local_pods(view))


def _inbound_listener(view: NodeView, pods: tuple[LocalPod, ...]) -> Listener:
    options = view.options
    return view.shared(_hbone_listener, options.bind_address, options.limits, view.trust_domain, options.admin_port, pods)


def _inbound_plaintext_listener(view: NodeView, pods: tuple[LocalPod, ...]) -> Listener:
    options = view.options
    return view.shared(_plaintext_listener, options.bind_address, options.limits, options.admin_port, pods)
