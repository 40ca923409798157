"""Which policies apply to which workload: the one place that answers it.

Istio's rules, as its ambient control plane applies them for the ztunnels:

- an AuthorizationPolicy with a selector applies to the matching workloads of its own namespace and,
  in the root namespace, of every namespace; without a selector (or with an empty one) to every
  workload of its namespace, and in the root namespace to the whole mesh;
- a policy bound with ``targetRef(s)``, or with the AUDIT or CUSTOM action, is not for the ztunnels
  (a waypoint's, or an ext_authz provider's): it is reported and not enforced;
- PeerAuthentication: the mesh policy (root namespace, no selector), then the namespace's, then one
  selecting the workload (not in the root namespace) each override the mode unless UNSET; where two
  compete at one level, the oldest wins; ``portLevelMtls`` of the workload's policy overrides per port.

Everything is computed once per model, for every meshed workload, so the problems it reports
(unsupported fields, competing policies) are known before anything is translated. While the
policies stay the same, a workload's answer (and the problems it made reported) is the previous
model's for the same workload object: a pod added costs that pod, not the mesh.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable, Iterable, Mapping, Sequence

from .objects import Workload
from .policy import (
    Action,
    AuthorizationPolicy,
    EffectiveMtls,
    MtlsMode,
    PeerAuthentication,
    WorkloadPolicies,
    selects,
)
from .problems import Problem, Problems

_NOTHING = WorkloadPolicies()
_namespace = attrgetter("namespace")


def _age(p: AuthorizationPolicy | PeerAuthentication) -> tuple[str, str, str]:
    """Oldest first; an object without a creationTimestamp (a hand-written manifest) sorts by name."""
    return (p.created or "~", p.namespace, p.name)


#: The meshed workloads of a namespace that a (non-empty) selector matches, in (namespace, name) order.
Selected = Callable[[str, Mapping[str, str]], Sequence[Workload]]


def _permissive(mode: MtlsMode) -> MtlsMode:
    """DISABLE cannot turn the ztunnels' mTLS off; what it still means is: plaintext is admitted."""
    return MtlsMode.PERMISSIVE if mode is MtlsMode.DISABLE else mode


@dataclass(frozen=True)
class _Scoped:
    """A namespace's (or the mesh's) policies of one kind, split by whether they select."""

    wide: tuple  # no selector: every workload of the scope
    selecting: tuple  # a selector: the workloads it matches


def _changed_selectors(before: _Scoped | None, now: _Scoped | None) -> list[Mapping[str, str]] | None:
    """The selectors of the policies that differ between two versions of a namespace's scope (each
    policy's old and new one), when only selecting policies differ; None when a policy without a
    selector does (it decides for every workload of the namespace)."""
    if (before.wide if before else ()) != (now.wide if now else ()):
        return None
    old = {p.name: p for p in (before.selecting if before else ())}
    new = {p.name: p for p in (now.selecting if now else ())}
    return [p.selector for name, p in old.items() if new.get(name) != p] + [
        p.selector for name, p in new.items() if old.get(name) != p
    ]


