"""Every node's config for a stream of models, rebuilding only what a change touches.

:meth:`IncrementalTranslator.inputs` turns a model into one :class:`~zpilot.translators.inputs.NodeInput`
per node; the caller (the producer) translates only the nodes whose input differs from the one
it last translated. Within a node, :meth:`translate` goes through one memo kept across models
(fragments.py), so only the pieces whose own inputs changed are built again: a pod added on
node A rebuilds A's inbound listeners and the shared pieces that list pods, never node B's
inbound listeners nor any service's cluster.

A node whose input changed only in its endpoints (:meth:`endpoints_only`: a layout that keeps
them apart, ``layout.LateEndpoints``) need not be translated at all: :meth:`endpoints` makes its
new ClusterLoadAssignments alone, as shared sets that every node with the same ones gets.

Pure apart from the memo (no I/O, no clocks); not thread-safe: one caller at a time.
"""

from __future__ import annotations

from collections.abc import KeysView
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Hashable

from ..model.index import MeshIndex
from ..model.objects import Workload
from . import inbound
from .context import NodeView, ResourceSet
from .fragments import Fragment, Fragments
from .inputs import MeshInput, NodeInput, config_nodes, node_inputs
from .layout import LateEndpoints, late_endpoints
from .node import Translated, translate_view
from .options import TranslateOptions
from .resources import ENDPOINT_TYPE, NodeResources


@dataclass(frozen=True)
class EndpointSets:
    """A node's ClusterLoadAssignments as the shared sets they are, and the fragments they were
    made of (holding them keeps them in the memo)."""

    sets: tuple[ResourceSet, ...]
    fragments: tuple[Fragment, ...]


class IncrementalTranslator:
    """Node inputs per model, and translation through a memo shared by every node and model."""

    def __init__(self, options: TranslateOptions | None = None, fragments: Fragments | None = None) -> None:
        self.options = options or TranslateOptions()
        self.fragments = fragments if fragments is not None else Fragments()
        self._mesh: MeshInput | None = None
        self._inputs: dict[str, NodeInput] = {}
        #: The endpoints made for the latest mesh, by what they depend on (see :meth:`endpoints`).
        self._endpoints_mesh: MeshInput | None = None
        self._endpoints: dict[Hashable, tuple[EndpointSets, LateEndpoints, TranslateOptions]] = {}
        #: Meshes whose shape was compared with the latest one's (see :meth:`_same_shape`).
        self._shapes_of: MeshInput | None = None
        self._shapes_compared: dict[tuple[int, int], tuple[bool, LateEndpoints, MeshInput]] = {}
        self._lates: dict[str, LateEndpoints | None] = {}
        #: ``endpoints_only`` of inputs differing in their mesh alone, for the latest mesh (by the old mesh and the options).
        self._mesh_only_of: MeshInput | None = None
        self._mesh_only: dict[tuple[int, int], tuple[bool, MeshInput, TranslateOptions]] = {}

    def inputs(self, index: MeshIndex) -> dict[str, NodeInput]:
        """The input of every node that gets config (:func:`~zpilot.translators.inputs.config_nodes`);
        made from the last model's, so what did not change is the same object (compared by identity)."""
        mesh = MeshInput.of(index, self._mesh)
        if mesh == self._mesh:  # the previous one: node inputs then compare by identity
            # it now stands for this model too: the next model's changes are looked at since this
            # one (since the model it was first made from, they would be this change's as well)
            object.__setattr__(self._mesh, "index_generation", mesh.index_generation)
            mesh = self._mesh
        self._mesh = mesh
        self._inputs = node_inputs(index, sorted(config_nodes(index)), self.options, mesh, self._inputs)
        inbound.keep_pods_of(self.fragments, self._inputs)  # a node gone keeps none of its pods alive
        return dict(self._inputs)

    def translate(self, node_input: NodeInput) -> Translated:
        return translate_view(NodeView.for_input(node_input, self.fragments))

    def translate_parts(self, node_input: NodeInput) -> Translated:
        """As :meth:`translate`, but a listener put together from shared pieces is left as its own
        part (``Translated.listener_parts`` says how): for a consumer that joins its bytes from
        the pieces' (the producer), to whom the whole message would be megabytes copied per node;
        and the shared sets are left apart from the node's own resources (``Translated.sets_apart``)."""
        return translate_view(NodeView.for_input(node_input, self.fragments, whole_listeners=False, sets_apart=True))

    def prepare(self, node_input: NodeInput) -> int:
        """Pay ahead, between changes, what the node's next change would otherwise pay once:
        where its inbound listeners' pod chains are, and their facts, while those listeners are
        still whole as a full build made them (``inbound.prepare_cuts``); what that change
        makes is the same either way. How many pieces were prepared (0: nothing left to do)."""
        return inbound.prepare_cuts(NodeView.for_input(node_input, self.fragments, whole_listeners=False))

    def endpoints_only(self, old: Hashable, new: Hashable) -> bool:
        """Whether ``new`` gives the node what ``old`` did but for its endpoints: its layout keeps
        them apart, and nothing else it reads differs (the node, the options, its pods but for
        their readiness (:func:`_same_config_pods`) and their policies, the mesh's shape)."""
        if (
            type(old) is NodeInput
            and type(new) is NodeInput
            and old.local_pods is new.local_pods  # type: ignore[attr-defined]
            and old.policies is new.policies  # type: ignore[attr-defined]
            and old.options is new.options  # type: ignore[attr-defined]
            and old.node == new.node  # type: ignore[attr-defined]
        ):  # the mesh alone differs (most nodes of a change): answered once for all the nodes holding both
            if self._mesh_only_of is not new.mesh:  # type: ignore[attr-defined]
                self._mesh_only_of, self._mesh_only = new.mesh, {}  # type: ignore[attr-defined]
            key = (id(old.mesh), id(new.options))  # type: ignore[attr-defined]
            found = self._mesh_only.get(key)
            if found is None:  # (the value holds what the key's ids are of: they stay theirs)
                found = self._mesh_only[key] = (self._endpoints_only(old, new), old.mesh, new.options)  # type: ignore[attr-defined]
            return found[0]
        return self._endpoints_only(old, new)

    def _endpoints_only(self, old: Hashable, new: Hashable) -> bool:
        if not isinstance(old, NodeInput) or not isinstance(new, NodeInput) or (
            old.options is not new.options and old.options != new.options
        ):
            return False
        late = self._late(new.options.layout)
        return (
            late is not None
            and old.node == new.node
            and _same_config_pods(old.local_pods, new.local_pods)
            and old.policies == new.policies
            and self._same_shape(late, old.mesh, new.mesh)
        )

    def _same_shape(self, late: LateEndpoints, old: MeshInput, new: MeshInput) -> bool:
        """Whether the meshes' shapes are equal: compared once for all the nodes holding them."""
        if self._shapes_of is not new:
            self._shapes_of, self._shapes_compared = new, {}
        # by identity (the value holds both: their ids stay theirs): asked for each of 100 nodes
        key = (id(late), id(old))
        found = self._shapes_compared.get(key)
        if found is None:
            found = self._shapes_compared[key] = (old is new or _shape(late, old) == _shape(late, new), late, old)
        return found[0]

    def endpoints(self, node_input: NodeInput) -> EndpointSets:
        """The node's ClusterLoadAssignments alone (see :meth:`endpoints_only`): made once per
        model for all the nodes whose input is the same to them (``LateEndpoints.key``)."""
        options = node_input.options
        late = self._late(options.layout)
        if late is None:
            raise ValueError(f"layout {options.layout!r} makes its endpoints with the rest of its config")
        if self._endpoints_mesh is not node_input.mesh:  # a new model: the last one's are not kept
            self._endpoints_mesh, self._endpoints = node_input.mesh, {}
        # the layout and the options by identity (the value holds them: their ids stay theirs), asked
        # for each of 100 nodes that all hold the same ones
        key = (id(late), id(options), late.key(node_input))
        found = self._endpoints.get(key)
        if found is None:
            found = self._endpoints[key] = (self._make_endpoints(late, node_input), late, options)
        return found[0]

    def _late(self, layout: str) -> LateEndpoints | None:
        """``late_endpoints(layout)``, looked up once per layout."""
        found = self._lates.get(layout, self)
        if found is self:
            found = self._lates[layout] = late_endpoints(layout)
        return found  # type: ignore[return-value]

    def _make_endpoints(self, late: LateEndpoints, node_input: NodeInput) -> EndpointSets:
        view = NodeView.for_input(node_input, self.fragments, whole_listeners=False)
        out = NodeResources(node=node_input.node)
        late.add(view, out)
        sets = tuple(view.resource_sets)
        if (
            out.listeners
            or out.clusters
            or any(s.type_url != ENDPOINT_TYPE for s in sets)
            or not _names_of_sets(out.endpoints.keys(), [s.resources.keys() for s in sets])
        ):
            raise ValueError(f"layout {node_input.options.layout!r}: its endpoints are not shared endpoint sets alone")
        return EndpointSets(sets, tuple(view.used.values()))


