"""One node's view of the mesh: what the translators of that node's config need to know.

Built from the node's :class:`~zpilot.translators.inputs.NodeInput` alone, so a translator
cannot read anything its node's input does not hold (that is what makes "equal input, equal
config" true). Computed once per node so every translator sees the same local pods, identities
and secret names, in the same (sorted) order, which keeps output deterministic for golden tests
and content hashes. Pieces of config that other nodes (or this node's previous config) share
are asked for through :meth:`NodeView.shared` (see fragments.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping

from google.protobuf.message import Message

from ..model.index import Endpoint, MeshIndex, ServiceTarget
from ..model.objects import Workload
from ..model.policy import WorkloadPolicies
from . import names
from .fragments import Fragment, FragmentGroup, Fragments
from .inputs import MeshInput, NodeInput, ServicePortInput, node_inputs
from .options import TranslateOptions
from .resources import NodeResources

__all__ = [
    "ListenerParts", "LocalIdentity", "NodeView", "ResourceSet", "SerializedChains", "ServedVip", "TranslateOptions",
    "record_hash",
]


@dataclass(frozen=True)
class LocalIdentity:
    """A service account with at least one meshed pod on this node."""

    spiffe_id: str
    pods: tuple[Workload, ...]
    #: ``TranslateOptions.pod_secrets``: whether its certificate's secrets are named by pod.
    pod_secrets: bool = True

    @property
    def secret_name(self) -> str:
        """The secret its outbound TLS presents: named after the first of its pods, as the article's is
        (or by the identity, without :attr:`pod_secrets`)."""
        return names.workload_secret(self.spiffe_id, self.pods[0], self.pod_secrets)


@dataclass(frozen=True)
class ServedVip:
    """A service VIP:port this node's ztunnel captures, and where its new connections go."""

    vip: str
    target: ServiceTarget
    endpoints: tuple[Endpoint, ...]
    #: The service port's input: what a shared piece of config built for it is keyed by.
    port_input: ServicePortInput


@dataclass(frozen=True)
class ResourceSet:
    """Resources of one type that every node using them gets alike (by name, the very same
    messages): a fragment whose value is a :class:`FragmentGroup` (one fragment per resource)
    or a mapping of names to messages. A consumer may derive things from the set once, for all
    those nodes (the serialized form, the consistency facts), and from each member once, for
    all the sets holding it."""

    type_url: str
    fragment: Fragment

    @property
    def resources(self) -> Mapping[str, Message]:
        value = self.fragment.value
        return value.values if isinstance(value, FragmentGroup) else value

    def member(self, name: str) -> Fragment | None:
        """The fragment resource ``name`` is, when the set is a group of fragments."""
        value = self.fragment.value
        return value.members.get(name) if isinstance(value, FragmentGroup) else None


@dataclass(frozen=True, eq=False)
class SerializedChains:
    """Filter chains kept serialized, as a ``ListenerParts`` piece: each chain as its listener's
    ``filter_chains`` entry (tag, length, chain), and what the consistency check needs of it
    (``consistency.ChainFacts``: its name, what it matches, what it needs), made with it.

    What a node's own chains (its pods' inbound chains) are kept as once the node has changed:
    the next change makes the chains of the pods that changed, and takes the others' bytes and
    facts as they are (translators/inbound.py), never the hundred chains' messages again."""

    records: tuple[bytes, ...]
    facts: tuple[Any, ...]
    #: Each record's content hash (:func:`record_hash`), made with it: the listener's version is
    #: made from these (xds/resource_store.py), its hundred chains' bytes never hashed again.
    hashes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not len(self.records) == len(self.facts) == len(self.hashes):
            raise ValueError(
                f"{len(self.records)} serialized chains with the facts of {len(self.facts)} and {len(self.hashes)} hashes"
            )


#: Where a consumer that serialized a fragment's message deterministically may keep those bytes
#: (``Fragment.derived``): a view of what it holds anyway (the producer: the served resource), not a
#: copy. A translator cutting that message's parts (translators/inbound.py) reads them instead of
#: serializing the message again; they are exactly ``SerializeToString(deterministic=True)``.
SERIALIZED_BYTES = "serialized.deterministic"


