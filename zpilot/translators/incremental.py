"""Every node's config for a stream of models, rebuilding only what a change touches.

:meth:`IncrementalTranslator.inputs` turns a model into one :class:`~zpilot.translators.inputs.NodeInput`
per node; the caller (the producer) translates only the nodes whose input differs from the one
it last translated. Within a node, :meth:`translate` goes through one memo kept across models
(fragments.py), so only the pieces whose own inputs changed are built again: a pod added on
node A rebuilds A's inbound listeners and the shared pieces that list pods, never node B's
inbound listeners nor any service's cluster.

Pure apart from the memo (no I/O, no clocks); not thread-safe: one caller at a time.
"""

from __future__ import annotations

from ..model.index import MeshIndex
from .context import NodeView
from .fragments import Fragments
from .inputs import MeshInput, NodeInput, config_nodes, node_inputs
from .node import Translated, translate_view
from .options import TranslateOptions


class IncrementalTranslator:
    """Node inputs per model, and translation through a memo shared by every node and model."""

    def __init__(self, options: TranslateOptions | None = None, fragments: Fragments | None = None) -> None:
        self.options = options or TranslateOptions()
        self.fragments = fragments if fragments is not None else Fragments()
        self._mesh: MeshInput | None = None
        self._inputs: dict[str, NodeInput] = {}

    def inputs(self, index: MeshIndex) -> dict[str, NodeInput]:
        """The input of every node that gets config (:func:`~zpilot.translators.inputs.config_nodes`);
        made from the last model's, so what did not change is the same object (compared by identity)."""
        mesh = MeshInput.of(index, self._mesh)
        if mesh == self._mesh:  # the previous one: node inputs then compare by identity
            mesh = self._mesh
        self._mesh = mesh
        self._inputs = node_inputs(index, sorted(config_nodes(index)), self.options, mesh, self._inputs)
        return dict(self._inputs)

    def translate(self, node_input: NodeInput) -> Translated:
        return translate_view(NodeView.for_input(node_input, self.fragments))

    def translate_parts(self, node_input: NodeInput) -> Translated:
        """As :meth:`translate`, but a listener put together from shared pieces is left as its own
        part (``Translated.listener_parts`` says how): for a consumer that joins its bytes from
        the pieces' (the producer), to whom the whole message would be megabytes copied per node."""
        return translate_view(NodeView.for_input(node_input, self.fragments, whole_listeners=False))
