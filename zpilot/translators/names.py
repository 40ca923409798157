"""Generated names that only the translators use: chains and clusters, and who references whom.

These strings are load-bearing: filter_chain_matcher actions name chains, tcp_proxy filters and
EDS name clusters. Keeping them here means the two ends of each reference can never drift apart.
Names another part of zpilot also uses (listeners, secrets, identities) are in
:mod:`zpilot.contract`; the helpers below apply them to model objects.
"""

from __future__ import annotations

import re

from .. import contract
from ..model.objects import ServicePort, Service, Workload

VIRTUAL_INBOUND = "virtual_inbound"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CHAIN = "PassthroughFilterChain"
BLACKHOLE_CHAIN = "BlackHoleCluster"  # the article's matcher names the chain after the cluster
#: The stat prefix of each inbound plaintext chain's tcp_proxy (``tcp.virtual_inbound_plaintext.*``), and of
#: each HBONE chain's network RBAC on the peer's identity (``tcp.`` then Envoy's ``rbac.*``): one chain per
#: local pod, each with a stats scope of its own, so Envoy makes these names once per pod
#: (``translators/bootstrap.py`` tags them first).
PLAINTEXT_PROXY_STAT_PREFIX = "virtual_inbound_plaintext"
MESH_RBAC_STAT_PREFIX = "tcp."


def workload_identity(trust_domain: str, workload: Workload) -> str:
    return contract.spiffe_id(trust_domain, workload.namespace, workload.service_account)


def workload_secret(identity: str, workload: Workload, pod_secrets: bool = True) -> str:
    """The SDS name of ``workload``'s certificate: with ``pod_secrets``, the pod's own, as the
    article-era ztunnel named it (:func:`zpilot.contract.workload_secret_name`); else its identity's,
    the SPIFFE ID alone (``TranslateOptions.pod_secrets``)."""
    return contract.workload_secret_name(identity, workload.name, workload.uid) if pod_secrets else identity


def service_chain(identity: str, service: Service, port: ServicePort, cluster_domain: str) -> str:
    """Chain and EDS cluster name for (source identity, service port)."""
    return f"{identity}_to_{port.label}_{service.hostname(cluster_domain)}_outbound_internal"


def tunnel_cluster(identity: str) -> str:
    return f"outbound_tunnel_clus_{identity}"


def pod_tunnel_cluster(identity: str) -> str:
    return f"outbound_pod_tunnel_clus_{identity}"


def pod_local_tunnel_cluster(identity: str) -> str:
    return f"outbound_pod_local_tunnel_clus_{identity}"


def pod_chain(cluster_name: str, peer_identity: str) -> str:
    """The outbound chain tunnelling to pod IPs of ``peer_identity`` through ``cluster_name``."""
    return f"fc-{cluster_name}_to_{peer_identity}"


def inbound_chain(ip: str) -> str:
    return f"inbound_{ip}"


# -- the linear layout (outbound_linear.py) -------------------------------------------------------
def pod_direct_chain(peer_identity: str) -> str:
    """The outbound chain for the meshed pod IPs of ``peer_identity`` (one per identity in the mesh)."""
    return f"pod_direct_to_{peer_identity}"


def pod_internal_cluster(peer_identity: str) -> str:
    """The static cluster that chain hands its connections to: the internal listener, by an
    endpoint naming ``peer_identity`` as the identity to pin."""
    return f"outbound_pod_internal_to_{peer_identity}"


#: The first token of a service port's tcp_proxy stats (``tcp.svc.<port>_<fqdn>.*``; the article layout's since round
#: ten) and of its cluster's (:func:`service_cluster_stat_name`): a
#: fixed one, so that the bootstrap leaves them out (``--service-stats traffic`` or ``none``) by a prefix, which
#: Envoy checks on the stat's name as it stands, where a regex needs the name made a string first; the
#: tcp_proxy tag takes it out of the metric's name with the port's name (``translators/bootstrap.py``), so
#: ``/stats/prometheus`` reads as before. 2,000 chains at R, 16 stats each, each chain a stats scope of its own.
SERVICE_TCP_STATS_TOKEN = "svc"


