"""Model -> Envoy resources for one node's ztunnel. Pure functions: no I/O, no clocks, no randomness.

Entry point: :func:`translate_node`. Resource names and which resource references which
secret are documented in ``docs/config-reference.md``.
"""

from __future__ import annotations

from .. import contract
from ..model.index import MeshIndex
from . import clusters, inbound, names
from . import outbound_article as _article  # noqa: F401  (registers the "article" layout)
from . import outbound_linear as _linear  # noqa: F401  (registers the "linear" layout)
from .context import NodeView, TranslateOptions
from .layout import get as get_layout
from .layout import known as known_layouts
from .resources import NodeResources, SecretRef

__all__ = ["NodeResources", "SecretRef", "TranslateOptions", "known_layouts", "translate_node"]


def translate_node(index: MeshIndex, node: str, options: TranslateOptions | None = None) -> NodeResources:
    """Everything node ``node``'s ztunnel needs; a node with no meshed pods still gets its fixed
    listeners and clusters, so its Envoy is ready the moment a pod arrives."""
    options = options or TranslateOptions()
    view = NodeView.of(index, node, options)
    out = NodeResources(node=node)
    for cluster in (clusters.virtual_inbound(options.limits), clusters.passthrough(options.limits), clusters.blackhole()):
        out.clusters[cluster.name] = cluster
    get_layout(options.layout)(view, out)
    for listener in (inbound.inbound_listener(view), inbound.inbound_plaintext_listener(view)):
        out.listeners[listener.name] = listener
    for pod in view.local_pods:
        identity = view.identity_of(pod)
        out.add_secret(names.workload_secret(identity, pod), identity)
    if out.secrets:  # only TLS contexts reference the trust bundle; with no local pod there are none
        out.add_secret(contract.ROOT_CA_SECRET, None)
    return out
