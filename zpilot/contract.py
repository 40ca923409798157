"""The ztunnel contract: every number and name that two parts of zpilot must agree on.

A ztunnel works only if the node's redirection (``zpilot.cni``), the Envoy config sent to the
ztunnel (``zpilot.translators``), its certificates (``zpilot.certs``), the ADS server that
recognises it (``zpilot.xds``) and the tools that explain or observe a connection
(``zpilot.explain``, ``zpilot.world``) use the same ports, socket marks, route tables, device
names, node id, secret names, SPIFFE IDs and metadata keys. Each is written here once, so the
two ends of each reference cannot drift apart; ``tests/contract`` checks that no other module
spells one of them out, and that the CNI plan's TPROXY ports and marks are the generated
listeners'.

The values are those of Istio's 2022 ambient mesh (branch ``experimental-ambient``: the CNI
agent ``cni/pkg/ambient``, the ztunnel DaemonSet's init script, ``ztunnelgen.go``), as the
article *Transparent Traffic Intercepting and Routing in the L4 Network of Istio Ambient Mesh*
shows them, so an operator's notes, dashboards and ``ip rule`` / ``iptables-save`` habits carry
over. This module sits below ``zpilot.model`` and imports nothing of zpilot.
"""

from __future__ import annotations

import re
from types import MappingProxyType

# -- the ztunnel's ports ---------------------------------------------------------------------

#: ``ztunnel_outbound``: pods' outbound TCP, delivered by TPROXY from the outbound tunnel (the
#: port a sidecar's outbound capture uses too).
PORT_OUTBOUND = 15001
#: ``ztunnel_inbound_plaintext``: TCP to a meshed pod that did not come through a tunnel.
PORT_INBOUND_PLAINTEXT = 15006
#: ``ztunnel_inbound``: HBONE (HTTP/2 CONNECT over mutual TLS), Istio's tunnel port ever since.
PORT_HBONE = 15008
#: Same-node HBONE: a tunnel to a pod of the ztunnel's own node goes to ``podIP:15088``, and the
#: ztunnel's nat OUTPUT rule redirects it to its own :data:`PORT_HBONE` (the 2022 hairpin).
PORT_HBONE_LOCAL = 15088
#: Envoy's admin API, as on every Istio proxy (``curl 127.0.0.1:15000/config_dump``).
PORT_ADMIN = 15000
#: The admin API listens on loopback only: it can dump the config and stop Envoy.
ADMIN_ADDRESS = "127.0.0.1"
#: The ztunnel's readiness port (Istio's status port): a static listener of the bootstrap that
#: answers ``GET /ready`` from the admin API and nothing else, so a kubelet can probe it while the
#: admin API stays on loopback (``zpilot bootstrap --readiness-port``).
PORT_READINESS = 15021
#: The one admin path the readiness listener forwards: 200 once Envoy is LIVE (initial xDS done).
READINESS_PATH = "/ready"
#: The block Istio reserves for its proxies' own ports (15000-15090), every port above among them:
#: the receiving ztunnel never opens a tunnel to one of them (translators/inbound_guard.py), which
#: would reach its admin API or loop back into its own listeners.
ZTUNNEL_PORT_RANGE = range(15000, 15091)

# -- the control plane's own ports (``zpilot serve``), where istiod has the same services ----------

#: ADS over gRPC, where a ztunnel's bootstrap points: istiod's xDS port number (plaintext there; zpilot
#: serves TLS on it unless started with ``--insecure-xds``).
PORT_XDS = 15010
#: The debug API: istiod's monitoring port. It shows every node's config, so it stays on localhost
#: unless told otherwise (and then requires a bearer token).
PORT_DEBUG = 15014
#: Prometheus ``/metrics``: the port Istio's proxies serve their merged metrics on.
PORT_METRICS = 15020

# -- packet marks on the node (each matched as mark/mark, as cni/pkg/ambient did) -------------

MARK_OUTBOUND = 0x100  #: TCP from a meshed pod: policy-routed to the ztunnel through istioout
MARK_SKIP = 0x200  #: already handled (out of a tunnel, or from the ztunnel): normal routing
MARK_CONN_SKIP = 0x220  #: a connection never to redirect (the ztunnel's own, UDP, kubelet probes)
MARK_PROXY = 0x210  #: a connection the ztunnel makes on behalf of a pod (spoofed source)
MARK_PROXY_RETURN = 0x040  #: the replies of a MARK_PROXY connection: back to the ztunnel

