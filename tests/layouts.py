"""The outbound layouts every real-Envoy, live-world and explain test runs with, and the few names
that differ between them (issue 13: both layouts pass the same tests).

A test about the outbound side takes ``layout`` as a parameter (``tests/xds``: the ``layout``
fixture) and asks here for the names it looks for, rather than spelling one layout's names."""

from __future__ import annotations

from zpilot.contract import DEFAULT_LAYOUT
from zpilot.translators import names

LAYOUTS = ("article", "linear")
#: The same, the default first. For a shared fixture (a world) parameterized with them whose tests partly
#: run with the default layout alone (``parametrize(fixture, [DEFAULT_LAYOUT], indirect=True)``): pytest
#: groups tests by the index of the fixture's parameter, and that lone value's index is 0, so it must be
#: the default's too, or its world is built twice.
DEFAULT_FIRST = tuple(sorted(LAYOUTS, key=lambda layout: layout != DEFAULT_LAYOUT))
SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"


def service_chain(layout: str, port_and_host: str, identity: str = SLEEP_ID) -> str:
    """The outbound chain (and EDS cluster) of a service port for ``identity``'s pods on a node:
    per source identity in the article's layout, one per service port in the linear one.
    ``port_and_host``: e.g. ``http_productpage.default.svc.cluster.local``."""
    if layout == "article":
        return f"{identity}_to_{port_and_host}_outbound_internal"
    return port_and_host


def pod_chain(
    layout: str, peer: str, *, node: str | None = None, same_node: bool = False, identity: str = SLEEP_ID
) -> str:
    """The outbound chain of a connection to the IP of a meshed pod whose identity is ``peer``: the
    article's per (local identity, this node or another, peer); the linear layout's per node whose
    pod CIDR holds it (``node``: the pod's node, its IP in the node's CIDR), else per peer."""
    if layout != "article":
        return names.pods_on_node(node) if node is not None else names.pod_direct_chain(peer)
    cluster = names.pod_local_tunnel_cluster(identity) if same_node else names.pod_tunnel_cluster(identity)
    return names.pod_chain(cluster, peer)
