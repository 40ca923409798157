"""The hop-by-hop path of one connection, computed from the generated config alone.

What the article did by hand (``iptables-save``, ``ip rule``, ``ip route show table 101``,
``config_dump?include_eds`` on both ztunnels), generated for any source pod and destination:
the CNI plan of each node says what the kernel does with the packet, the translated Envoy
resources of each node say what the ztunnel does with the connection. No traffic is sent and
no kernel is read, so it works offline, before anything is applied.

Every hop's values also go into :attr:`Explanation.facts` under the keys of
:data:`FACT_KEYS`, the same keys ``zpilot demo`` fills from what it observes, so the two can be
compared value by value.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from .. import contract as c
from ..cni.desired import Mode, NodePlan
from ..cni.plan import UNKNOWN_ZTUNNEL_VETH
from ..model.addresses import host_cidr, split_mesh_family
from ..model.index import MeshIndex
from ..model.objects import Workload
from ..translators.names import BLACKHOLE_CLUSTER
from ..translators.resources import NodeResources
from ..translators.source_address import FORWARDED_FOR_HEADER
from ..translators.filter_state import ENDPOINT_ID, LOCAL_IP_STATE, SET_FILTER_STATE_FILTER, listener_set_filter_state_config
from ..translators.pod_select import TLV_CLUSTER, TLV_HOST
from ..translators.tcp_proxy import ORIGINAL_DST_HEADER
from . import envoy_config as ec
from .netfilter import Packet, route, rule_text, run_chain
from .rbac_eval import Peer, Verdict, connection_verdict, stream_verdict

#: The facts a path is compared on (explain vs. demo), in path order.
FACT_KEYS = (
    "mark", "ip_rule", "route_table", "tunnel_device", "tproxy_port", "listener", "filter_chain", "cluster", "endpoint",
    "internal_listener", "tunnel_cluster", "tunnel_dial", "connect_authority", "peer_identity",
    "server_identity", "dest_ip_rule", "dest_route_table", "dest_tunnel_device", "dest_tproxy_port", "inbound_listener",
    "inbound_chain", "inbound_cluster", "destination", "pod",
)
#: The interface a packet from another node arrives on (the world's and most nodes' name for it).
NODE_NETWORK_IFACE = "eth0"
ZTUNNEL_IFACE = c.POD_INTERFACE
_TUNNEL_PEERS = {c.OUTBOUND_TUNNEL: c.ZTUNNEL_OUTBOUND_TUNNEL, c.INBOUND_TUNNEL: c.ZTUNNEL_INBOUND_TUNNEL}


@dataclass
class Hop:
    where: str
    what: str
    details: list[str] = field(default_factory=list)


@dataclass
class Explanation:
    source: str
    target: str
    hops: list[Hop] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    outcome: str = ""
    client_ip: str = ""  # the source pod's address: what source.ip policies are judged on

    def hop(self, where: str, what: str, *details: str, **facts: object) -> Hop:
        h = Hop(where, what, list(details))
        self.hops.append(h)
        for key, value in facts.items():
            if value is not None:
                self.facts[key] = str(value)
        return h


class ExplainError(ValueError):
    pass


@dataclass
class Mesh:
    """Everything explain reads: the model, and per node its translated config and CNI plan."""

    index: MeshIndex
    resources: dict[str, NodeResources]
    plans: dict[str, NodePlan]
    layout: str = c.DEFAULT_LAYOUT  # the outbound layout ``resources`` were translated with

    def pod(self, ref: str) -> Workload:
        """By ``namespace/name``, name, name prefix (``sleep``) or IP: with its IPv4 addresses only, as the
        index and the plan see it (a dual-stack pod listing its IPv6 address first is meshed by its IPv4 one)."""
        usable = []
        for w in self.index.cluster.workloads:
            ips, _ = split_mesh_family(w.ips)
            if ips:
                usable.append(replace(w, ips=ips) if ips != w.ips else w)
        for w in usable:
            if ref in (f"{w.namespace}/{w.name}", w.name) or ref in w.ips:
                return w
        prefixed = [w for w in usable if w.name.startswith(ref + "-") and w.namespace != self.index.ztunnel_namespace]
        if len(prefixed) == 1:
            return prefixed[0]
        raise ExplainError(f"no pod {ref!r} (give namespace/name, a pod name or its IP)")


def resolve(mesh: Mesh, host: str, namespace: str = "default") -> str:
    """An IP as it is; a service name (``productpage``, ``productpage.default``, or the FQDN
    ``productpage.default.svc.cluster.local``) as its cluster IP, the way the DNS of a pod in
    ``namespace`` would (a bare name is a service of the pod's own namespace)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    domain = mesh.index.cluster_domain
    for svc in mesh.index.services:
        names = {svc.hostname(domain), f"{svc.name}.{svc.namespace}", f"{svc.name}.{svc.namespace}.svc"}
        if svc.namespace == namespace:
            names.add(svc.name)
        if host in names and svc.cluster_ips:
            return svc.cluster_ips[0]
    raise ExplainError(f"{host!r} is neither an IP nor a service of the model")


def _node_label(mesh: Mesh, node: str) -> str:
    return f"node {node}"


def _ztunnel_label(mesh: Mesh, node: str) -> str:
    zt = mesh.index.ztunnel_on(node)
    return f"ztunnel {zt.name if zt else '?'} ({node})"


def explain(mesh: Mesh, source: str, host: str, port: int) -> list[Explanation]:
    """One explanation per way the connection can go (a service VIP with N endpoints: N)."""
    src = mesh.pod(source)
    host = resolve(mesh, host, src.namespace)
    if not src.ip or not src.node_name:
        raise ExplainError(f"{src.ref} has no IP or node")
    plan = mesh.plans.get(src.node_name)
    if plan is None:
        raise ExplainError(f"no CNI plan for node {src.node_name}")
    base = Explanation(f"{src.namespace}/{src.name} ({src.ip})", f"{host}:{port}", client_ip=src.ip)
    base.hop(f"pod {src.name}", f"connects to {host}:{port} from {src.ip}", "default route via the node")
    node_side = plan.node_side
    iface = f"<veth of {src.name}>"
    intercepted = False
    if plan.mode is Mode.REDIRECT:
        res = run_chain(node_side, "mangle", c.PREROUTING, Packet(src.ip, host, port, iface))
        decision = route(node_side, host, res.packet.mark)
        details = [f"mangle {h.chain}: {h.rule}  => {h.effect}" for h in res.hits]
        intercepted = res.packet.mark & c.MARK_OUTBOUND == c.MARK_OUTBOUND
        if intercepted and decision.route is not None:
            details.append(f"ip rule {rule_text(decision.rule)}" if decision.rule else "ip rule: none")
            details.append(f"ip route {decision.describe()}")
            base.hop(_node_label(mesh, src.node_name), "outbound capture (meshed pod, TCP)", *details,
                     mark=f"{res.packet.mark & c.MARK_OUTBOUND:#x}", route_table=decision.table,
                     ip_rule=rule_text(decision.rule) if decision.rule else None,
                     tunnel_device=decision.route.dev)
            return _through_ztunnel(mesh, base, src, host, port, decision.route.dev)
        details.append(f"not captured: {src.ref} is not in ipset {c.IPSET_NAME}" if not intercepted else "")
        base.hop(_node_label(mesh, src.node_name), "not captured", *[d for d in details if d])
    else:
        base.hop(_node_label(mesh, src.node_name), f"not captured (node mode {plan.mode.value})")
    return _direct(mesh, base, src, host, port)


def _copy(e: Explanation) -> Explanation:
    return Explanation(e.source, e.target, list(e.hops), dict(e.facts), e.outcome, e.client_ip)


def _through_ztunnel(mesh: Mesh, base: Explanation, src: Workload, host: str, port: int, node_dev: str) -> list[Explanation]:
    node = src.node_name or ""
    plan = mesh.plans[node]
    zside = plan.ztunnel_side
    assert zside is not None
    zt_iface = _TUNNEL_PEERS.get(node_dev, ZTUNNEL_IFACE)
    res = run_chain(zside, "mangle", c.PREROUTING, Packet(src.ip or "", host, port, zt_iface))
    decision = route(zside, host, res.packet.mark, own=_ztunnel_addresses(plan))
    where = _ztunnel_label(mesh, node)
    base.hop(where, f"arrives on {zt_iface}", *[f"mangle {h.chain}: {h.rule}  => {h.effect}" for h in res.hits],
             f"ip route {decision.describe()} (delivered to the local socket)", tproxy_port=res.tproxy_port)
    if res.tproxy_port is None:
        base.outcome = "not redirected into the ztunnel's Envoy"
        return [base]
    resources = mesh.resources[node]
    listener = next((l for l in resources.listeners.values()
                     if l.address.socket_address.port_value == res.tproxy_port), None)
    if listener is None:
        base.outcome = f"no listener on port {res.tproxy_port}"
        return [base]
    chain, steps = ec.select_chain(listener, ec.Connection(src.ip or "", host, port))
    walk = " -> ".join(f"{s.input}={s.value}{'' if s.matched else ' (no match)'}" for s in steps)
    if chain is None:
        base.hop(where, f"listener {listener.name}: no filter chain ({walk})")
        base.outcome = "connection closed: no matching filter chain"
        return [base]
    proxy = ec.tcp_proxy(chain)
    cluster_name = proxy.cluster if proxy else ""
    base.hop(where, f"listener {listener.name} -> filter chain {chain.name}", f"matcher: {walk}",
             f"tcp_proxy -> cluster {cluster_name}", listener=listener.name, filter_chain=chain.name,
             cluster=cluster_name)
    cluster = resources.clusters.get(cluster_name)
    if cluster is None:
        base.outcome = f"dropped: cluster {cluster_name} does not exist"
        return [base]
    if proxy is not None and any(t.type == TLV_CLUSTER for t in proxy.proxy_protocol_tlvs):
        return _pod_select(mesh, base, src, host, port, proxy)
    kind = ec.cluster_kind(cluster)
    eps = ec.endpoints(resources, cluster_name) if kind in ("EDS", "STATIC") else []
    if kind == "EDS" or any(ep.internal_listener for ep in eps):
        if not eps:
            base.outcome = f"dropped: cluster {cluster_name} has no endpoints (UH)"
            return [base]
        out = []
        for ep in eps:
            e = _copy(base)
            e.facts["endpoint"] = ep.address
            if ep.internal_listener:
                out += _internal_listener(mesh, e, src, ep, original_dst=f"{host}:{port}")
            else:
                e.hop(where, f"endpoint {ep.address}: plain TCP (the endpoint is outside the mesh)",
                      "original_src keeps the pod's address as the source")
                out += _arrive_plain(mesh, e, src.ip or "", ep.address, spoofed_from=node)
        return out
    if kind == "ORIGINAL_DST":
        dst = f"{host}:{port}"
        if proxy is not None and proxy.tunneling_config.hostname:
            dial = _dial(chain, cluster, dst)
            authority = ec.substitute(proxy.tunneling_config.hostname, {"DOWNSTREAM_LOCAL_ADDRESS": dst})
            base.facts["endpoint"] = dial
            return _tunnel(mesh, base, src, node, cluster_name, dial, authority, ec.pinned_identity(chain),
                           tunnel_src=(src.ip or "?") if _spoofs_source(listener) else _ztunnel_ip(mesh, node))
        base.facts["endpoint"] = dst
        base.hop(where, f"{cluster_name}: ORIGINAL_DST, no tunnel: straight to {dst}",
                 "original_src keeps the pod's address as the source")
        return _arrive_plain(mesh, base, src.ip or "", dst, spoofed_from=node)
    base.hop(where, f"cluster {cluster_name} ({kind}) has no endpoints: the connection is closed (UH)")
    base.outcome = "dropped (blackhole)"
    return [base]


def _pod_select(mesh: Mesh, e: Explanation, src: Workload, host: str, port: int, proxy) -> list[Explanation]:
    """The linear layout's pod-IP path (translators/pod_select.py): the chain of the node whose pod
    CIDR holds the destination sends a PROXY header naming the endpoint to pick and the node's
    cluster to the pod-select listener, whose override_host policy picks the pod's endpoint (the
    tunnel listener, with the identity to pin), or, the address being no meshed pod of that node,
    the passthrough endpoint."""
    node = src.node_name or ""
    resources = mesh.resources[node]
    where = _ztunnel_label(mesh, node)
    tlvs = {t.type: t.format_string.text_format_source.inline_string for t in proxy.proxy_protocol_tlvs}
    picked_cluster = tlvs.get(TLV_CLUSTER, "")
    wanted = ec.substitute(tlvs.get(TLV_HOST, ""), {"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": host})
    select = next(iter(ec.endpoints(resources, proxy.cluster)), None)
    listener = resources.listeners.get(select.internal_listener or "") if select is not None else None
    if select is None or listener is None:
        e.hop(where, f"cluster {proxy.cluster}: no internal listener to select the pod")
        e.outcome = "dropped"
        return [e]
    e.facts["endpoint"] = select.address
    candidates = ec.endpoints(resources, picked_cluster)
    chosen = next((ep for ep in candidates if ep.address == wanted), None)
    fallback = chosen is None
    if fallback:  # the subset policy's default subset: the passthrough endpoint
        chosen = next((ep for ep in candidates if ep.metadata.get("envoy.lb", {}).get("passthrough")), None)
    e.hop(where, f"endpoint {select.address} -> internal listener {listener.name}",
          f"PROXY protocol v2 header: {src.ip} -> {host}:{port}, TLVs host={wanted}, cluster={picked_cluster}",
          f"set_filter_state: tcp_proxy -> cluster {picked_cluster} (override_host: the endpoint {wanted}"
          + (", which it has not: the passthrough endpoint)" if fallback else ")"))
    if chosen is None:
        e.hop(where, f"cluster {picked_cluster} has no endpoint for {host} and no passthrough endpoint (UH)")
        e.outcome = f"dropped: cluster {picked_cluster} has no such endpoint"
        return [e]
    if chosen.internal_listener == c.LINEAR_TUNNEL_LISTENER:
        return _internal_listener(mesh, e, src, chosen, original_dst=f"{host}:{port}")
    passthrough = resources.listeners.get(chosen.internal_listener or "")
    if passthrough is None:
        e.hop(where, f"internal listener {chosen.internal_listener} does not exist")
        e.outcome = "dropped"
        return [e]
    e.hop(where, f"endpoint {chosen.address} -> internal listener {passthrough.name}",
          f"original_dst restores {host}:{port} as the destination (what the pod-select listener recorded)",
          "original_src keeps the pod's address as the source",
          f"tcp_proxy -> cluster {ec.tcp_proxy(passthrough.filter_chains[0]).cluster}")
    return _arrive_plain(mesh, e, src.ip or "", f"{host}:{port}", spoofed_from=node)


_DYNAMIC = re.compile(r"%DYNAMIC_METADATA\((\w+):(\w+)\)%")


def _internal_listener(mesh: Mesh, e: Explanation, src: Workload, ep: ec.EndpointFacts, *,
                       original_dst: str) -> list[Explanation]:
    """Through an internal listener: its original_dst filter makes the destination the endpoint's
    metadata ``local`` (the article's layout), or the endpoint id where the listener takes it (the
    linear layout's service endpoints), or with neither (the linear layout's pod-IP paths) the
    original destination the outbound listener (or the pod-select listener) recorded; the source is the pod's address where it
    was recorded too."""
    node = src.node_name or ""
    resources = mesh.resources[node]
    where = _ztunnel_label(mesh, node)
    listener = resources.listeners.get(ep.internal_listener or "")
    if listener is None or not listener.filter_chains:
        e.hop(where, f"internal listener {ep.internal_listener} does not exist")
        e.outcome = "dropped"
        return [e]
    endpoint_id = ep.address.rpartition("/")[2] if _destination_is_endpoint_id(listener) else ""
    if ":" not in endpoint_id:  # a bare IP (the pod-select path) is no address: Envoy skips it (pod_select.py)
        endpoint_id = ""
    metadata_local = ep.metadata.get(c.ORIGINAL_DST_FILTER, {}).get(c.ORIGINAL_DST_LOCAL)
    local = metadata_local or endpoint_id or original_dst
    local_ip, _, local_port = local.rpartition(":")
    details = []
    if listener.HasField("filter_chain_matcher"):
        chain, steps = ec.select_chain(listener, ec.Connection(src.ip or "", local_ip, int(local_port)))
        if chain is None:
            e.hop(where, f"internal listener {listener.name}: no filter chain for source {src.ip}")
            e.outcome = "connection closed: no matching filter chain"
            return [e]
        walk = " -> ".join(f"{s.input}={s.value}{'' if s.matched else ' (no match)'}" for s in steps)
        details.append(f"filter chain {chain.name} (matcher: {walk})")
    else:
        chain = listener.filter_chains[0]
    proxy = ec.tcp_proxy(chain)
    cluster_name = proxy.cluster if proxy else "?"
    cluster = resources.clusters.get(cluster_name)
    dial = _dial(chain, cluster, local)

    def from_metadata(template: str) -> str:
        return _DYNAMIC.sub(lambda m: str(ep.metadata.get(m.group(1), {}).get(m.group(2), "-")), template)

    authority = ec.substitute(from_metadata(proxy.tunneling_config.hostname if proxy else ""),
                              {"DOWNSTREAM_LOCAL_ADDRESS": local})
    pinned = ec.pinned_identity(chain)
    if c.TUNNEL_METADATA in ep.metadata:
        details.insert(0, f"endpoint metadata {c.TUNNEL_METADATA}: {ep.metadata[c.TUNNEL_METADATA]}")
    origin = ("the endpoint's metadata" if metadata_local else "the endpoint id" if endpoint_id
              else "what the listener before it recorded")
    e.hop(where, f"endpoint {ep.address} -> internal listener {listener.name}", *details,
          f"internal_upstream passes it on; original_dst restores {local} as the destination (from {origin})",
          internal_listener=listener.name)
    return _tunnel(mesh, e, src, node, cluster_name, dial, authority,
                   from_metadata(pinned) if pinned is not None else None,
                   tunnel_src=(src.ip or "?") if _spoofs_source(listener) else _ztunnel_ip(mesh, node))


def _dial(chain, cluster, destination: str) -> str:
    """Where an ORIGINAL_DST tunnel cluster dials, in Envoy's order (``original_dst_cluster.cc``): the
    address the chain gave it in filter state (the linear layout's: the destination's IP on the HBONE or
    the same-node port), else the connection's destination; then the cluster's port override, if any."""
    ip = destination.rpartition(":")[0]
    template = ec.upstream_address(chain)
    dial = destination
    if template:
        dial = ec.substitute(template, {"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": ip, "DOWNSTREAM_LOCAL_ADDRESS": destination})
    override = cluster.original_dst_lb_config.upstream_port_override.value if cluster is not None else 0
    return f"{dial.rpartition(':')[0]}:{override}" if override else dial


def _identity_of_secret(resources: NodeResources, secret: str) -> str:
    ref = resources.secrets.get(secret)
    return ref.spiffe_id if ref and ref.spiffe_id else c.identity_of_secret_name(secret)


def _destination_is_endpoint_id(listener) -> bool:
    """Whether the internal listener makes the endpoint id its destination (filter_state.py)."""
    for f in listener.listener_filters:
        if f.name == SET_FILTER_STATE_FILTER:
            config = listener_set_filter_state_config()
            f.typed_config.Unpack(config)
            if any(v.object_key == LOCAL_IP_STATE and v.format_string.text_format_source.inline_string == ENDPOINT_ID
                   for v in config.on_accept):
                return True
    return False


def _spoofs_source(listener) -> bool:
    """original_src on the listener: its upstream connections carry the downstream's address."""
    return any(f.name == c.ORIGINAL_SRC_FILTER for f in listener.listener_filters)


def _ztunnel_ip(mesh: Mesh, node: str) -> str:
    zt = mesh.index.ztunnel_on(node)
    return zt.ip if zt and zt.ip else "?"


def _ztunnel_addresses(plan: NodePlan) -> dict[str, str]:
    """The ztunnel pod's own address, on its interface: the kernel's ``local`` table delivers
    to it before any rule of the plan (a same-node tunnel from that address, as the linear
    layout's are, gets its replies that way, not by the hairpin rule the article's needs)."""
    zt = plan.ztunnel
    return {zt.ip: ZTUNNEL_IFACE} if zt is not None and zt.ip else {}


def _ztunnel_veth(plan: NodePlan) -> str:
    """The node side of the ztunnel's veth, as the plan names it (its route to the ztunnel's IP)."""
    if plan.ztunnel is not None:
        for r in plan.node_side.routes:
            if r.dst == host_cidr(plan.ztunnel.ip):
                return r.dev
    return UNKNOWN_ZTUNNEL_VETH


def _tunnel(mesh: Mesh, e: Explanation, src: Workload, node: str, cluster_name: str, dial: str,
            authority: str, pinned: str | None, *, tunnel_src: str) -> list[Explanation]:
    resources = mesh.resources[node]
    where = _ztunnel_label(mesh, node)
    cluster = resources.clusters.get(cluster_name)
    tls = ec.tls_facts(cluster.transport_socket) if cluster is not None else None
    client_id = _identity_of_secret(resources, tls.certificate) if tls else "(no TLS)"
    spoofed = tunnel_src != _ztunnel_ip(mesh, node)
    e.hop(where, f"HBONE: HTTP/2 CONNECT {authority} over mTLS to {dial}",
          f"cluster {cluster_name} (ORIGINAL_DST), TLS 1.3, presents {client_id}",
          f"accepts a server whose URI SAN matches {', '.join(tls.peer_san_patterns) if tls else '-'}",
          f"and is exactly {pinned} (pinned: envoy.network.upstream_subject_alt_names)" if pinned
          else "and any identity of the trust domain: nothing pins the destination's",
          f"header x-envoy-original-dst-host: {authority}",
          f"source {tunnel_src}" + (" (original_src: the pod's address)" if spoofed else " (the ztunnel's own)"),
          tunnel_cluster=cluster_name, tunnel_dial=dial, connect_authority=authority, peer_identity=client_id)
    dial_ip, _, dial_port = dial.rpartition(":")
    plan = mesh.plans[node]
    zside = plan.ztunnel_side
    if int(dial_port) == c.PORT_HBONE_LOCAL and zside is not None:
        res = run_chain(zside, "nat", c.OUTPUT, Packet(tunnel_src, dial_ip, int(dial_port), ""))
        local_port = res.redirect_port or c.PORT_HBONE
        # REDIRECT makes the destination 127.0.0.1: the inbound listener answers from there, with
        # its socket mark, and the answer must come back to this ztunnel's own connecting socket
        reply = route(zside, tunnel_src, c.INBOUND_SOCKET_MARK, src="127.0.0.1", own=_ztunnel_addresses(plan))
        delivered = reply.route is not None and reply.route.local
        e.hop(where, "same node: the tunnel is redirected to this ztunnel's own inbound listener",
              *[f"nat {h.chain}: {h.rule}  => {h.effect}" for h in res.hits],
              f"its replies (127.0.0.1:{local_port} -> {tunnel_src}, mark {c.INBOUND_SOCKET_MARK:#x}):"
              f" ip rule {rule_text(reply.rule) if reply.rule else '(main)'}, {reply.describe()}"
              + ("" if delivered else "  => NOT delivered locally"))
        if not delivered:
            e.outcome = (f"the tunnel cannot be set up: the inbound listener's replies to {tunnel_src} leave by"
                         f" {reply.describe()} instead of being delivered locally (istio/istio#42163)")
            return [e]
        return _inbound(mesh, e, node, dial_ip, local_port, client_id)
    dest = mesh.index.workload_by_ip(dial_ip)
    if dest is None or not dest.node_name or dest.node_name not in mesh.plans:
        e.outcome = f"the tunnel goes to {dial}, which is no known pod"
        return [e]
    veth = _ztunnel_veth(plan)
    res = run_chain(plan.node_side, "mangle", c.PREROUTING, Packet(tunnel_src, dial_ip, int(dial_port), veth))
    decision = route(plan.node_side, dial_ip, res.packet.mark)
    e.hop(_node_label(mesh, node), f"the tunnel {tunnel_src} -> {dial} leaves the ztunnel (in on {veth})",
          *[f"mangle {h.chain}: {h.rule}  => {h.effect}" for h in res.hits],
          f"ip rule {rule_text(decision.rule) if decision.rule else '(main)'}: {decision.describe()}")
    return _arrive_at_node(mesh, e, tunnel_src, dial_ip, int(dial_port), dest.node_name,
                           NODE_NETWORK_IFACE, client_id)


def _arrive_at_node(mesh: Mesh, e: Explanation, src_ip: str, dst_ip: str, dport: int, node: str, iface: str,
                    client_id: str | None) -> list[Explanation]:
    plan = mesh.plans[node]
    res = run_chain(plan.node_side, "mangle", c.PREROUTING, Packet(src_ip, dst_ip, dport, iface))
    decision = route(plan.node_side, dst_ip, res.packet.mark)
    details = [f"mangle {h.chain}: {h.rule}  => {h.effect}" for h in res.hits]
    details.append(f"ip rule {rule_text(decision.rule)}" if decision.rule else "ip rule: main table")
    details.append(f"ip route {decision.describe()}")
    captured = decision.route is not None and decision.route.dev in _TUNNEL_PEERS
    e.hop(_node_label(mesh, node), f"{src_ip} -> {dst_ip}:{dport} arrives" + (" and is captured" if captured else ""),
          *details, dest_route_table=decision.table if captured else None,
          dest_ip_rule=rule_text(decision.rule) if captured and decision.rule else None,
          dest_tunnel_device=decision.route.dev if captured and decision.route else None)
    if not captured or decision.route is None:
        pod = mesh.index.workload_by_ip(dst_ip)
        e.facts["destination"] = f"{dst_ip}:{dport}"
        if pod is not None:
            e.facts["pod"] = pod.name
        e.hop(f"pod {pod.name if pod else dst_ip}", f"receives the connection from {src_ip}")
        e.outcome = f"delivered to {pod.ref if pod else dst_ip} (not through a ztunnel)"
        return [e]
    zside = plan.ztunnel_side
    assert zside is not None
    zt_iface = _TUNNEL_PEERS[decision.route.dev]
    zres = run_chain(zside, "mangle", c.PREROUTING, Packet(src_ip, dst_ip, dport, zt_iface))
    zdec = route(zside, dst_ip, zres.packet.mark, own=_ztunnel_addresses(plan))
    e.hop(_ztunnel_label(mesh, node), f"arrives on {zt_iface}",
          *[f"mangle {h.chain}: {h.rule}  => {h.effect}" for h in zres.hits],
          f"ip route {zdec.describe()} (delivered to the local socket)", dest_tproxy_port=zres.tproxy_port)
    if zres.tproxy_port is None:
        e.outcome = "not redirected into the destination ztunnel"
        return [e]
    return _inbound(mesh, e, node, dst_ip, zres.tproxy_port, client_id, original_port=dport)


def _inbound(mesh: Mesh, e: Explanation, node: str, dst_ip: str, listen_port: int, client_id: str | None,
             original_port: int | None = None) -> list[Explanation]:
    resources = mesh.resources[node]
    where = _ztunnel_label(mesh, node)
    listener = next((l for l in resources.listeners.values()
                     if l.address.socket_address.port_value == listen_port), None)
    if listener is None:
        e.outcome = f"no listener on {listen_port} at {where}"
        return [e]
    chain, steps = ec.select_chain(listener, ec.Connection("", dst_ip, original_port or listen_port))
    if chain is None:
        e.hop(where, f"listener {listener.name}: no chain for {dst_ip}")
        e.outcome = "connection closed: no matching filter chain"
        return [e]
    proxy = ec.tcp_proxy(chain)
    if proxy is not None and proxy.cluster == BLACKHOLE_CLUSTER:
        walk = " -> ".join(f"{s.input}={s.value}{'' if s.matched else ' (no match)'}" for s in steps)
        e.hop(where, f"listener {listener.name} -> filter chain {chain.name}", f"matcher: {walk}",
              f"tcp_proxy -> cluster {BLACKHOLE_CLUSTER} (no endpoints: closed, nothing dialed)",
              inbound_listener=listener.name, inbound_chain=chain.name, inbound_cluster=BLACKHOLE_CLUSTER)
        e.outcome = f"refused by ztunnel {node}: connection closed ({chain.name})"
        return [e]
    details = []
    tls = ec.tls_facts(chain.transport_socket) if chain.HasField("transport_socket") else None
    server_id = None
    if tls is not None:
        server_id = _identity_of_secret(resources, tls.certificate)
        ok = client_id is not None and any(re.match(p, client_id) for p in tls.peer_san_patterns)
        details += [f"mTLS: presents {server_id}; client certificate required, validated by {tls.trust}",
                    f"peer {client_id} {'matches' if ok else 'does NOT match'} {', '.join(tls.peer_san_patterns)}"]
    details += ec.rbac_principals(chain)
    target_cluster = ec.connect_route_cluster(chain)
    if target_cluster is not None:
        details.append(f"HTTP/2 CONNECT route -> cluster {target_cluster} (dials x-envoy-original-dst-host)")
        destination = e.facts.get("connect_authority", "?")
    else:
        proxy = ec.tcp_proxy(chain)
        target_cluster = proxy.cluster if proxy else "?"
        details.append(f"tcp_proxy -> cluster {target_cluster} (dials the original destination)")
        destination = f"{dst_ip}:{original_port}"
    e.hop(where, f"listener {listener.name} -> filter chain {chain.name}", *details,
          inbound_listener=listener.name, inbound_chain=chain.name, inbound_cluster=target_cluster,
          server_identity=server_id, destination=destination)
    ip = destination.rpartition(":")[0]
    pod = mesh.index.workload_by_ip(ip)
    verdict = authorization_verdict(chain, e.client_ip, client_id if tls else None, dst_ip, destination)
    e.hop(where, f"authorization: {verdict.describe()}", *_policies_in_force(mesh, pod),
          verdict="allowed" if verdict.allowed else "denied", policy=verdict.policy or None)
    if not verdict.allowed:
        e.outcome = f"refused by {where}: {verdict.describe()}"
        return [e]
    e.facts["pod"] = pod.name if pod else "?"
    e.hop(f"pod {pod.name if pod else ip}", f"receives the connection on {destination}",
          "original_src: its source is the peer the ztunnel saw")
    e.outcome = f"delivered to {pod.ref if pod else destination}" + (f" as {client_id}" if tls else " (plaintext)")
    return [e]


def authorization_verdict(chain, client_ip: str, client_id: str | None, dst_ip: str, destination: str) -> Verdict:
    """What the chain's RBAC filters decide: a CONNECT stream (``client_id``: the mTLS peer) names the
    client in x-forwarded-for and its destination in x-envoy-original-dst-host and ``:authority`` (the
    tunnel's hostname: both of which the inbound guard checks); plaintext is judged on the connection."""
    port = int(destination.rpartition(":")[2] or 0)
    if client_id is None:
        return connection_verdict(chain, Peer(client_ip, client_ip, None, dst_ip, port))
    headers = {ORIGINAL_DST_HEADER: destination, ":authority": destination, FORWARDED_FOR_HEADER: client_ip}
    return stream_verdict(chain, Peer(client_ip, client_ip, client_id, dst_ip, c.PORT_HBONE, headers))


def _policies_in_force(mesh: Mesh, pod: Workload | None) -> list[str]:
    if pod is None:
        return []
    policies = mesh.index.policies_for(pod)
    if policies.empty:
        return [f"no AuthorizationPolicy or STRICT PeerAuthentication applies to {pod.ref}"]
    out = [f"{p.action.value} {p.ref}" for p in policies.deny + policies.allow]
    if policies.mtls.refuses_any_plaintext:
        decided = ", ".join(str(r) for r in policies.mtls.decided_by)
        out.append(f"plaintext: {policies.mtls.describe()} ({decided})")
    return [f"in force for {pod.ref}: " + "; ".join(out)]


def _arrive_plain(mesh: Mesh, e: Explanation, src_ip: str, dst: str, *, spoofed_from: str) -> list[Explanation]:
    ip, _, port = dst.rpartition(":")
    vip = mesh.index.destination(ip, int(port))
    if vip is not None and not mesh.index.destination_endpoints(ip, int(port), spoofed_from):
        # An unbacked VIP is not captured: the ztunnel's own dial meets kube-proxy, as a plain pod's would.
        local = vip.service.node_local and mesh.index.destination_endpoints(ip, int(port))
        verdict = "DROP (no endpoint on this node)" if local else "REJECT (no endpoints)"
        e.hop(_node_label(mesh, spoofed_from), f"kube-proxy: {vip.service.ref} port {vip.port.label}: {verdict}")
        e.outcome = f"{'dropped' if local else 'refused'} by kube-proxy: {vip.service.ref} has no endpoints here"
        return [e]
    dest = mesh.index.workload_by_ip(ip)
    if dest is None or dest.node_name not in mesh.plans:
        e.facts["destination"] = dst
        e.hop(f"{dst}", "outside the cluster's pods: routed by the node's own tables")
        e.outcome = f"to {dst} (no ztunnel on the far side)"
        return [e]
    iface = NODE_NETWORK_IFACE if dest.node_name != spoofed_from else UNKNOWN_ZTUNNEL_VETH
    return _arrive_at_node(mesh, e, src_ip, ip, int(port), dest.node_name or "", iface, None)


def _direct(mesh: Mesh, base: Explanation, src: Workload, host: str, port: int) -> list[Explanation]:
    """Not captured at the source: kube-proxy (for a VIP) and the destination node decide."""
    targets = [(host, port)]
    vip = mesh.index.destination(host, port)
    if vip is not None:
        eps = mesh.index.destination_endpoints(host, port, src.node_name)
        base.hop(_node_label(mesh, src.node_name or ""), f"kube-proxy DNATs {host}:{port} ({vip.service.ref})",
                 *[f"-> {ep.authority}" for ep in eps])
        targets = [(ep.address, ep.port) for ep in eps]
    out = []
    for ip, p in targets:
        e = _copy(base)
        dest = mesh.index.workload_by_ip(ip)
        if dest is None or dest.node_name not in mesh.plans:
            e.facts["destination"] = f"{ip}:{p}"
            e.outcome = f"to {ip}:{p} (no pod of this cluster)"
            out.append(e)
            continue
        iface = NODE_NETWORK_IFACE if dest.node_name != src.node_name else f"<veth of {src.name}>"
        out += _arrive_at_node(mesh, e, src.ip or "", ip, p, dest.node_name or "", iface, None)
    return out
