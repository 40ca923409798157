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
from typing import Any, Callable, Collection, Iterable

from google.protobuf import duration_pb2, wrappers_pb2

from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_filter
from xds.type.matcher.v3 import matcher_pb2

from .. import contract, protowire
from ..model.addresses import host_prefix_len
from ..model.objects import Workload
from ..model.policy import WorkloadPolicies
from . import consistency, inbound_guard, matcher, names
from .context import SERIALIZED_BYTES, ListenerParts, NodeView, SerializedChains, record_hash
from .fragments import Fragment, Fragments
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
        name="envoy.filters.network.rbac", typed_config=pack(rbac_filter.RBAC(rules=rules, stat_prefix=names.MESH_RBAC_STAT_PREFIX))
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
    whose listener still has to exist and needs some chain to be valid). A new message (the
    caller adds to it), copied from one made once: a node's own parts are made again on each of
    its pods' changes."""
    listener = Listener()
    listener.CopyFrom(_transparent_template(name, bind_address, port, limits))
    return listener


@functools.lru_cache(maxsize=64)
def _transparent_template(name: str, bind_address: str, port: int, limits: DataPathLimits) -> Listener:
    """:func:`_transparent_listener`'s message (never modified: copied)."""
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

_FILTER_CHAINS = Listener.DESCRIPTOR.fields_by_name["filter_chains"].number


def _hbone_listener(
    bind_address: str, limits: DataPathLimits, trust_domain: str, admin_port: int, pods: tuple[LocalPod, ...]
) -> Listener:
    listener = _transparent_listener(contract.INBOUND_LISTENER, bind_address, contract.PORT_HBONE, limits)
    mesh_rbac = mesh_identities_rbac(trust_domain)
    for pod in pods:
        listener.filter_chains.append(_hbone_chain(limits, trust_domain, admin_port, mesh_rbac, pod))
    return listener


def _hbone_chain(
    limits: DataPathLimits,
    trust_domain: str,
    admin_port: int,
    mesh_rbac: listener_components_pb2.Filter,
    local: LocalPod,
) -> listener_components_pb2.FilterChain:
    pod, secret, policies = local
    return listener_components_pb2.FilterChain(
        name=names.inbound_chain(pod.ip),
        filter_chain_match=_pod_match(pod.ip),
        filters=[mesh_rbac, connect_terminator(limits, pod.ip, connect_http_filters(pod, policies, admin_port))],
        transport_socket=downstream_tls(secret, trust_domain),
    )


def _plaintext_listener(
    bind_address: str, limits: DataPathLimits, admin_port: int, pods: tuple[LocalPod, ...]
) -> Listener:
    listener = _plaintext_own(bind_address, limits, admin_port, _pod_ips(pods))
    for pod in pods:  # chosen by IP in the listener's matcher, not by a filter_chain_match
        listener.filter_chains.append(_plaintext_chain(limits, pod))
    listener.filter_chains.append(inbound_guard.refused_plaintext_chain(limits))
    return listener


def _plaintext_own(bind_address: str, limits: DataPathLimits, admin_port: int, pod_ips: tuple[str, ...]) -> Listener:
    """The plaintext listener without its chains: its matcher picks the chain by the pod's IP."""
    listener = _transparent_listener(
        contract.INBOUND_PLAINTEXT_LISTENER, bind_address, contract.PORT_INBOUND_PLAINTEXT, limits
    )
    pod_chains = {ip: names.inbound_chain(ip) for ip in pod_ips if ip}
    listener.filter_chain_matcher.CopyFrom(inbound_guard.plaintext_matcher(pod_chains, admin_port))
    return listener


@functools.lru_cache(maxsize=64)
def _plaintext_gate(bind_address: str, limits: DataPathLimits, admin_port: int) -> Listener:
    """:func:`_plaintext_own` of no pod: the plaintext listener's own part when its pods' map is a
    piece (:func:`_plaintext_parts`), made once (never modified: copied)."""
    return _plaintext_own(bind_address, limits, admin_port, ())


