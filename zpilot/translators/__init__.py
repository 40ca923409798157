"""Model -> Envoy resources for one node's ztunnel. Pure functions: no I/O, no clocks, no randomness.

Entry points: :func:`translate_node` (one node of a model) and :class:`IncrementalTranslator`
(every node of a stream of models, rebuilding only what changed: incremental.py). Resource names
and which resource references which secret are documented in ``docs/config-reference.md``.
"""

from __future__ import annotations

from ..model.index import MeshIndex
from . import outbound_article as _article  # noqa: F401  (registers the "article" layout)
from . import outbound_linear as _linear  # noqa: F401  (registers the "linear" layout)
from .context import NodeView, TranslateOptions
from .fragments import Fragments
from .incremental import IncrementalTranslator
from .inputs import NodeInput
from .layout import known as known_layouts
from .node import Translated, translate_view
from .resources import NodeResources, SecretRef

__all__ = [
    "IncrementalTranslator",
    "NodeInput",
    "NodeResources",
    "SecretRef",
    "Translated",
    "TranslateOptions",
    "known_layouts",
    "translate_input",
    "translate_node",
]


def translate_node(index: MeshIndex, node: str, options: TranslateOptions | None = None) -> NodeResources:
    """Everything node ``node``'s ztunnel needs (see :func:`zpilot.translators.node.translate_view`)."""
    return translate_view(NodeView.of(index, node, options or TranslateOptions())).resources


def translate_input(node_input: NodeInput, fragments: Fragments | None = None) -> Translated:
    """A node's config from its input alone, sharing ``fragments`` with other nodes and models."""
    return translate_view(NodeView.for_input(node_input, fragments))