def record_hash(data: bytes | memoryview) -> str:
    """A serialized chain's content hash: what ``xds.snapshot.content_version`` makes of its bytes
    (the same function: a listener versioned by its chains is versioned alike however it was made)."""
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class ListenerParts:
    """How a listener was put together from shared pieces, so that what a consumer derives from
    it is its own part's plus each piece's, each piece's derived once for every node: its
    serialized form (the pieces' bytes joined into its own, not megabytes serialized again per
    node: ``xds/resource_store.py``), its consistency facts (not a walk through every node's copy
    of the same thousands of chains).

    ``own`` is the listener without the pieces: without the chains of ``chains`` (fragments whose
    value is a tuple of filter chains or :class:`SerializedChains`, appended after its own), its
    matcher leading to an empty ``on_match`` where it leads to ``matches`` (fragments whose value
    is a serialized ``OnMatch``); ``match_paths`` says where each is, as the field numbers from the
    listener down to it.
    """

    own: Message
    chains: tuple[Fragment, ...] = ()
    matches: tuple[Fragment, ...] = ()
    match_paths: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class NodeView:
    input: NodeInput
    identities: tuple[LocalIdentity, ...]
    fragments: Fragments
    #: The fragments this node's config was made of (by id): what keeps them alive in the memo.
    used: dict[int, Fragment] = field(default_factory=dict, compare=False, repr=False)
    resource_sets: list[ResourceSet] = field(default_factory=list, compare=False, repr=False)
    listener_parts: dict[str, ListenerParts] = field(default_factory=dict, compare=False, repr=False)
    #: False: a listener put together from shared pieces is left as its own part (``ListenerParts.own``)
    #: for a consumer that joins the pieces' bytes to it; the whole message would be megabytes copied
    #: per node for nothing.
    whole_listeners: bool = field(default=True, compare=False)
    #: True: a shared set's members are not copied into the node's ``NodeResources`` (the set is in
    #: ``resource_sets`` alone): for a consumer that takes the sets as they are (the producer), to
    #: whom copying a node's 4,000 shared clusters and endpoints, and finding them again among its
    #: own, was a fifth of a pod change's build.
    sets_apart: bool = field(default=False, compare=False)

    @classmethod
    def of(cls, index: MeshIndex, node: str, options: TranslateOptions, fragments: Fragments | None = None) -> "NodeView":
        """The view of ``node`` in ``index`` (the whole model is read: for one node at a time)."""
        return cls.for_input(node_inputs(index, [node], options)[node], fragments)

    @classmethod
    def for_input(
        cls,
        node_input: NodeInput,
        fragments: Fragments | None = None,
        *,
        whole_listeners: bool = True,
        sets_apart: bool = False,
    ) -> "NodeView":
        by_identity: dict[str, list[Workload]] = {}
        trust_domain = node_input.options.trust_domain
        sids = [names.workload_identity(trust_domain, pod) for pod in node_input.local_pods]
        for pod, sid in zip(node_input.local_pods, sids):
            by_identity.setdefault(sid, []).append(pod)
        pod_secrets = node_input.options.pod_secrets
        identities = tuple(
            LocalIdentity(sid, tuple(sorted(ws, key=lambda w: (w.name, w.uid))), pod_secrets)
            for sid, ws in sorted(by_identity.items())
        )
        view = cls(
            node_input,
            identities,
            fragments if fragments is not None else Fragments(),
            whole_listeners=whole_listeners,
            sets_apart=sets_apart,
        )
        object.__setattr__(view, "_local_identities", tuple(sids))
        return view

    @property
    def node(self) -> str:
        return self.input.node

    @property
    def options(self) -> TranslateOptions:
        return self.input.options

    @property
    def local_pods(self) -> tuple[Workload, ...]:
        return self.input.local_pods

    @property
    def mesh(self) -> MeshInput:
        """What this node can reach (answers ``vips()``, ``endpoints()``, ``meshed_workloads()``)."""
        return self.input.mesh

    @property
    def trust_domain(self) -> str:
        return self.options.trust_domain

    @property
    def cluster_domain(self) -> str:
        return self.mesh.cluster_domain

    def policies_for(self, pod: Workload) -> WorkloadPolicies:
        """What decides who may connect to ``pod``, one of :attr:`local_pods`."""
        policies = self.__dict__.get("_policies")
        if policies is None:
            policies = dict(zip(((w.namespace, w.name) for w in self.local_pods), self.input.policies))
            object.__setattr__(self, "_policies", policies)
        return policies.get((pod.namespace, pod.name), WorkloadPolicies())

    def identity_of(self, workload: Workload) -> str:
        local = self.__dict__.get("_identity_by_pod")
        if local is None:
            local = {id(pod): sid for pod, sid, _secret in self.local_secrets}
            object.__setattr__(self, "_identity_by_pod", local)
        found = local.get(id(workload))  # a local pod's (held by the input: its id is its own)
        return found if found is not None else names.workload_identity(self.trust_domain, workload)

    @property
    def local_secrets(self) -> tuple[tuple[Workload, str, str], ...]:
        """Each local pod (in :attr:`local_pods`' order) with its identity and its secret's name:
        made once per view (its inbound chains, its secrets and its tunnel read them; 100 pods)."""
        found = self.__dict__.get("_local_secrets")
        if found is None:
            sids = self.__dict__.get("_local_identities")
            if sids is None:
                sids = tuple(names.workload_identity(self.trust_domain, pod) for pod in self.local_pods)
            pod_secrets = self.options.pod_secrets
            found = tuple(
                (pod, sid, names.workload_secret(sid, pod, pod_secrets)) for pod, sid in zip(self.local_pods, sids)
            )
            object.__setattr__(self, "_local_secrets", found)
        return found

    def is_local(self, workload: Workload) -> bool:
        return workload.node_name == self.node

    def served_vips(self) -> list[ServedVip]:
        """The VIP:ports to capture here: those with an endpoint for this node (in VIP order).

        A VIP:port without one gets no chain: it falls through to ``PassthroughFilterChain``, so
        kube-proxy answers it as it would without a mesh (REJECT: no endpoints; DROP: none on this
        node under ``internalTrafficPolicy: Local``), instead of a chain with nowhere to go.
        """
        return [ServedVip(vip, port.target, endpoints, port) for vip, port, endpoints in self.mesh.served(self.node)]

    def served_key(self) -> str | None:
        """What the VIP:ports this node captures depend on of the node: a shared piece built for
        them is keyed by this (the node itself only when some service is node-local)."""
        return self.mesh.served_key(self.node)

    # -- shared pieces of config (fragments.py) -----------------------------------------------

    def fragment(self, builder: Callable[..., Any], *args: Hashable, **kwargs: Hashable) -> Fragment:
        """The memo's fragment ``builder(*args, **kwargs)``, built if no node has it yet."""
        fragment = self.fragments.get(builder, *args, **kwargs)
        self.used[id(fragment)] = fragment
        return fragment

    def use(self, fragment: Fragment) -> Fragment:
        """``fragment`` (found in the memo otherwise than by :meth:`fragment`), noted as one this
        node's config is made of."""
        self.used[id(fragment)] = fragment
        return fragment

    def shared(self, builder: Callable[..., Any], *args: Hashable, **kwargs: Hashable) -> Any:
        """``builder(*args, **kwargs)``, shared with every node (and model) asking the same: never
        change what this returns; copy it into what you build."""
        return self.fragment(builder, *args, **kwargs).value

    def add_resources(
        self, out: NodeResources, type_url: str, builder: Callable[..., Any], *args: Hashable, **kwargs: Hashable
    ) -> Mapping[str, Message]:
        """Add the resources ``builder(*args, **kwargs)`` returns (of ``type_url``: a
        :class:`FragmentGroup`, or name -> message) as a :class:`ResourceSet` shared with every
        node adding the same; returns them by name. A builder that makes a group is given the
        memo (``view.fragments``) as an argument, to get each member from it.

        With :attr:`sets_apart`, the members are not copied into ``out``: a resource ``out``
        holds already under a member's name is dropped, as the copy would have replaced it."""
        resource_set = ResourceSet(type_url, self.fragment(builder, *args, **kwargs))
        held = out.by_type()[type_url]
        if not self.sets_apart:
            held.update(resource_set.resources)
        elif held:  # (a node's own few: what the copy would have replaced)
            members = resource_set.resources
            for name in [name for name in held if name in members]:
                del held[name]
        self.resource_sets.append(resource_set)
        return resource_set.resources