def _pod_ips(pods: tuple[LocalPod, ...]) -> tuple[str, ...]:
    return tuple([pod.ip for pod, _secret, _policies in pods])


def _plaintext_chain(limits: DataPathLimits, local: LocalPod) -> listener_components_pb2.FilterChain:
    pod, _secret, policies = local
    authorization = rbac.plaintext_filters(pod, policies)
    chain = proxy_chain(
        names.inbound_chain(pod.ip),
        names.VIRTUAL_INBOUND,
        idle_timeout=idle_timeout(limits),
        stat_prefix=names.PLAINTEXT_PROXY_STAT_PREFIX,
        connect_on_data=bool(authorization),
    )
    proxy = list(chain.filters)
    del chain.filters[:]
    chain.filters.extend([*authorization, *proxy])
    return chain


class _LocalPods(tuple):
    """A node's local pods (``LocalPod`` each), hashed once: they are the last argument of both
    inbound listeners' pieces, and a hundred pods' hash (each pod's fields, its policies) is most
    of what looking those up in the memo costs. Equal to, and hashed as, the plain tuple."""

    def __hash__(self) -> int:
        found = self.__dict__.get("hash")
        if found is None:
            found = self.__dict__["hash"] = tuple.__hash__(self)
        return found


class _LocalPod(tuple):
    """One local pod (``LocalPod``), hashed once and kept from one translation of its node to the
    next (:func:`_local_pods`): hashing a node's pods was hashing each pod's fields and its policies,
    a Python call per dataclass, again on each change of one of them. Equal to, and hashed as, the
    plain tuple."""

    def __hash__(self) -> int:
        found = self.__dict__.get("hash")
        if found is None:
            found = self.__dict__["hash"] = tuple.__hash__(self)
        return found


def _local_pods(view: NodeView) -> tuple[LocalPod, ...]:
    """The node's local pods, each the one made for it before when its pod, its policies and its
    secret's name are the same (its hash made once: a node's hundred pods are hashed on each change).
    Kept in the memo (``Fragments.kept_pods``), by node, each by the ids of its pod and policies
    (held by the value: the ids stay theirs); only a node's current pods are kept, and only the
    nodes :func:`keep_pods_of` leaves."""
    policies_for = view.policies_for
    kept = view.fragments.kept_pods
    before = kept.get(view.node, {})
    made: dict[tuple[int, int], _LocalPod] = {}
    pods = []
    for pod, _identity, secret in view.local_secrets:
        policies = policies_for(pod)
        key = (id(pod), id(policies))
        found = before.get(key)
        if found is None or found[0] is not pod or found[2] is not policies or found[1] != secret:
            found = _LocalPod((pod, secret, policies))
        made[key] = found
        pods.append(found)
    if len(kept) > _KEPT_NODES and view.node not in kept:
        kept.clear()
    kept[view.node] = made
    return _LocalPods(pods)


#: More nodes than any cluster's: then the whole is let go (made again as nodes are translated).
_KEPT_NODES = 10_000


def keep_pods_of(fragments: Fragments, nodes: Collection[str]) -> None:
    """Let go of the local pods kept in ``fragments`` (:func:`_local_pods`) for nodes not in
    ``nodes``: a node gone from the model (or no longer given config) would otherwise keep its
    last pods, and what they hold, alive for the process's life."""
    kept = fragments.kept_pods
    for node in list(kept):  # (a copy of the keys: another thread may translate meanwhile)
        if node not in nodes:
            kept.pop(node, None)


