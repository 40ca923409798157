"""A world's network, wired as a cluster's would be: the nodes, each pod's veth, kube-proxy.

The nodes talk over one veth between them; pods are wired point-to-point (the node answers as
the pod CIDR's gateway on every veth, one /32 route per pod). Nothing is connected to the
host's namespace: a world has no route out.
"""

from __future__ import annotations

from . import kubeproxy
from .errors import WorldError
from .netns import Namespaces, in_netns, run, veth_pair
from .topology import POD_MTU, NodeSpec, PodSpec, WorldSpec, node_network

#: The control plane's namespace role (``zpilot serve`` runs there).
CONTROL_PLANE_ROLE = "cp"


def node_role(node: NodeSpec | str) -> str:
    """The namespace role of a node (its namespace is the world's prefix plus this)."""
    return f"node-{node if isinstance(node, str) else node.key}"


def build_network(namespaces: Namespaces, spec: WorldSpec) -> None:
    """Every namespace of the world, wired: control plane, nodes, pods, and the nodes' portals."""
    namespaces.add(CONTROL_PLANE_ROLE)
    for node in spec.nodes:
        name = namespaces.add(node_role(node))
        # a node routes its pods' traffic; the CNI plan asks for it too, but a node does it anyway
        in_netns(name, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    _wire_nodes(namespaces, spec)
    for pod in spec.pods:
        namespaces.add(pod.key)
        _wire_pod(namespaces, spec, pod)
    for node in spec.nodes:
        kubeproxy.install(namespaces.name(node_role(node)), spec)


def _wire_nodes(namespaces: Namespaces, spec: WorldSpec) -> None:
    """The node network: a veth between the two nodes (more nodes would need a bridge)."""
    nodes = spec.nodes
    if len(nodes) != 2:
        raise WorldError("a world has exactly two nodes")
    prefix = node_network(nodes).split("/")[1]
    a, b = nodes
    ns = {node.key: namespaces.name(node_role(node)) for node in nodes}
    veth_pair(ns[a.key], "eth0", ns[b.key], "eth0", mtu=POD_MTU + 40)
    for node, peer in ((a, b), (b, a)):
        run(["ip", "-n", ns[node.key], "addr", "add", f"{node.internal_ip}/{prefix}", "dev", "eth0"])
        run(["ip", "-n", ns[node.key], "route", "add", peer.pod_cidr, "via", peer.internal_ip, "dev", "eth0"])


def _wire_pod(namespaces: Namespaces, spec: WorldSpec, pod: PodSpec) -> None:
    """The point-to-point CNI layout: the node answers as the pod CIDR's gateway on every veth."""
    node = spec.node(pod.node)
    node_ns, pod_ns = namespaces.name(node_role(node)), namespaces.name(pod.key)
    veth_pair(node_ns, pod.veth, pod_ns, "eth0", mtu=POD_MTU)
    run(["ip", "-n", node_ns, "addr", "add", f"{node.gateway}/32", "dev", pod.veth])
    run(["ip", "-n", node_ns, "route", "add", f"{pod.ip}/32", "dev", pod.veth, "scope", "link"])
    run(["ip", "-n", pod_ns, "addr", "add", f"{pod.ip}/32", "dev", "eth0"])
    run(["ip", "-n", pod_ns, "route", "add", f"{node.gateway}/32", "dev", "eth0", "scope", "link"])
    run(["ip", "-n", pod_ns, "route", "add", "default", "via", node.gateway, "dev", "eth0"])