# -- marks inside the ztunnel pod (matched under ZTUNNEL_MARK_MASK) ----------------------------

ZTUNNEL_MARK_MASK = 0xFFF
#: Set by the TPROXY rules: deliver to the local listener (table ``TABLE_INBOUND``: ``local default``).
TPROXY_MARK = 0x400
#: SO_MARK of ``ztunnel_outbound``'s sockets: its replies go back through pistioout. 0x401, not
#: 0x400: it must not match the TPROXY rule's mark under the mask (stock-envoy-notes.md).
OUTBOUND_SOCKET_MARK = 0x401
#: SO_MARK of ``ztunnel_inbound`` and ``ztunnel_inbound_plaintext``: replies go back through pistioin.
INBOUND_SOCKET_MARK = 0x402
#: The mark Envoy's ``original_src`` filter puts on the connections whose source it spoofs: 1234,
#: as Istio configures it. It selects no ztunnel rule, so those connections take the main table.
ORIGINAL_SRC_MARK = 0x4D2
#: Replies to spoofed connections, arriving on the ztunnel pod's own interface: deliver them
#: locally (table ``TABLE_INBOUND``).
PASSTHROUGH_MARK = 0x4D3

# -- tunnel devices between the node and its ztunnel pod -------------------------------------

INBOUND_TUNNEL = "istioin"  #: node side: traffic for a meshed pod goes to the ztunnel through it
OUTBOUND_TUNNEL = "istioout"  #: node side: a meshed pod's outbound traffic goes to the ztunnel
ZTUNNEL_INBOUND_TUNNEL = "pistioin"  #: the ztunnel pod's end of istioin
ZTUNNEL_OUTBOUND_TUNNEL = "pistioout"  #: the ztunnel pod's end of istioout
#: The 2022 values: one VNI per direction, and per direction a /30 with the node at .1 and the
#: ztunnel at .2, the gateways of the policy routes on either side.
INBOUND_VNI = 1000
OUTBOUND_VNI = 1001
INBOUND_NODE_ADDRESS = "192.168.126.1"
INBOUND_ZTUNNEL_ADDRESS = "192.168.126.2"
OUTBOUND_NODE_ADDRESS = "192.168.127.1"
OUTBOUND_ZTUNNEL_ADDRESS = "192.168.127.2"
TUNNEL_PREFIXLEN = 30
#: Geneve's IANA port. VXLAN, when it stands in, uses it too: the node rules stay identical, and
#: it cannot collide with a cluster overlay's own VXLAN (Calico 4789, flannel 8472).
TUNNEL_PORT = 6081
#: The pod's interface as a CNI plugin names it inside the pod: the ztunnel's own, in 2022's script.
POD_INTERFACE = "eth0"

# -- policy routing ----------------------------------------------------------------------------

TABLE_INBOUND = 100  #: node: the ztunnel and one route per meshed pod via istioin; ztunnel: local delivery
TABLE_OUTBOUND = 101  #: to the ztunnel through the outbound tunnel (and back)
TABLE_PROXY_RETURN = 102  #: replies of proxied connections, back to the ztunnel
OWNED_TABLES = (TABLE_INBOUND, TABLE_OUTBOUND, TABLE_PROXY_RETURN)
#: ``ip rule`` priorities 100-103 on the node, as cni/pkg/ambient installed them.
NODE_RULE_PRIORITIES = (100, 101, 102, 103)
#: 19999 first: same-node HBONE hairpin replies (from 127.0.0.1, after the PORT_HBONE_LOCAL
#: REDIRECT) are delivered locally instead of leaving through pistioin by rule 20002 (istio/istio#42163).
ZTUNNEL_HAIRPIN_RULE_PRIORITY = 19999
HAIRPIN_SOURCE = "127.0.0.1"
#: The init script's rules 20000-20003 in the ztunnel pod, after our hairpin rule.
ZTUNNEL_RULE_PRIORITIES = (ZTUNNEL_HAIRPIN_RULE_PRIORITY, 20000, 20001, 20002, 20003)
#: The kernel's ``from all lookup main``: rule 100 ``goto``s it to skip our tables.
MAIN_RULE_PRIORITY = 32766