def service_tcp_stat_prefix(chain: str) -> str:
    """The stat prefix of the tcp_proxy of a service port's chain ``chain`` (either layout)."""
    return f"{SERVICE_TCP_STATS_TOKEN}.{chain}"


def service_cluster_stat_name(cluster: str) -> str:
    """The ``alt_stat_name`` of a service port's cluster (either layout): its stats are
    ``cluster.svc.<name>.*``, the same fixed token first as its tcp_proxy's, so that ``--service-stats none``
    leaves them out by a prefix (Envoy's fast path: no regex, so no name made a string, for any stat it makes);
    the cluster tag takes ``svc.`` out with the name, so ``/stats/prometheus`` reads as before."""
    return f"{SERVICE_TCP_STATS_TOKEN}.{cluster}"


#: The first token of a node's pods chain's tcp_proxy stats in the linear layout (``tcp.pods.pods_on_<node>.*``),
#: for the same reason: ``--pod-cluster-stats traffic`` leaves them out by a prefix (100 chains at R, 16 stats
#: each; the ``pods_on_<node>`` cluster's traffic counters count the same connections and bytes), and the tcp_proxy
#: tag takes it out with the name, so ``--pod-cluster-stats all`` reads ``envoy_tcp_prefix="pods_on_<node>"``.
POD_TCP_STATS_TOKEN = "pods"


def pods_tcp_stat_prefix(node: str) -> str:
    """The stat prefix of the tcp_proxy of the linear layout's chain to ``node``'s pods."""
    return f"{POD_TCP_STATS_TOKEN}.{pods_on_node(node)}"


#: The first token of a linear tunnel chain's tcp_proxy stats (``tcp.tunnel.tunnel_[local_]<id>.*``, named after
#: the chain): unless every stat is asked for, the bootstrap leaves them out by a prefix (the tunnel cluster's own
#: traffic counters count the same connections and bytes; 200 chains at R, whose nodes host 100 identities each),
#: and the tcp_proxy tag takes it out with the name, as it does ``svc.`` and ``pods.``.
TUNNEL_TCP_STATS_TOKEN = "tunnel"


def tunnel_tcp_stat_prefix(chain: str) -> str:
    """The stat prefix of the tcp_proxy of the linear layout's tunnel chain ``chain``: named after the chain,
    not its cluster, which an identity's two chains (to another node, to this one) share, so that with every
    stat asked for the two sides still count apart."""
    return f"{TUNNEL_TCP_STATS_TOKEN}.{chain}"


def linear_service_chain(service: Service, port: ServicePort, cluster_domain: str) -> str:
    """Chain and EDS cluster name for a service port, the same on every node (no source identity in
    it): ``<port>_<fqdn>``. It is written seven times per service port on every node (matcher
    action, chain, tcp_proxy cluster and stat prefix, cluster, load assignment), so no suffix: an
    FQDN tells it from every other name here (none has a dot)."""
    return f"{port.label}_{service.hostname(cluster_domain)}"


#: The part of a stat name a service port's chain or cluster gives it: ``<port>_<name>.<namespace>.svc.``
#: (then the cluster domain). A port name, a Service's and a namespace have neither "." nor "_" (Kubernetes
#: names), so no other name here matches: a pod's node (``pods_on_<node>``) has two "_" before its
#: first "."; an identity (the tunnels') no ".svc." after ``<x>_<y>.<z>``. The article layout's
#: (identity, service port) names end the same way after ``<identity>_to_``. No "/" in it, nor in what
#: follows it (``SERVICE_PORT_STAT_REST``): an identity always has one (``.../ns/N/sa/S``), so a name
#: made of one (``outbound_pod_internal_to_<identity>``) is never taken for a service port's, whatever
#: dots its trust domain or service account has.
SERVICE_PORT_STAT_NAME = r"(?:.*_to_)?[^._/]+_[^._/]+\.[^._/]+\.svc\."
#: The rest of a service port's name and of the stat: no "/" (see ``SERVICE_PORT_STAT_NAME``).
SERVICE_PORT_STAT_REST = r"[^/]*"

