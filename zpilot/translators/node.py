"""One node's whole config from its view: the fixed clusters, the layout's outbound side, the
inbound listeners and the secrets they name; and what the config was made of."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

from .. import contract
from . import clusters, inbound
from .context import ListenerParts, NodeView, ResourceSet
from .fragments import Fragment
from .inputs import NodeInput
from .layout import add_outbound
from .resources import NodeResources


@dataclass(frozen=True)
class Translated:
    """A node's resources, the input they were translated from, and the shared pieces they are
    made of: holding this keeps those pieces in the memo (fragments.py), and a consumer may use
    what it derived from them before instead of deriving it again for this node."""

    resources: NodeResources
    input: NodeInput
    fragments: tuple[Fragment, ...]
    resource_sets: tuple[ResourceSet, ...]
    #: Listeners put together from shared pieces, by name (see ``ListenerParts``); translated
    #: without whole listeners (``NodeView.whole_listeners``), ``resources`` holds their own parts.
    listener_parts: Mapping[str, ListenerParts] = field(default_factory=dict)
    #: Whether ``resources`` leaves out the members of ``resource_sets`` (``NodeView.sets_apart``):
    #: then it holds the node's own resources alone, none of them named as a set's member.
    sets_apart: bool = False

    def shared_resource(self, message: object) -> Fragment | None:
        """The fragment a whole resource of this node is (the same object), if it is one."""
        return self._by_message.get(id(message))

    @cached_property
    def _by_message(self) -> dict[int, Fragment]:
        # ids are stable here: the fragments held by this object keep their values alive. A
        # listener whose parts are a fragment (ListenerParts) is found by its own part: what it
        # is joined from is the fragment's, so it is serialized once.
        found = {id(f.value): f for f in self.fragments}
        found.update((id(f.value.own), f) for f in self.fragments if isinstance(f.value, ListenerParts))
        return found


def translate_view(view: NodeView) -> Translated:
    """Everything the node's ztunnel needs; a node with no meshed pods still gets its fixed
    listeners and clusters, so its Envoy is ready the moment a pod arrives."""
    limits = view.options.limits
    out = NodeResources(node=view.node)
    for cluster in (
        view.shared(clusters.virtual_inbound, limits),
        view.shared(clusters.passthrough, limits),
        view.shared(clusters.blackhole),
    ):
        out.clusters[cluster.name] = cluster
    add_outbound(view.options.layout, view, out)
    for listener in inbound.inbound_listeners(view):
        out.listeners[listener.name] = listener
    for _pod, identity, secret in view.local_secrets:
        out.add_secret(secret, identity)
    if out.secrets:  # only TLS contexts reference the trust bundle; with no local pod there are none
        out.add_secret(contract.ROOT_CA_SECRET, None)
    _check_sets(view, out)
    return Translated(
        out, view.input, tuple(view.used.values()), tuple(view.resource_sets), dict(view.listener_parts), view.sets_apart
    )


def _check_sets(view: NodeView, out: NodeResources) -> None:
    """A resource set's names must hold its very messages: a consumer serves the set's form of them."""
    if view.sets_apart:
        _check_sets_apart(view, out)
        return
    by_type = out.by_type()
    for resource_set in view.resource_sets:
        held, members = by_type[resource_set.type_url], resource_set.resources
        if not all(map(operator.is_, map(held.get, members), members.values())):
            raise ValueError(f"node {view.node}: a resource of a shared set was replaced by the layout")


def _check_sets_apart(view: NodeView, out: NodeResources) -> None:
    """:func:`_check_sets` of sets not copied into ``out`` (``NodeView.sets_apart``), without a copy:
    what it finds of the copies, found from the names the sets share with each other and with the
    node's own (a few, looked up; not thousands copied). A name in several sets must be the very
    same message in each (the copy held the last one's); a name of the node's own in a set (written
    after the set was added: one written before was dropped, ``NodeView.add_resources``) must be
    the set's very message, and is then the set's alone, as the copy was."""
    by_type = out.by_type()
    sets = view.resource_sets
    for i, resource_set in enumerate(sets):
        held, members = by_type[resource_set.type_url], resource_set.resources
        names = members.keys()
        if held and not names.isdisjoint(held):
            for name in [name for name in held if name in members]:
                if held[name] is not members[name]:
                    raise ValueError(f"node {view.node}: a resource of a shared set was replaced by the layout")
        for later in sets[i + 1 :]:
            if later.type_url != resource_set.type_url:
                continue
            others = later.resources
            if not names.isdisjoint(others.keys()):
                if any(members[name] is not others[name] for name in names & others.keys()):
                    raise ValueError(f"node {view.node}: a resource of a shared set was replaced by the layout")
    for resource_set in sets:  # a name of the node's own that a set holds (the very message): the set's
        held = by_type[resource_set.type_url]
        if held:
            members = resource_set.resources
            for name in [name for name in held if name in members]:
                del held[name]