# -- iptables and ipset --------------------------------------------------------------------------

#: Every chain named so, in mangle and nat, belongs to zpilot (``iptables-save | grep ztunnel-``).
CHAIN_PREFIX = "ztunnel-"
PREROUTING = "ztunnel-PREROUTING"
POSTROUTING = "ztunnel-POSTROUTING"
INPUT = "ztunnel-INPUT"
OUTPUT = "ztunnel-OUTPUT"
FORWARD = "ztunnel-FORWARD"
#: The meshed pods of a node, commented with each pod's UID.
IPSET_NAME = "ztunnel-pods-ips"
IPSET_TYPE = "hash:ip"

# -- who a ztunnel is: the Envoy node --------------------------------------------------------

#: Node metadata key naming the Kubernetes node (Istio's ISTIO_META_NODE_NAME). The ADS server
#: serves a stream the config of this node; it is what ``zpilot bootstrap`` writes.
NODE_NAME_METADATA = "NODE_NAME"
#: The environment variable a DaemonSet sets from the downward API (``spec.nodeName``).
NODE_NAME_ENV = "NODE_NAME"
#: The CNI agent's own pod, from the downward API (``metadata.name``, ``metadata.namespace``): whose DaemonSet
#: it asks after as it stops (zpilot/cni/exit_cleanup.py).
POD_NAME_ENV = "POD_NAME"
POD_NAMESPACE_ENV = "POD_NAMESPACE"
#: Envoy ``node.cluster`` of every ztunnel.
NODE_CLUSTER = "ztunnel"
#: The node id ``zpilot bootstrap`` writes, ``ztunnel~<node>``: led by the proxy type, as Istio's
#: ``<type>~<ip>~<pod>~<domain>`` ids are. Read back up to the next ``~``.
NODE_ID_PREFIX = "ztunnel~"


def node_id(node: str) -> str:
    """The Envoy node id of ``node``'s ztunnel."""
    return NODE_ID_PREFIX + node


def node_of_id(envoy_node_id: str) -> str | None:
    """The node a :func:`node_id` names (up to a further ``~``); None for an id of another form."""
    if not envoy_node_id.startswith(NODE_ID_PREFIX):
        return None
    return envoy_node_id[len(NODE_ID_PREFIX) :].split("~", 1)[0] or None


# -- identities and SDS secret names ---------------------------------------------------------

SPIFFE_SCHEME = "spiffe://"
#: Istio's default trust domain (``meshConfig.trustDomain``).
DEFAULT_TRUST_DOMAIN = "cluster.local"
#: The cluster DNS domain of every Service name zpilot makes (``<name>.<namespace>.svc.<domain>``: the
#: model's default, which nothing changes); the ztunnel bootstrap's stat tags know a service port's name by it.
CLUSTER_DOMAIN = "cluster.local"


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """A service account's identity, the URI SAN of its certificates (Istio's form)."""
    return f"{SPIFFE_SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"


#: How :func:`spiffe_id` reads, for messages.
SPIFFE_ID_FORM = spiffe_id("<trust domain>", "<namespace>", "<service account>")


def split_spiffe_id(uri: str) -> tuple[str, str, str] | None:
    """(trust domain, namespace, service account) of a URI of :func:`spiffe_id`'s form, else None.
    Only the shape is checked: what each part may hold is the CA's business (``zpilot.certs.spiffe``)."""
    if not uri.startswith(SPIFFE_SCHEME):
        return None
    parts = uri[len(SPIFFE_SCHEME) :].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        return None
    return parts[0], parts[2], parts[4]


def spiffe_id_regex(trust_domain: str) -> str:
    """A regex for any identity of ``trust_domain`` and nothing else: what TLS and RBAC accept."""
    return rf"^{SPIFFE_SCHEME}{re.escape(trust_domain)}/ns/[^/]+/sa/[^/]+$"


#: The SDS secret of the trust bundle: every TLS context validates its peer against it.
ROOT_CA_SECRET = "ROOTCA"
#: Separates identity, pod name and pod UID in a workload secret name.
SECRET_NAME_SEPARATOR = "~"