class PolicyIndex:
    """The policies of one model, by workload. Construct with :meth:`build`."""

    def __init__(self, root_namespace: str, problems: Problems) -> None:
        self.root_namespace = root_namespace
        self.problems = problems
        self.authorization: tuple[AuthorizationPolicy, ...] = ()  # the enforced ones
        self.peer_authentication: tuple[PeerAuthentication, ...] = ()
        self._by_workload: dict[tuple[str, str], WorkloadPolicies] = {}
        #: What the answers were derived from, and each workload's (by ``id``, the workload held so
        #: the id stays its own): its policies and the problems it reports unless already reported.
        self._derived_from: tuple = ()
        self._derived: dict[int, tuple[Workload, WorkloadPolicies, tuple[tuple[tuple, Problem], ...]]] = {}
        #: Whether ``_derived`` is this index's: a patch takes the dict over from the index it
        #: patches, changed in place (not a copy of 10,000 entries per pod change); that one's
        #: answers stand (``_by_workload``), but it is then rebuilt from without reusing any.
        self._owns_derived = True
        self._competing: tuple[Problem, ...] = ()  # the competing-policy warnings, in the order reported
        #: The enforced AuthorizationPolicies and the PeerAuthentications by namespace: a workload's
        #: answer depends on the root namespace's and its own namespace's alone.
        self._scopes: tuple[dict[str, _Scoped], dict[str, _Scoped]] = ({}, {})
        #: The workloads whose answer may differ from the previous model's (None: built without one).
        self.changed: list[Workload] | None = None

    @classmethod
    def build(
        cls,
        authorization: Iterable[AuthorizationPolicy],
        peer_authentication: Iterable[PeerAuthentication],
        workloads: Iterable[Workload],
        *,
        root_namespace: str,
        problems: Problems,
        previous: "PolicyIndex | None" = None,
        changes: tuple[list[Workload], list[Workload]] | None = None,
        selected: Selected | None = None,
    ) -> "PolicyIndex":
        """``previous``: the last model's, whose answers are reused for the same workloads while the
        policies of the root namespace and of theirs are equal (the result is the same without it);
        ``changes``: the workloads added to and removed from the previous model's, when that is all
        that changed of them (then only those, and the workloads the changed policies decide for,
        are looked at: ``workloads`` must then be a sequence in (namespace, name) order);
        ``selected``: finds the workloads a changed selecting policy decides for, without looking
        at the others of its namespace (without it, the whole namespace is answered again)."""
        index = cls(root_namespace, problems)
        authorization, peer_authentication = tuple(authorization), tuple(peer_authentication)
        index._derived_from = (root_namespace, authorization, peer_authentication)
        index.authorization = tuple(p for p in sorted(authorization, key=lambda p: (p.namespace, p.name)) if index._enforced(p))
        index.peer_authentication = tuple(sorted(peer_authentication, key=lambda p: (p.namespace, p.name)))
        for pa in index.peer_authentication:
            index._check_peer_authentication(pa)
        authz = index._scoped(index.authorization)
        peers = index._scoped(index.peer_authentication)
        index._scopes = (authz, peers)
        unchanged: dict[str, bool] = {}  # namespace -> its policies (and the root's) are the previous model's
        reuse: dict = {}
        if previous is not None and not previous._owns_derived:
            pass  # its entries were taken over by a later index and may answer for other policies
        elif previous is not None and previous._derived_from == index._derived_from:
            reuse = previous._derived
            if changes is not None and index._patch(previous, changes, authz, peers):
                problems.extend(index._competing)
                return index
        elif previous is not None and previous.root_namespace == root_namespace:
            before_authz, before_peers = previous._scopes
            for ns in {*authz, *peers, *before_authz, *before_peers}:
                unchanged[ns] = authz.get(ns) == before_authz.get(ns) and peers.get(ns) == before_peers.get(ns)
            if unchanged.get(root_namespace, True):
                reuse = previous._derived
                namespaces = [ns for ns, same in unchanged.items() if not same]
                if changes is not None and index._patch(
                    previous, changes, authz, peers,
                    index._again(namespaces, workloads, (before_authz, before_peers), (authz, peers),  # type: ignore[arg-type]
                                 selected),
                ):
                    problems.extend(index._competing)
                    return index
        reported: set[tuple] = set()
        found_problems = Problems()
        changed: list[Workload] = []
        for w in workloads:
            entry = reuse.get(id(w))
            if entry is None or entry[0] is not w or not unchanged.get(w.namespace, True):
                found: list[tuple[tuple, Problem]] = []
                policies = WorkloadPolicies(*index._authorization_of(w, authz), index._mtls_of(w, peers, found))
                entry = (w, policies, tuple(found))
                changed.append(w)
            index._derived[id(w)] = entry
            _, policies, competing = entry
            for key, problem in competing:  # each set of competing policies once, by the first workload it decides for
                if key not in reported:
                    reported.add(key)
                    found_problems.extend([problem])
            if not policies.empty:
                index._by_workload[(w.namespace, w.name)] = policies
        index._competing = tuple(found_problems)
        index.changed = changed if previous is not None else None
        problems.extend(index._competing)
        return index

    def _again(self, namespaces: Iterable[str], workloads: Sequence[Workload],
               before: tuple[dict[str, _Scoped], ...], now: tuple[dict[str, _Scoped], ...],
               selected: Selected | None) -> list[Workload]:
        """The workloads whose answer a change of the policies of ``namespaces`` (not the root
        namespace) may change: those a changed selecting policy matches (before or now), or every
        one of the namespace (``workloads``: all, in (namespace, name) order) when a policy without
        a selector changed there, or when nothing finds them (``selected``)."""
        again: dict[int, Workload] = {}
        for ns in namespaces:
            selectors: list[Mapping[str, str]] | None = []
            for old_scopes, new_scopes in zip(before, now):
                found = _changed_selectors(old_scopes.get(ns), new_scopes.get(ns))
                selectors = None if found is None or selectors is None else selectors + found
            if selectors is None or selected is None:
                chosen: Iterable[Workload] = workloads[
                    bisect_left(workloads, ns, key=_namespace):bisect_right(workloads, ns, key=_namespace)
                ]
            else:
                chosen = (w for selector in selectors for w in selected(ns, selector))
            again.update((id(w), w) for w in chosen)
        return list(again.values())

    def _patch(self, previous: "PolicyIndex", changes: tuple[list[Workload], list[Workload]],
               authz: dict[str, _Scoped], peers: dict[str, _Scoped], changed: Iterable[Workload] = ()) -> bool:
        """The previous answers with the workloads added and removed, and those of ``changed``
        (whose policies may have changed) answered again, when none of them decides which of
        competing policies is reported, before or now (else False, nothing done: the competing
        ones are reported in the workloads' order)."""
        added, removed = changes
        again = list(added)
        if changed:
            ids = set(map(id, added))
            again += (w for w in changed if id(w) not in ids)
        derived = previous._derived
        if not again and not removed:  # the same workloads: the same answers
            self._derived, self._by_workload, self._competing = derived, previous._by_workload, previous._competing
            previous._owns_derived = False
            self.changed = []
            return True
        for w in removed:
            entry = derived.get(id(w))
            if entry is None or entry[0] is not w or entry[2]:
                return False
        answers = []
        for w in again:
            entry = derived.get(id(w))
            if entry is not None and (entry[0] is not w or entry[2]):
                return False
            found: list[tuple[tuple, Problem]] = []
            policies = WorkloadPolicies(*self._authorization_of(w, authz), self._mtls_of(w, peers, found))
            if found:
                return False
            answers.append((w, policies))
        # nothing fails from here on: the entries are taken over, the answers copied only if they change
        by_workload = previous._by_workload
        copied = False
        for w in removed:
            del derived[id(w)]
            if (w.namespace, w.name) in by_workload:
                if not copied:
                    by_workload, copied = by_workload.copy(), True
                del by_workload[(w.namespace, w.name)]
        for w, policies in answers:
            derived[id(w)] = (w, policies, ())
            key = (w.namespace, w.name)
            if (key in by_workload) if policies.empty else by_workload.get(key) is not policies:
                if not copied:
                    by_workload, copied = by_workload.copy(), True
                if policies.empty:
                    by_workload.pop(key, None)
                else:
                    by_workload[key] = policies
        previous._owns_derived = False
        self._derived, self._by_workload, self._competing = derived, by_workload, previous._competing
        self.changed = again
        return True

    # -- what is enforced -------------------------------------------------------------------

    def _enforced(self, p: AuthorizationPolicy) -> bool:
        if p.target_refs:
            self.problems.warning(
                p.ref,
                f"targetRef(s) {', '.join(p.target_refs[:4])} bind it to a waypoint, which zpilot does not run:"
                " not enforced by the ztunnels",
            )
            return False
        if p.action not in (Action.ALLOW, Action.DENY):
            self.problems.error(p.ref, f"action {p.action.value} is not supported by an L4 ztunnel: not enforced")
            return False
        for i, rule in enumerate(p.rules):
            fields = rule.l7_fields
            if not fields:
                continue
            listed = ", ".join(fields[:6]) + (f" and {len(fields) - 6} more" if len(fields) > 6 else "")
            if p.action is Action.ALLOW:
                effect = "an L4 proxy cannot check them, so this ALLOW rule matches nothing (fail closed)"
            else:
                effect = "an L4 proxy cannot check them, so this DENY rule ignores them and matches more (fail closed)"
            self.problems.warning(p.ref, f"rule {i} uses L7-only fields ({listed}): {effect}")
        return True

    def _check_peer_authentication(self, pa: PeerAuthentication) -> None:
        if pa.namespace == self.root_namespace and pa.selector:
            self.problems.warning(pa.ref, "a selector in the root namespace is ignored for the ztunnels (as Istio does)")
        modes = {pa.mode, *pa.port_modes.values()}
        if MtlsMode.DISABLE in modes:
            self.problems.info(pa.ref, "DISABLE acts as PERMISSIVE: plaintext is admitted, and between ztunnels it is"
                               " always mTLS")

    def _scoped(self, policies: tuple) -> dict[str, _Scoped]:
        by_ns: dict[str, tuple[list, list]] = {}
        for p in policies:
            wide, selecting = by_ns.setdefault(p.namespace, ([], []))
            (selecting if p.selector else wide).append(p)
        return {ns: _Scoped(tuple(w), tuple(s)) for ns, (w, s) in by_ns.items()}

    # -- per workload -----------------------------------------------------------------------

    def _authorization_of(
        self, w: Workload, scoped: dict[str, _Scoped]
    ) -> tuple[tuple[AuthorizationPolicy, ...], tuple[AuthorizationPolicy, ...]]:
        found: list[AuthorizationPolicy] = []
        for ns in dict.fromkeys((self.root_namespace, w.namespace)):  # the mesh's, then the namespace's
            scope = scoped.get(ns)
            if scope is not None:
                found += scope.wide
                found += [p for p in scope.selecting if selects(p.selector, w)]
        found.sort(key=lambda p: (p.namespace, p.name))
        deny = tuple(p for p in found if p.action is Action.DENY)
        allow = tuple(p for p in found if p.action is Action.ALLOW)
        return deny, allow

    def _oldest(self, candidates: list[PeerAuthentication], what: str, competing: list[tuple[tuple, Problem]]):
        """The oldest of ``candidates``; when several compete, appends (their key, the warning) to
        ``competing`` (the caller reports each key once)."""
        if not candidates:
            return None
        chosen = min(candidates, key=_age)
        if len(candidates) > 1:
            key = tuple(sorted(str(c.ref) for c in candidates))
            others = ", ".join(str(c.ref) for c in candidates if c is not chosen)
            found = Problems()
            found.warning(chosen.ref, f"competes with {others} as the {what}: the oldest, this one, is used")
            competing.extend((key, problem) for problem in found)
        return chosen

    def _mtls_of(
        self, w: Workload, scoped: dict[str, _Scoped], competing: list[tuple[tuple, Problem]]
    ) -> EffectiveMtls:
        root = scoped.get(self.root_namespace)
        own = scoped.get(w.namespace) if w.namespace != self.root_namespace else None
        levels = [
            self._oldest(list(root.wide) if root else [], "mesh-wide PeerAuthentication", competing),
            self._oldest(list(own.wide) if own else [], f"PeerAuthentication of namespace {w.namespace}", competing),
            self._oldest([p for p in (own.selecting if own else ()) if selects(p.selector, w)],
                         f"PeerAuthentication selecting {w.ref}", competing),
        ]
        mode, decided_by = MtlsMode.PERMISSIVE, []
        for pa in levels:
            if pa is not None and pa.mode is not MtlsMode.UNSET:
                mode = _permissive(pa.mode)
                decided_by.append(pa.ref)
        ports: dict[int, MtlsMode] = {}
        workload_pa = levels[2]
        if workload_pa is not None:
            for port, port_mode in sorted(workload_pa.port_modes.items()):
                if port_mode is not MtlsMode.UNSET and _permissive(port_mode) is not mode:
                    ports[port] = _permissive(port_mode)
            if workload_pa.port_modes and workload_pa.ref not in decided_by:
                decided_by.append(workload_pa.ref)
        return EffectiveMtls(mode, ports, tuple(decided_by))

    # -- lookups ----------------------------------------------------------------------------

    def for_workload(self, w: Workload) -> WorkloadPolicies:
        """The policies deciding who may connect to ``w`` (nothing at all for a workload outside the mesh)."""
        return self._by_workload.get((w.namespace, w.name), _NOTHING)