def inbound_listeners(view: NodeView) -> tuple[Listener, Listener]:
    """:func:`inbound_listener` and :func:`inbound_plaintext_listener`, from one list of the local
    pods (what keys both in the memo: made once per node).

    Translated for a consumer that joins bytes (``view.whole_listeners`` false: the producer), a
    node that changed keeps its pods' chains serialized (``SerializedChains``): see :func:`_pieced`."""
    pods = _local_pods(view)
    if view.whole_listeners:
        return _inbound_listener(view, pods), _inbound_plaintext_listener(view, pods)
    options = view.options
    bind, limits, admin_port, td = options.bind_address, options.limits, options.admin_port, view.trust_domain
    mesh_rbac = mesh_identities_rbac(td)
    hbone = _pieced(
        view,
        (_hbone_listener, (bind, limits, td, admin_port, pods)),
        (_hbone_chains, (limits, td, admin_port, pods)),
        lambda pod: _hbone_chain(limits, td, admin_port, mesh_rbac, pod),
        lambda chains: view.fragment(_hbone_parts, bind, limits, chains),
    )
    plaintext = _pieced(
        view,
        (_plaintext_listener, (bind, limits, admin_port, pods)),
        (_plaintext_chains, (limits, pods)),
        lambda pod: _plaintext_chain(limits, pod),
        lambda chains: view.fragment(
            _plaintext_parts, bind, limits, admin_port, view.fragment(_plaintext_by_pod, _pod_ips(pods)), chains,
            view.fragment(_refused_chains, limits),
        ),
    )
    return hbone, plaintext


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


# -- a node's own chains kept serialized, from its first change on ----------------------------

Built = tuple[Callable[..., Any], tuple]


def _pieced(
    view: NodeView,
    whole: Built,
    chains: Built,
    make_chain: Callable[[LocalPod], listener_components_pb2.FilterChain],
    parts: Callable[[Fragment], Fragment],
) -> Listener:
    """An inbound listener for the producer: the whole listener (``whole``: builder and
    arguments, the last of which are the pods), or its own part and its pods' chains kept
    serialized (``chains``), whichever the memo holds.

    A cold generation builds every node's listener whole and serializes it whole (one message,
    one serialization and one walk of its facts per listener). When a node's pods change, its
    new chains are derived from the ones it had (``Fragments.latest``: the whole listener, or
    the chains kept serialized), the chain of each pod that changed made and serialized, every
    other taken as its bytes and facts (``make_chain``: one pod's chain): a pod change costs
    its chain, not its node's hundred. The node's chains are kept so from then on; joined with
    its own part (``parts``) they are byte for byte the whole listener
    (tests/properties/test_inbound_parts.py)."""
    fragments = view.fragments
    pods = whole[1][-1]
    line = (whole[0], view.node, whole[1][:-1])  # the node's, as long as the rest is the same
    base = fragments.latest(line)
    if base is None:  # never built (a cold generation): whole
        listener = view.fragment(whole[0], *whole[1])
        fragments.note(line, listener)
        return listener.value
    if base.key[1][-1] == pods:  # the node's pods as they were (looked up by its line: the pods are not hashed)
        found = view.use(base)
        if base.key[0] is whole[0]:  # never changed since built whole
            return base.value
    else:
        found = view.use(fragments.derive(chains[0], chains[1], lambda: _derived(base, pods, make_chain)))
        fragments.note(line, found)
    made: ListenerParts = parts(found).value
    view.listener_parts[made.own.name] = made
    return made.own


def _derived(
    base: Fragment, pods: tuple[LocalPod, ...], make_chain: Callable[[LocalPod], listener_components_pb2.FilterChain]
) -> SerializedChains:
    """The chains of ``pods`` from ``base`` (a whole listener or chains kept serialized, of the
    pods its last argument names): the pods both have first and last kept as they are, the ones
    between made (one pod added, gone or changed: that pod's)."""
    before: tuple[LocalPod, ...] = base.key[1][-1]
    if isinstance(base.value, SerializedChains):
        records, facts, hashes = base.value.records, base.value.facts, base.value.hashes
    else:
        records, facts, hashes = _cut(base)
    same = min(len(before), len(pods))
    start = 0
    while start < same and before[start] == pods[start]:
        start += 1
    end = 0
    while end < same - start and before[-1 - end] == pods[-1 - end]:
        end += 1
    made = [make_chain(pod) for pod in pods[start : len(pods) - end]]
    new = tuple(map(_record, made))
    kept = len(before) - end
    return SerializedChains(
        records[:start] + new + records[kept:],
        facts[:start] + tuple(map(consistency.chain_facts, made)) + facts[kept:],
        hashes[:start] + tuple(map(record_hash, new)) + hashes[kept:],
    )


