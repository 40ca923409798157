"""Generated names that only the translators use: chains and clusters, and who references whom.

These strings are load-bearing: filter_chain_matcher actions name chains, tcp_proxy filters and
EDS name clusters. Keeping them here means the two ends of each reference can never drift apart.
Names another part of zpilot also uses (listeners, secrets, identities) are in
:mod:`zpilot.contract`; the helpers below apply them to model objects.
"""

from __future__ import annotations

from .. import contract
from ..model.objects import ServicePort, Service, Workload

VIRTUAL_INBOUND = "virtual_inbound"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CHAIN = "PassthroughFilterChain"
BLACKHOLE_CHAIN = "BlackHoleCluster"  # the article's matcher names the chain after the cluster


def workload_identity(trust_domain: str, workload: Workload) -> str:
    return contract.spiffe_id(trust_domain, workload.namespace, workload.service_account)


def workload_secret(identity: str, workload: Workload) -> str:
    """The per-pod SDS name of the article-era ztunnel (:func:`zpilot.contract.workload_secret_name`)."""
    return contract.workload_secret_name(identity, workload.name, workload.uid)


def service_chain(identity: str, service: Service, port: ServicePort, cluster_domain: str) -> str:
    """Chain and EDS cluster name for (source identity, service port)."""
    return f"{identity}_to_{port.label}_{service.hostname(cluster_domain)}_outbound_internal"


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
