"""The mesh model: immutable objects, input problems and the index answering mesh questions."""

from .index import Endpoint, MeshIndex, ServiceTarget, in_use
from .objects import (
    Cluster,
    ContainerPort,
    EndpointSlice,
    Locality,
    Namespace,
    Node,
    ObjectRef,
    Service,
    ServiceAccount,
    ServicePort,
    SliceEndpoint,
    SlicePort,
    Workload,
)
from .problems import Problem, Problems, Severity

__all__ = [
    "Cluster", "ContainerPort", "Endpoint", "EndpointSlice", "Locality", "MeshIndex", "Namespace", "Node",
    "ObjectRef", "Problem", "Problems", "Service", "ServiceAccount", "ServicePort", "ServiceTarget", "Severity",
    "SliceEndpoint", "SlicePort", "Workload", "in_use",
]