def _names_of_sets(names: KeysView[str], sets: list[KeysView[str]]) -> bool:
    """Whether ``names`` are the names of ``sets`` together, without a set of them made (thousands
    of names, once per change): they are when ``names`` holds each set's, the sets are disjoint and
    their sizes add up to its; else (a name in two sets) they are compared as sets."""
    if sum(map(len, sets)) == len(names) and all(keys <= names for keys in sets) and all(
        a.isdisjoint(b) for a, b in combinations(sets, 2)
    ):
        return True
    return names == set().union(*sets)


#: What a node's config never reads of its own pods, but through its endpoints (every node's,
#: from the model's endpoints): whether each is ready, or terminating. A pod of the node turning
#: unready (the commonest churn) then changes the node's endpoints alone, as it does every other
#: node's: the node is not translated again (tests/properties/test_endpoints_only.py holds the
#: translators to it).
_ENDPOINT_ONLY_FIELDS = ("ready", "terminating")


def _same_config_pods(old: tuple[Workload, ...], new: tuple[Workload, ...]) -> bool:
    """Whether the node's pods ``old`` and ``new`` are the same but for :data:`_ENDPOINT_ONLY_FIELDS`."""
    if old == new:
        return True
    if len(old) != len(new):
        return False
    for a, b in zip(old, new):
        if a is not b and a != b and replace(a, **{f: getattr(b, f) for f in _ENDPOINT_ONLY_FIELDS}) != b:
            return False
    return True


def _shape(late: LateEndpoints, mesh: MeshInput) -> Hashable:
    """``late.shape(mesh)``, once per mesh (every node's input holds the same one)."""
    cache = mesh.__dict__.setdefault("_shapes", {})
    found = cache.get(late)
    if found is None:
        found = cache[late] = late.shape(mesh)
    return found
