"""Security policy in the model: Istio's AuthorizationPolicy and PeerAuthentication, reduced to what an
L4 ztunnel can enforce, and keeping a record of what it cannot (so nothing is dropped unseen).

The objects stay close to Istio's API (principals are Istio's strings, ports are the application's
ports) so that the translator, ``zpilot explain`` and the tests' reference evaluator all read the
same thing. Which policies apply to which workload is decided in :mod:`zpilot.model.policy_index`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Mapping

from .objects import ObjectRef, Workload

#: Istio's default root namespace: a policy there without a selector applies to the whole mesh.
DEFAULT_ROOT_NAMESPACE = "istio-system"
SECURITY_API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")

#: ``when`` keys an L4 proxy can evaluate (the ambient ztunnel's list); any other key is L7.
L4_CONDITION_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)


class Action(str, Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"  # not enforceable by a ztunnel: reported, not enforced
    CUSTOM = "CUSTOM"  # ext_authz, needs a waypoint: reported, not enforced


@dataclass(frozen=True)
class Source:
    """One ``from[].source``: every list it sets must match (each list: any of its values)."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()  # "ns/sa", or "sa" in the policy's namespace
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()  # addresses or CIDRs, as given
    not_ip_blocks: tuple[str, ...] = ()
    #: Names of the L7-only fields it sets (requestPrincipals, remoteIpBlocks, ...), in API order.
    l7: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    """One ``to[].operation``: ports are the application's (the port inside the tunnel)."""

    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    l7: tuple[str, ...] = ()  # methods, paths, hosts and their not- forms


@dataclass(frozen=True)
class Condition:
    """One ``when`` entry."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    @property
    def l4(self) -> bool:
        return self.key in L4_CONDITION_KEYS


@dataclass(frozen=True)
class Rule:
    """Matches when every part it has matches: any of ``sources``, any of ``operations``, and each condition."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()

    @property
    def l7_fields(self) -> tuple[str, ...]:
        """The L7-only fields (and ``when`` keys) the rule uses, each once, in order."""
        found: dict[str, None] = {}
        for s in self.sources:
            found.update(dict.fromkeys(s.l7))
        for o in self.operations:
            found.update(dict.fromkeys(o.l7))
        for c in self.conditions:
            if not c.l4:
                found[f"when {c.key}"] = None
        return tuple(found)


@dataclass(frozen=True)
class AuthorizationPolicy:
    name: str
    namespace: str
    action: Action = Action.ALLOW
    #: ``spec.selector.matchLabels``; None (or empty) scopes the policy to its namespace, or to the mesh in the root namespace.
    selector: Mapping[str, str] | None = field(default=None, hash=False)
    rules: tuple[Rule, ...] = ()
    #: ``targetRef`` / ``targetRefs`` as ``Kind/name``: they bind the policy to a waypoint, not to the ztunnels.
    target_refs: tuple[str, ...] = ()
    created: str = ""

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("AuthorizationPolicy", self.name, self.namespace)


class MtlsMode(str, Enum):
    UNSET = "UNSET"  # inherit from the enclosing scope
    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"  # the ztunnels always use mTLS between themselves: acts as PERMISSIVE


@dataclass(frozen=True)
class PeerAuthentication:
    name: str
    namespace: str
    selector: Mapping[str, str] | None = field(default=None, hash=False)
    mode: MtlsMode = MtlsMode.UNSET
    #: ``portLevelMtls``: the workload's port (the application's) -> its mode.
    port_modes: Mapping[int, MtlsMode] = field(default_factory=lambda: EMPTY_PORT_MODES, hash=False)
    created: str = ""

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("PeerAuthentication", self.name, self.namespace)


EMPTY_PORT_MODES: Mapping[int, MtlsMode] = MappingProxyType({})


def selects(selector: Mapping[str, str] | None, workload: Workload) -> bool:
    """``matchLabels`` semantics: every label given must be on the workload (an empty selector: all)."""
    return all(workload.labels.get(k) == v for k, v in (selector or {}).items())


@dataclass(frozen=True)
class EffectiveMtls:
    """What a workload accepts in plaintext (the plaintext inbound port), per port of the application.

    mTLS through the HBONE port is always accepted; STRICT only refuses plaintext.
    """

    default: MtlsMode = MtlsMode.PERMISSIVE  # STRICT or PERMISSIVE
    #: Ports whose mode differs from ``default`` (STRICT or PERMISSIVE).
    ports: Mapping[int, MtlsMode] = field(default_factory=lambda: EMPTY_PORT_MODES, hash=False)
    #: The PeerAuthentications that decided it, mesh before namespace before workload.
    decided_by: tuple[ObjectRef, ...] = ()

    def strict(self, port: int) -> bool:
        return self.ports.get(port, self.default) is MtlsMode.STRICT

    @property
    def refuses_any_plaintext(self) -> bool:
        return self.default is MtlsMode.STRICT or MtlsMode.STRICT in self.ports.values()

    def describe(self) -> str:
        exceptions = ", ".join(f"{p}: {m.value}" for p, m in sorted(self.ports.items()))
        return self.default.value + (f" (ports {exceptions})" if exceptions else "")


@dataclass(frozen=True)
class WorkloadPolicies:
    """Everything that decides who may connect to one workload: the answer of the policy index."""

    deny: tuple[AuthorizationPolicy, ...] = ()  # enforced DENY policies, by namespace and name
    allow: tuple[AuthorizationPolicy, ...] = ()  # enforced ALLOW policies; any at all => default deny
    mtls: EffectiveMtls = EffectiveMtls()

    @property
    def empty(self) -> bool:
        return not self.deny and not self.allow and not self.mtls.refuses_any_plaintext
