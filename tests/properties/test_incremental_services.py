"""Services changed one after another: each index built from the previous one (what a service added,
removed or changed costs: that service, unless a VIP:port it claims is claimed by another too)
answers exactly what an index built from nothing answers: the services, who holds each VIP:port,
every port's candidates and the problems, in their order.

Services drawn from a few names, VIPs and ports (so that they collide: a VIP:port claimed twice,
the same name in two changes), with or without a selector, headless, IPv6-only, with a UDP port or
internalTrafficPolicy Local; plain pods they select come and go in the same changes, and pods change
alone in between (the positions the services are found at by pods must follow the services).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zpilot.model import Cluster, MeshIndex, Namespace, Node, Service, ServicePort, Workload
from zpilot.model.objects import ContainerPort, EndpointSlice, SliceEndpoint, SlicePort, frozen_labels

AMBIENT = frozen_labels({"istio.io/dataplane-mode": "ambient"})
NODES = ("n1", "n2")
VIPS = ("10.96.0.1", "10.96.0.2", "10.96.0.3", "fd00::1")
#: Slices of a service without a selector (listing a pod's address and an outside one).
SLICES = (
    EndpointSlice("ext-1", "x", "ext", "IPv4", (SliceEndpoint(("10.0.0.1",)), SliceEndpoint(("192.168.9.1",))),
                  (SlicePort(5432, "db"),)),
)


def _pod(i: int) -> Workload:
    return Workload(f"p{i}", "xy"[i % 2], f"uid-{i}", (f"10.0.0.{i + 1}",), NODES[i % 2], "sa",
                    frozen_labels({"app": "ab"[i // 2 % 2]}), (ContainerPort(8080, "http"),))


PODS = tuple(_pod(i) for i in range(8))


@st.composite
def _service(draw: st.DrawFn, name: str) -> Service:
    namespace = draw(st.sampled_from(["x", "y"]))
    if name == "ext":  # the one the slices are for
        namespace = "x"
    ports = tuple(
        ServicePort(port, draw(st.sampled_from([8080, "http", "missing"])), f"p{port}",
                    draw(st.sampled_from(["TCP", "TCP", "TCP", "UDP"])))
        for port in sorted(draw(st.sets(st.sampled_from([80, 443, 5432]), min_size=1, max_size=2)))
    )
    vips = tuple(draw(st.lists(st.sampled_from(VIPS), min_size=1, max_size=2, unique=True)))
    selector = None if name == "ext" else draw(st.sampled_from([None, {"app": "a"}, {"app": "b"}]))
    return Service(name, namespace, vips, ports, frozen_labels(selector) if selector else None,
                   headless=draw(st.integers(0, 5)) == 0, node_local=draw(st.integers(0, 3)) == 0)


@st.composite
def _steps(draw: st.DrawFn) -> list[tuple[dict, frozenset[int]]]:
    names = ["a", "b", "c", "d", "ext"]
    services: dict = {}
    for name in draw(st.sets(st.sampled_from(names))):
        services[name] = draw(_service(name))
    pods = frozenset(draw(st.sets(st.integers(0, len(PODS) - 1))))
    steps = [(dict(services), pods)]
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 2)) > 0:  # services change (one to three)
            for _ in range(draw(st.integers(1, 3))):
                name = draw(st.sampled_from(names))
                if name in services and draw(st.booleans()):
                    del services[name]
                else:
                    services[name] = draw(_service(name))
        if draw(st.booleans()):  # a pod comes or goes, with them or alone
            pods = pods ^ {draw(st.integers(0, len(PODS) - 1))}
        steps.append((dict(services), pods))
    return steps


def _state(index: MeshIndex) -> dict:
    return {"services": index.services, "vips": index._vips, "endpoints": index._endpoints,
            "problems": list(index.problems), "captured": [s.ref for s in index.services]}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(_steps(), st.booleans())
def test_service_changes_patch_what_a_full_build_gives(steps, appended: bool) -> None:
    last: MeshIndex | None = None
    order: list[Service] = []  # services in the order the source has them: a new one at the end, or sorted
    for services, pods in steps:
        kept = [s for s in order if services.get(s.name) is s]
        order = kept + [s for name, s in sorted(services.items()) if all(s is not k for k in kept)]
        if not appended:
            order.sort(key=lambda s: (s.namespace, s.name))
        cluster = Cluster(
            nodes=tuple(Node(n, (f"172.18.0.{i + 2}",)) for i, n in enumerate(NODES)),
            namespaces=(Namespace("x", AMBIENT), Namespace("y", AMBIENT)),
            workloads=tuple(PODS[i] for i in sorted(pods)),
            services=tuple(order),
            endpoint_slices=SLICES,
        )
        full = MeshIndex.build(cluster)
        index = MeshIndex.build(cluster, previous=last)
        assert _state(index) == _state(full)
        if last is not None:
            changes = index.changes_since(last.generation)
            if changes.service_ports is not None:
                for key in last._endpoints.keys() | index._endpoints.keys():
                    if key not in changes.service_ports:
                        assert index._endpoints.get(key) == last._endpoints.get(key), key
        last = index
