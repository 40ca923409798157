"""The control plane stops renewing an identity once no node's config references it, and only then:
after each update it reads which identities the nodes' secrets name (ControlPlane._referenced_identities),
each node's again only when its snapshot holds other references than last time."""

from __future__ import annotations

import dataclasses

from zpilot.certs import CertificateAuthority, IdentityCache
from zpilot.contract import DEFAULT_TRUST_DOMAIN
from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, extra_pod, synthetic_cluster, synthetic_manifests
from zpilot.translators.names import workload_identity

SHAPE = Shape(nodes=3, pods=30, services=15, namespaces=2, service_accounts_per_namespace=3)


def _identity(pod) -> str:
    return workload_identity(DEFAULT_TRUST_DOMAIN, pod)


def _referenced(plane) -> set[str]:
    """What the nodes' snapshots reference, read whole (what the plane keeps count of)."""
    return {ref.spiffe_id for node in plane.cache.nodes() for ref in plane.cache.get_snapshot(node).secret_refs.values()
            if ref.spiffe_id}


async def test_an_identity_is_retired_with_its_last_pod_and_issued_again_with_a_new_one(make_plane):
    cluster = synthetic_cluster(synthetic_manifests(SHAPE))
    identities = IdentityCache(CertificateAuthority.generate())
    index = MeshIndex.build(cluster)
    plane = await make_plane(index=index, identities=identities)
    everyone = {_identity(pod) for pod in cluster.workloads}
    assert set(identities.identities()) == everyone

    # every pod of one identity gone: that identity alone is retired (the other nodes' references, read
    # last time and unchanged, still count)
    gone = _identity(cluster.workloads[0])
    without = dataclasses.replace(cluster, workloads=tuple(w for w in cluster.workloads if _identity(w) != gone))
    index = MeshIndex.build(without, previous=index)
    await plane.update(index)
    assert set(identities.identities()) == everyone - {gone}
    first = plane._referenced_identities()
    assert first == everyone - {gone} and plane._referenced_identities() == first  # read again: the same

    # back with one pod: issued again, and kept
    back = dataclasses.replace(without, workloads=without.workloads + (cluster.workloads[0],))
    index = MeshIndex.build(back, previous=index)
    await plane.update(index)
    assert set(identities.identities()) == everyone == _referenced(plane)

    # a pod of an identity of its own on the last node, then that node gone with its pods: that identity
    # is retired, what the other nodes' pods run as kept
    node = len(cluster.nodes) - 1
    manifest = extra_pod(SHAPE, 0, node)
    manifest["spec"]["serviceAccountName"] = "lonely"
    lonely = KIND_CONVERTERS["Pod"](manifest)
    index = MeshIndex.build(dataclasses.replace(back, workloads=back.workloads + (lonely,)), previous=index)
    await plane.update(index)
    assert set(identities.identities()) == everyone | {_identity(lonely)} == _referenced(plane)
    name = cluster.nodes[node].name
    smaller = dataclasses.replace(back, nodes=back.nodes[:node], workloads=tuple(w for w in back.workloads if w.node_name != name))
    await plane.update(MeshIndex.build(smaller, previous=index))
    assert name not in plane.cache.nodes()
    left = {_identity(pod) for pod in smaller.workloads}
    assert _identity(lonely) not in left and set(identities.identities()) == left == _referenced(plane)