def workload_secret_name(identity: str, pod_name: str, pod_uid: str) -> str:
    """``<spiffe id>~<pod name>~<pod uid>``: a pod's certificate, as the launch-build ztunnel named it."""
    return SECRET_NAME_SEPARATOR.join((identity, pod_name, pod_uid))


def identity_of_secret_name(name: str) -> str:
    """The identity a :func:`workload_secret_name` (or a bare SPIFFE ID) names."""
    return name.split(SECRET_NAME_SEPARATOR, 1)[0]


# -- who may fetch a node's config: the ztunnel's credential on the ADS connection -------------

#: Where the ztunnel DaemonSet runs, and as whom (Istio's ``istio-system/ztunnel``): in a cluster,
#: the ServiceAccount whose projected token a ztunnel pod presents to the ADS server.
ZTUNNEL_NAMESPACE = "istio-system"
ZTUNNEL_SERVICE_ACCOUNT = "ztunnel"
#: The audience of that projected token: a token minted for anything else (the API server, another
#: service) is refused, and one minted for zpilot is useless to anyone else.
XDS_TOKEN_AUDIENCE = "zpilot"
#: Without a cluster, a client certificate names its node by one URI SAN,
#: ``spiffe://<trust domain>/ns/istio-system/sa/ztunnel/node/<node>``: the ztunnel's identity with
#: the node below it. The extra path segments keep it apart from every workload identity: no mesh
#: TLS context (whose matchers take exactly ``/ns/<ns>/sa/<sa>``) accepts it, and no workload
#: certificate can pass for it.
NODE_CREDENTIAL_SEGMENT = "node"
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: Kubernetes' limit on a node name (a DNS-1123 subdomain).
MAX_NODE_NAME = 253


def valid_node_name(node: str) -> bool:
    """Whether ``node`` can be a Kubernetes node name (a DNS-1123 subdomain): nothing else can be
    put into a credential, so a ``/`` or ``..`` can never change what one names."""
    return 0 < len(node) <= MAX_NODE_NAME and _NODE_NAME.fullmatch(node) is not None


def node_credential_id(trust_domain: str, node: str) -> str:
    """The URI SAN of ``node``'s ADS client certificate; ValueError for a name no node can have."""
    if not valid_node_name(node):
        raise ValueError(f"{node[:300]!r} is not a Kubernetes node name (a DNS-1123 subdomain of at most"
                         f" {MAX_NODE_NAME} characters)")
    base = spiffe_id(trust_domain, ZTUNNEL_NAMESPACE, ZTUNNEL_SERVICE_ACCOUNT)
    return f"{base}/{NODE_CREDENTIAL_SEGMENT}/{node}"


def node_of_credential_id(uri: str, trust_domain: str) -> str | None:
    """The node a :func:`node_credential_id` of ``trust_domain`` names; None for any other URI."""
    prefix = f"{spiffe_id(trust_domain, ZTUNNEL_NAMESPACE, ZTUNNEL_SERVICE_ACCOUNT)}/{NODE_CREDENTIAL_SEGMENT}/"
    if not uri.startswith(prefix):
        return None
    node = uri[len(prefix):]
    return node if valid_node_name(node) else None


#: The files of a node's ADS credential directory, which ``zpilot bootstrap`` writes and the
#: bootstrap's file-based SDS reads (Envoy re-reads them when they are swapped): the node's
#: certificate chain and key, and the CA bundle that the server's certificate is checked against.
CREDENTIAL_CERT_FILE = "cert-chain.pem"
CREDENTIAL_KEY_FILE = "key.pem"
CREDENTIAL_BUNDLE_FILE = "root-cert.pem"


# -- listeners whose names other parts look for ------------------------------------------------

#: The access log of each listener is tagged with its name, which is how tests, ``zpilot demo``
#: and operators find a connection's lines.
OUTBOUND_LISTENER = "ztunnel_outbound"
INBOUND_LISTENER = "ztunnel_inbound"
INBOUND_PLAINTEXT_LISTENER = "ztunnel_inbound_plaintext"
#: The bootstrap's static readiness listener (``PORT_READINESS``).
READINESS_LISTENER = "ztunnel_readiness"
#: One internal listener per local identity opens its HBONE tunnels: ``outbound_tunnel_lis_<spiffe id>``.
TUNNEL_LISTENER_PREFIX = "outbound_tunnel_lis_"


