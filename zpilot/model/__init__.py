"""The mesh model: immutable objects, input problems and the index answering mesh questions."""

from .index import Endpoint, MeshIndex, ServiceTarget
from .objects import (
    Cluster,
    ContainerPort,
    Namespace,
    Node,
    ObjectRef,
    Service,
    ServiceAccount,
    ServicePort,
    Workload,
)
from .problems import Problem, Problems, Severity

__all__ = [
    "Cluster", "ContainerPort", "Endpoint", "MeshIndex", "Namespace", "Node", "ObjectRef", "Problem",
    "Problems", "Service", "ServiceAccount", "ServicePort", "ServiceTarget", "Severity", "Workload",
]