#: How an identity (``contract.SPIFFE_SCHEME`` then ``<trust domain>/ns/<ns>/sa/<sa>``) reads in a stat's name: Envoy writes its
#: "://" as "_" (but in ``ssl.certificate.<secret>``, where it stays). The trust domain may hold dots, a
#: namespace cannot; a ServiceAccount name can (Kubernetes allows a DNS subdomain): what follows this prefix
#: is taken by :data:`DOTTED_NAME_IN_STATS` where the name ends the zpilot name.
IDENTITY_IN_STATS = r"spiffe_[^/]+/ns/[^/.]+/sa/"

#: What can follow a zpilot name in one of Envoy's stat names (the stat itself): a token no label of a Kubernetes
#: name can be (one with an "_" or a capital: ``upstream_cx_total``, ``circuit_breakers``, ``tlsMode-disabled``,
#: most of Envoy's stats), or one of the few stats and stat groups whose first token has neither (``version``,
#: ``default.total_match_count``, ``ssl.*``, ``http2.*``, a listener's ``http.<prefix>.*``, the router's
#: ``internal.upstream_rq_*``), seen on a real Envoy 1.40 (tests/xds/test_envoy_cluster_stats.py). The first
#: alternative alone at the top: libc++'s std::regex nests ``a|b|c`` as ``(a|b)|c`` and copies its state at
#: each ``|`` it passes, so the common case passes one, not five (about a tenth of this regex's cost on the
#: ``pods_on_<node>`` stats, callgrind).
STAT_AFTER_NAME = (
    r"[a-z0-9-]*[^a-z0-9.-]|(?:version$|default\.total_match_count$|ssl\.|http2?\.|(?:in|ex)ternal\.upstream_rq_)"
)
#: A Kubernetes name that may hold dots (a node's, a ServiceAccount's: a DNS subdomain, lowercase letters, digits,
#: "-" and "."), whole, as the last part of a name in a stat's name. A dot cannot tell the name from the stat
#: after it (Envoy's separator), so the name is taken up to the first dot that :data:`STAT_AFTER_NAME` follows
#: (a lazy repeat and a lookahead: Envoy runs ``stats_tags`` regexes with std::regex, ECMAScript, which has both,
#: as Python's ``re`` has). A name with a label ``ssl``, ``http`` or ``http2`` followed by more labels would
#: still end before it; a name without dots costs one lookahead more than ``[^.]+``.
DOTTED_NAME_IN_STATS = rf"[a-z0-9-]+(?:\.[a-z0-9-]+)*?(?=\.(?:{STAT_AFTER_NAME}))"

#: A regex of a whole SDS secret name zpilot makes, as it reads in a stat's name (``sds.<secret>.*`` and
#: ``<listener or cluster>.ssl.certificate.<secret>.*``), for Envoy's ``envoy.xds_resource_name`` and
#: ``envoy.tls_certificate`` tags: a pod's certificate ``<identity>~<pod>~<uid>``
#: (:func:`zpilot.contract.workload_secret_name`: each part ends at a "~", a UID has no dot), an identity's
#: own (its ServiceAccount's name whole, dots and all: :data:`DOTTED_NAME_IN_STATS`), or any other name up to
#: its first dot (``contract.ROOT_CA_SECRET``), as Envoy does. The UID is tried first as Kubernetes writes one, a
#: lowercase UUID, in fixed counts: Envoy runs these regexes with std::regex, which takes a fixed count without
#: the step per character a ``+`` costs it (each of a node's pods has 10 ``sds.<secret>.*`` stats: about 35 M
#: fewer of node-0's Envoy instructions at R, docs/scale.md); any other UID is the run up to the dot, as before
#: (the same match either way: the value is always followed by a dot).
_UID_IN_STATS = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SECRET_STAT_TAG_VALUE = (rf"spiffe(?:_|://)[^/]+/ns/[^/.]+/sa/[^/~]+~[^~]+~(?:{_UID_IN_STATS}|[^.~]+)|"
                         rf"spiffe(?:_|://)[^/]+/ns/[^/.]+/sa/{DOTTED_NAME_IN_STATS}|[^.]+")