def tunnel_listener(identity: str) -> str:
    """The internal listener that tunnels for ``identity``; EDS endpoints name it as their address."""
    return TUNNEL_LISTENER_PREFIX + identity


#: The linear layout's one internal listener: it tunnels for every local identity (picked by the
#: client pod's address), and every mesh endpoint of every service port names it: a node's
#: ClusterLoadAssignments hold its name 30,100 times at R, so each character of it costs 30 KB of
#: every node's EDS (and the host it makes in Envoy). Named ``outbound_tunnel_lis`` until round
#: thirteen: its nine characters more were 0.27 MB of each node's 5 MB at R.
LINEAR_TUNNEL_LISTENER = "tunnel_lis"
#: The outbound layout a ztunnel's config is built with unless ``--layout`` says otherwise (``zpilot
#: serve``, ``render``, ``explain``, ``demo``, the world; ``TranslateOptions``): ``explain`` is right
#: only about the layout the ztunnels run, so every part takes the same default. ``linear`` grows
#: with (local pods + destinations); ``article`` reproduces the article's dump, which grows with
#: their product (zpilot/translators/outbound_*.py).
DEFAULT_LAYOUT = "linear"
#: The layout that reproduces the article's dump, its SDS names too: each pod's certificate is a secret of its
#: own, ``<spiffe id>~<pod name>~<pod uid>`` (:func:`workload_secret_name`). Every other layout names an
#: identity's one certificate by its SPIFFE ID alone (``TranslateOptions.pod_secrets``).
ARTICLE_LAYOUT = "article"

#: How a ztunnel's Envoy makes each cluster's traffic statistics (``upstream_cx_*``, ``upstream_rq_*``
#: and the other per-connection counters, about half of a cluster's ~115 stats), ``zpilot bootstrap
#: --cluster-stats``. A node's config holds a cluster per service port of the mesh (2,000 at issue
#: 13's R), nearly all of which carry no traffic from that node: made at start, their stats were
#: about 45 MiB of the Envoy's heap and up to 0.8 s of its CPU before it went LIVE. ``lazy`` is
#: Envoy's ``deferred_stat_options``: a cluster's traffic stats appear, all of them, on its first
#: connection (absent until then, which reads as 0); ``eager`` makes them at start (Envoy's default).
CLUSTER_STATS = ("lazy", "eager")
DEFAULT_CLUSTER_STATS = "lazy"

#: Which stats a ztunnel's Envoy makes for each service port of the mesh (its cluster,
#: ``cluster.svc.<port>_<fqdn>.*``, and its tcp_proxy, ``tcp.svc.<port>_<fqdn>.*``; the article layout's
#: ``svc.<identity>_to_<port>_<fqdn>_outbound_internal``), ``zpilot bootstrap
#: --service-stats``. At issue 13's R a node has 2,000 service ports: made at start, their 126,000
#: stats (47 per cluster, 16 per tcp_proxy; 134,500 in all) were 27 MiB of the Envoy's RSS and
#: about a quarter of its CPU to LIVE (docs/scale.md), for gauges and config counters (``membership_*``,
#: ``update_*``, ``circuit_breakers.*``, ``lb_*``, ``assignment_*``, ``version``...) that the control
#: plane's own view already holds. ``traffic``: a service port's cluster keeps its traffic counters
#: (``upstream_cx_*``, ``upstream_rq_*``..., made as ``--cluster-stats`` says) and nothing else,
#: its tcp_proxy no stats; ``none``: no stats at all for service ports (as Istio's proxies, whose
#: default inclusion list leaves out every per-upstream-cluster stat), left out by two prefixes alone (no regex:
#: Envoy's fast path); ``all``: every one (Envoy's
#: default). Every other cluster (tunnels, the pods of each node, inbound, xDS) keeps all of its.
SERVICE_STATS = ("traffic", "none", "all")
DEFAULT_SERVICE_STATS = "traffic"

