"""Every generated name in one place: the 2022 ztunnel's naming contract.

These strings are load-bearing: filter_chain_matcher actions name chains, EDS endpoints name
internal listeners, TLS contexts name SDS secrets. Keeping them here means the two ends of
each reference can never drift apart.
"""

from __future__ import annotations

from ..model.objects import ServicePort, Service, Workload

OUTBOUND_LISTENER = "ztunnel_outbound"
INBOUND_LISTENER = "ztunnel_inbound"
INBOUND_PLAINTEXT_LISTENER = "ztunnel_inbound_plaintext"

VIRTUAL_INBOUND = "virtual_inbound"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CHAIN = "PassthroughFilterChain"
BLACKHOLE_CHAIN = "BlackHoleCluster"  # the article's matcher names the chain after the cluster

ROOT_CA_SECRET = "ROOTCA"

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
HBONE_PORT = 15008
#: Same-node HBONE: the ztunnel's own nat OUTPUT rule redirects this port to its 15008 listener.
HBONE_SAME_NODE_PORT = 15088


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def workload_identity(trust_domain: str, workload: Workload) -> str:
    return spiffe_id(trust_domain, workload.namespace, workload.service_account)


def workload_secret(identity: str, workload: Workload) -> str:
    """``<spiffe>~<pod name>~<pod uid>``: the per-pod SDS name of the article-era ztunnel."""
    return f"{identity}~{workload.name}~{workload.uid}"


def service_chain(identity: str, service: Service, port: ServicePort, cluster_domain: str) -> str:
    """Chain and EDS cluster name for (source identity, service port)."""
    return f"{identity}_to_{port.label}_{service.hostname(cluster_domain)}_outbound_internal"


def tunnel_listener(identity: str) -> str:
    return f"outbound_tunnel_lis_{identity}"


def tunnel_cluster(identity: str) -> str:
    return f"outbound_tunnel_clus_{identity}"


def pod_tunnel_cluster(identity: str) -> str:
    return f"outbound_pod_tunnel_clus_{identity}"


def pod_local_tunnel_cluster(identity: str) -> str:
    return f"outbound_pod_local_tunnel_clus_{identity}"


def pod_chain(cluster_name: str) -> str:
    return f"fc-{cluster_name}"


def inbound_chain(ip: str) -> str:
    return f"inbound_{ip}"
