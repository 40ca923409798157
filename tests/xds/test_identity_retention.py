"""The control plane stops renewing an identity once no node's config references it, and only then:
after each update it reads which identities the nodes' secrets name (ControlPlane._referenced_identities),
each node's again only when its snapshot holds other references than last time."""

from __future__ import annotations

import dataclasses

from zpilot.certs import CertificateAuthority, IdentityCache
from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests

SHAPE = Shape(nodes=3, pods=30, services=15, namespaces=2, service_accounts_per_namespace=3)


def _identity(pod) -> str:
    return f"spiffe://cluster.local/ns/{pod.namespace}/sa/{pod.service_account}"


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
    await plane.update(MeshIndex.build(back, previous=index))
    assert set(identities.identities()) == everyone