#: Where a whole inbound listener's fragment keeps how its pods' chains are cut from it: where each
#: chain's record is in its serialization, each chain's facts and its hash (:func:`prepare_cuts`).
_CUT = "inbound.cut"

Cut = tuple[tuple[tuple[int, int], ...], tuple[consistency.ChainFacts, ...], tuple[str, ...]]


def _cut(base: Fragment) -> tuple[tuple[bytes, ...], tuple[consistency.ChainFacts, ...], tuple[str, ...]]:
    """The records, facts and hashes of the pods' chains of ``base``, a whole listener (the first
    chains: one per pod its last argument names), its chains' bytes cut from it serialized (one
    serialization, not one per chain); where they are, their facts and hashes as
    :func:`prepare_cuts` found them ahead of time, when it did."""
    serialized = _serialized_whole(base)
    prepared = base.derived.get(_CUT)
    if prepared is None:
        prepared = _cut_of(base, serialized)
    bounds, facts, hashes = prepared
    return tuple(bytes(serialized[start:end]) for start, end in bounds), facts, hashes


def _serialized_whole(base: Fragment) -> bytes | memoryview:
    """A whole listener's deterministic serialization: the bytes its consumer kept of it
    (``SERIALIZED_BYTES``: the producer's served resource, a view), else serialized here."""
    kept = base.derived.get(SERIALIZED_BYTES)
    return kept if kept is not None else base.value.SerializeToString(deterministic=True)


def _cut_of(base: Fragment, serialized: bytes | memoryview) -> Cut:
    listener: Listener = base.value
    count = len(base.key[1][-1])
    bounds = tuple(protowire.field_bounds(serialized, _FILTER_CHAINS)[:count])
    if len(bounds) != count:
        raise ValueError(f"listener {listener.name!r}: {len(bounds)} filter chains for {count} pods")
    view = memoryview(serialized)
    hashes = tuple(record_hash(view[start:end]) for start, end in bounds)
    return bounds, consistency.chains_of(listener, count, base.derived.get(consistency.LISTENER_FACTS)), hashes


def prepare_cuts(view: NodeView) -> int:
    """Pay ahead what the node's next pod change would: for each of its inbound listeners still
    whole as a full build made it (never changed since), where its pods' chains are in its
    serialization, their facts and their hashes, kept on its fragment (offsets, facts and hashes,
    not a copy of the bytes: megabytes over a hundred nodes). The first change of the node then cuts its chains
    from the listener serialized (:func:`_derived`) without walking them; what it makes is the
    same either way. How many listeners were prepared (0: nothing left to do for this node)."""
    options = view.options
    bind, limits, admin_port, td = options.bind_address, options.limits, options.admin_port, view.trust_domain
    done = 0
    for builder, args in ((_hbone_listener, (bind, limits, td, admin_port)), (_plaintext_listener, (bind, limits, admin_port))):
        base = view.fragments.latest((builder, view.node, args))
        if base is None or base.key[0] is not builder or _CUT in base.derived:
            continue
        base.derived[_CUT] = _cut_of(base, _serialized_whole(base))
        if builder is _plaintext_listener:  # its map of pods, a piece from then on: what it selects, entry by entry
            by_pod = _plaintext_by_pod(_pod_ips(base.key[1][-1]))
            if isinstance(by_pod, matcher.SerializedMap):
                consistency.prepare_map(by_pod)
        done += 1
    return done