def stat_name_tag_value(cluster_domain: str, other: str = r"[^.]+") -> str:
    """A regex of a whole name zpilot gives a cluster or a tcp_proxy's stat prefix, as it reads in a stat's
    name, for Envoy's ``envoy.cluster_name`` and ``envoy.tcp_prefix`` tags (``translators/bootstrap.py``).

    Envoy's own extractors end a name at its first dot, and the rest of the name then lands in the metric's
    name. A name cannot be told from the stat after it by its characters (both may hold dots), so each of
    zpilot's shapes with dots is spelled out, first match winning (RE2 picks the first alternative that
    matches): an (identity, service port) name of the article layout, ``<identity>_to_<port>_<fqdn>_outbound_internal``;
    a name made of a prefix and an identity (the tunnels' clusters and listeners); a service port's
    ``<port>_<fqdn>``, which ends with the cluster domain; and any other name up to its first dot, as Envoy
    does (``xds-grpc``, ``virtual_inbound``), or what ``other`` says. A node's name and a ServiceAccount's
    (the identity's last part) may hold dots (``pods_on_ip-10-0-1-7.ec2.internal``): they are taken whole by
    :data:`DOTTED_NAME_IN_STATS`.

    ``pods_on_<node>`` comes first (a node name has no "_": none of the other shapes can match it): one
    cluster and one tcp_proxy per node, they make most of a node's cluster and tcp stats at R, and Envoy runs
    these regexes with std::regex, which tries the alternatives in order, each one that fails at a cost (a
    third of the time for such a name, with libc++)."""
    service_port = rf"[^./_]+_[^./_]+\.[^./_]+\.svc\.{re.escape(cluster_domain)}"
    return "|".join((
        rf"{re.escape(PODS_ON_PREFIX)}{DOTTED_NAME_IN_STATS}",
        rf"{IDENTITY_IN_STATS}[^/]+?_to_{service_port}_outbound_internal",
        rf"[a-z_]*{IDENTITY_IN_STATS}{DOTTED_NAME_IN_STATS}",
        service_port,
        other,
    ))


def any_name_but(word: str) -> str:
    """A regex of any name without a dot but ``word`` (RE2 has no lookahead): what Envoy's
    ``envoy.listener_address`` takes from ``listener.<name>.``, all but its ``admin``."""
    alternatives = [rf"{re.escape(word[:i])}[^.{re.escape(word[i])}][^.]*" for i in range(len(word))]
    return "|".join([*alternatives, rf"{re.escape(word)}[^.]+", *(re.escape(word[:i]) for i in range(1, len(word)))])


def linear_tunnel_chain(identity: str) -> str:
    return f"tunnel_{identity}"


def linear_local_tunnel_chain(identity: str) -> str:
    """The identity's chain for a destination pod on this node (the ``contract.PORT_HBONE_LOCAL`` hairpin),
    through the same cluster as its chain to another node (:func:`tunnel_cluster`)."""
    return f"tunnel_local_{identity}"


# -- the linear layout's pod-IP destinations found by node pod CIDR (outbound_linear.py) ------------
#: The static cluster every "pods on a node" chain hands its connections to: the internal listener
#: :data:`POD_SELECT_LISTENER`, told by PROXY protocol TLVs which pod and which node's cluster.
POD_SELECT_CLUSTER = "pod_select"
POD_SELECT_LISTENER = "pod_select_lis"
#: The internal listener a pod-IP destination that is no meshed pod is handed to: it passes the
#: connection through to its destination with the client pod's address.
MESH_PASSTHROUGH_LISTENER = "mesh_passthrough_lis"


#: What :func:`pods_on_node` names start with.
PODS_ON_PREFIX = "pods_on_"


def pods_on_node(node: str) -> str:
    """The outbound chain, EDS cluster and ClusterLoadAssignment of the meshed pods inside ``node``'s
    pod CIDRs (a Kubernetes node name has no underscore, a service port's chain name no "_on_")."""
    return f"{PODS_ON_PREFIX}{node}"