#: Which stats a ztunnel's Envoy makes for the linear layout's cluster of each node's pods
#: (``cluster.pods_on_<node>.*``, one per node of the mesh: 100 at issue 13's R), ``zpilot bootstrap
#: --pod-cluster-stats``. ``traffic``: its traffic counters, as a service port's cluster keeps with
#: ``--service-stats traffic``, and none of its bookkeeping (``membership_*``, ``update_*``, ``lb_*``,
#: ``circuit_breakers.*``, ``version``...: 48 per cluster, each matched, tagged and made at start, about 9% of
#: node-0's Envoy's instructions to LIVE at R, docs/scale.md), which the control plane's own view holds
#: (what each node is served and ACKed, which pods are on which node); ``all``: every one (Envoy's default).
#: Its outbound chain's tcp_proxy (``tcp.pods.pods_on_<node>.*``: connections and bytes, as the cluster's traffic
#: counters count them, and its own ``downstream_cx_no_route``, ``idle_timeout``, ``upstream_flush_*``...) has no
#: stats with ``traffic`` (1.6% of those instructions, 1,600 stats), every one with ``all``.
POD_CLUSTER_STATS = ("traffic", "all")
DEFAULT_POD_CLUSTER_STATS = "traffic"

#: Envoy flags a ztunnel runs with besides its bootstrap, worker count and log level (the chart's DaemonSet passes
#: them; ``bench/scale.py`` measures with them). ``--ignore-unknown-dynamic-fields``: Envoy walks every xDS resource
#: it takes, field by field (a Struct's values too), looking for fields it does not know, deprecated ones and
#: work-in-progress APIs, only to log and count them (``server.dynamic_unknown_fields``); with the flag it skips the
#: walk. It was 12% of node-0's Envoy's instructions to LIVE at issue 13's R (633 M of 5,279 M, a quarter of EDS's,
#: callgrind, docs/scale.md). What is lost: the warning of a field newer than the Envoy (zpilot's configs are made
#: with the xds-protos of the Envoy version the chart pins), the deprecation warnings (zpilot uses no deprecated
#: field, unknown field or work-in-progress API but the source gate's IPMatcher: the real-Envoy tests run without
#: the flag and tests/xds/test_envoy_flags.py reads Envoy's counters of them), and the ~400 work-in-progress lines each start logged. A
#: resource Envoy cannot take is still refused (NACKed): its protoc-gen-validate rules and its own checks still run.
ENVOY_FLAGS = ("--ignore-unknown-dynamic-fields",)


# -- endpoint metadata: how a mesh endpoint says where its tunnel goes --------------------------

#: Filter metadata namespace of a mesh endpoint's tunnel: ``{address: podIP:PORT_HBONE (or
#: PORT_HBONE_LOCAL on the same node), destination: podIP:targetPort, identity: the pod's SPIFFE
#: ID}``, passed by the ``internal_upstream`` transport socket to the internal listener.
TUNNEL_METADATA = "tunnel"
TUNNEL_ADDRESS = "address"
TUNNEL_DESTINATION = "destination"
#: The identity the tunnel's peer must prove (translators/identity_pinning.py).
TUNNEL_IDENTITY = "identity"
#: The CONNECT authority the internal listener sends: the real destination, from that metadata.
TUNNEL_DESTINATION_FORMAT = f"%DYNAMIC_METADATA({TUNNEL_METADATA}:{TUNNEL_DESTINATION})%"
#: ... and the identity it pins for the tunnel's TLS peer.
TUNNEL_IDENTITY_FORMAT = f"%DYNAMIC_METADATA({TUNNEL_METADATA}:{TUNNEL_IDENTITY})%"
#: Envoy's transport socket match namespace; ``{tunnel: h2}`` selects ``internal_upstream``
#: (the launch build's value; later builds said ``http``).
TRANSPORT_SOCKET_MATCH_METADATA = "envoy.transport_socket_match"
TUNNEL_PROTOCOL = MappingProxyType({"tunnel": "h2"})
#: Envoy's original_dst listener filter. On an internal listener it takes the connection's
#: destination from the endpoint metadata of its own name, key ``local``: the stock replacement
#: for Istio's ``set_dst_address`` filter.
ORIGINAL_DST_FILTER = "envoy.filters.listener.original_dst"
ORIGINAL_DST_LOCAL = "local"
#: Envoy's original_src listener filter: upstream connections keep the downstream's source address
#: (and carry ORIGINAL_SRC_MARK).
ORIGINAL_SRC_FILTER = "envoy.filters.listener.original_src"