def _record(chain: listener_components_pb2.FilterChain) -> bytes:
    """A chain as its listener's ``filter_chains`` entry (tag, length, chain)."""
    return protowire.field_bytes(_FILTER_CHAINS, chain.SerializeToString(deterministic=True))


def _serialized(chains: Iterable[listener_components_pb2.FilterChain]) -> SerializedChains:
    made = list(chains)
    records = tuple(map(_record, made))
    return SerializedChains(records, tuple(map(consistency.chain_facts, made)), tuple(map(record_hash, records)))


def _hbone_chains(
    limits: DataPathLimits, trust_domain: str, admin_port: int, pods: tuple[LocalPod, ...]
) -> SerializedChains:
    """The HBONE listener's chains of ``pods``, serialized (made so by :func:`_derived`, from the
    chains the node had: this is what that gives)."""
    mesh_rbac = mesh_identities_rbac(trust_domain)
    return _serialized(_hbone_chain(limits, trust_domain, admin_port, mesh_rbac, pod) for pod in pods)


def _plaintext_chains(limits: DataPathLimits, pods: tuple[LocalPod, ...]) -> SerializedChains:
    """The plaintext listener's chains of ``pods``, serialized (as :func:`_hbone_chains`)."""
    return _serialized(_plaintext_chain(limits, pod) for pod in pods)


def _hbone_parts(bind_address: str, limits: DataPathLimits, chains: Fragment) -> ListenerParts:
    """The HBONE listener as its own part and its pods' chains (a fragment of ``SerializedChains``)."""
    own = _transparent_listener(contract.INBOUND_LISTENER, bind_address, contract.PORT_HBONE, limits)
    return ListenerParts(own, chains=(chains,))


def _plaintext_parts(
    bind_address: str, limits: DataPathLimits, admin_port: int, by_pod: Fragment, chains: Fragment, refused: Fragment
) -> ListenerParts:
    """The plaintext listener as its own part (the matcher's gate of the ztunnel's ports), the
    matcher's map of its pods (``by_pod``: :func:`_plaintext_by_pod`, joined where the gate leads
    when no port of the ztunnel's is asked for), its pods' chains and the refusing chain (every
    node's alike)."""
    own = Listener()
    own.CopyFrom(_plaintext_gate(bind_address, limits, admin_port))
    if not by_pod.value:  # no pod: the gate leads nowhere else
        return ListenerParts(own, chains=(chains, refused))
    own.filter_chain_matcher.on_no_match.SetInParent()  # where the map of its pods goes
    return ListenerParts(own, chains=(chains, refused), matches=(by_pod,), match_paths=(_BY_POD_PATH,))


def _plaintext_by_pod(pod_ips: tuple[str, ...]) -> "matcher.SerializedMap | bytes":
    """The plaintext matcher's map of the node's pods (:func:`inbound_guard.plaintext_matcher`'s),
    serialized from each pod's entry (kept), not made as messages again for each change, as its
    entries (``matcher.SerializedMap``, whose bytes are ``inbound_guard.serialized_by_pod``'s);
    empty bytes for no pod."""
    pod_chains = {ip: names.inbound_chain(ip) for ip in pod_ips if ip}
    return matcher.serialized_exact_map("ip", pod_chains) if pod_chains else b""


#: Where the map of the pods goes in the plaintext listener: its matcher's ``on_no_match``.
_BY_POD_PATH = (
    Listener.DESCRIPTOR.fields_by_name["filter_chain_matcher"].number,
    matcher_pb2.Matcher.DESCRIPTOR.fields_by_name["on_no_match"].number,
)


def _refused_chains(limits: DataPathLimits) -> tuple[listener_components_pb2.FilterChain, ...]:
    return (inbound_guard.refused_plaintext_chain(limits),)
