"""L4 authorization at the receiving ztunnel: AuthorizationPolicy and PeerAuthentication -> Envoy RBAC,
in the filter chain of each local pod (so a node's config carries the policies of its own pods only).

Where the decision is made, and on what:

- HBONE (``contract.PORT_HBONE``, the inbound listener): per CONNECT stream, by HTTP RBAC filters in the chain's CONNECT
  connection manager. The destination port is the one inside the tunnel: the port of the
  ``x-envoy-original-dst-host`` header, which is exactly what ``virtual_inbound`` dials (the 2022 design
  judged the outer connection, whose port is always the HBONE port: istio/istio#41204). The source identity is
  the peer's verified SPIFFE certificate; the source IP is the client pod's address, which the source
  ztunnel puts in ``x-forwarded-for`` (the connection manager makes it the request's remote address).
- plaintext (``contract.PORT_INBOUND_PLAINTEXT``, the plaintext inbound listener): per connection, by network RBAC filters before the
  tcp_proxy, on the original destination port and the peer's address; no identity, so rules that need
  one do not match. The tcp_proxy then connects upstream on the client's first bytes only, after the
  decision (otherwise a server-first application would answer a client before it is refused).

Istio's order: DENY policies first (each its own filter), then, if any ALLOW policy applies, one ALLOW
filter holding all of them (everything they do not allow is denied). ``spec: {}`` (no rules) allows
nothing; an empty rule matches everything. L7-only fields cannot be checked at L4: an ALLOW rule using
them matches nothing, a DENY rule ignores them (so matches more). PeerAuthentication STRICT refuses
plaintext on the ports it covers; mTLS through the HBONE port is always accepted.

Names: each Envoy policy is ``ns[<ns>]-policy[<name>]-rule[<i>]`` (Istio's); stat prefixes name the
policy, so the counters read e.g. ``http.inbound_hcm.rbac.deny.<ns>.<name>.denied`` (HBONE, with
per-rule ``...policy.<rule>.denied``) and ``inbound_plaintext.deny.<ns>.<name>.rbac.denied`` (plaintext).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Union

from google.protobuf import wrappers_pb2

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from .. import contract
from ..model.objects import Workload
from ..model.policy import (
    Action,
    AuthorizationPolicy,
    Condition,
    EffectiveMtls,
    MtlsMode,
    Operation,
    Rule,
    Source,
    WorkloadPolicies,
)
from .envoy_common import pack
from .tcp_proxy import ORIGINAL_DST_HEADER

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
#: Stat prefix of the plaintext listener's RBAC filters (the HBONE side's live under its HCM's "inbound_hcm").
PLAINTEXT_STATS = "inbound_plaintext"
#: The Envoy policy PeerAuthentication STRICT becomes (its filter's stat prefix names the PeerAuthentication).
STRICT_POLICY = "plaintext-refused"


def policy_name(policy: AuthorizationPolicy, rule: int) -> str:
    """Istio's name for the Envoy policy of one rule (what stats and ``zpilot explain`` show)."""
    return f"ns[{policy.namespace}]-policy[{policy.name}]-rule[{rule}]"


# -- a small expression language, folded before it becomes protos --------------------------------


@dataclass(frozen=True)
class Leaf:
    kind: str  # "principal" (a URI SAN matcher), "source_ip" (a CIDR), "port" (the application's port)
    value: object


@dataclass(frozen=True)
class All:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Not:
    item: "Expr"


Expr = Union[bool, Leaf, All, AnyOf, Not]


def all_of(items: Iterable[Expr]) -> Expr:
    kept: list[Expr] = []
    for item in items:
        if item is False:
            return False
        if isinstance(item, All):
            kept.extend(item.items)
        elif item is not True:
            kept.append(item)
    return True if not kept else kept[0] if len(kept) == 1 else All(tuple(kept))


def any_of(items: Iterable[Expr]) -> Expr:
    kept: list[Expr] = []
    for item in items:
        if item is True:
            return True
        if isinstance(item, AnyOf):
            kept.extend(item.items)
        elif item is not False:
            kept.append(item)
    return False if not kept else kept[0] if len(kept) == 1 else AnyOf(tuple(kept))


def negate(item: Expr) -> Expr:
    if isinstance(item, bool):
        return not item
    return item.item if isinstance(item, Not) else Not(item)


def _field(values: Iterable, leaf: Callable[[object], Expr], negative: bool) -> Expr:
    """A list of the API: any of its values; a not-list: none of them. An absent list matches."""
    values = list(values)
    if not values:
        return True
    matched = any_of(leaf(v) for v in values)
    return negate(matched) if negative else matched


# -- what a value of the API means, as a matcher of the peer's URI SAN --------------------------

_SPIFFE = contract.SPIFFE_SCHEME
_SEGMENT = "[^/]+"


_SPECIAL = frozenset("\\.^$*+?()[]{}|")
_ESCAPED = str.maketrans({ch: "\\" + ch for ch in _SPECIAL})


def escape(text: str) -> str:
    """A literal in an RE2 pattern (only its metacharacters escaped, so names stay readable);
    one ``str.translate``: every local pod's route names its IP (10,000 in a cold generation at R)."""
    return text.translate(_ESCAPED)


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def principal_matcher(value: str) -> string_pb2.StringMatcher:
    """Istio's principal syntax (``td/ns/N/sa/S``, ``*``, ``prefix*``, ``*suffix``) on the SPIFFE URI."""
    if value == "*":
        return _regex(f"^{escape(_SPIFFE)}.+$")
    if value.startswith("*"):
        return _regex(f"^{escape(_SPIFFE)}.*{escape(value[1:])}$")
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=_SPIFFE + value[:-1])
    return string_pb2.StringMatcher(exact=_SPIFFE + value)


def _name_part(value: str) -> str:
    """One path segment of the identity (a namespace), with Istio's wildcards."""
    if value == "*":
        return _SEGMENT
    if value.startswith("*"):
        return f"[^/]*{escape(value[1:])}"
    if value.endswith("*"):
        return f"{escape(value[:-1])}[^/]*"
    return escape(value)


def namespace_matcher(value: str) -> string_pb2.StringMatcher:
    return _regex(f"^{escape(_SPIFFE)}{_SEGMENT}/ns/{_name_part(value)}/sa/{_SEGMENT}$")


def service_account_matcher(value: str, policy_namespace: str) -> string_pb2.StringMatcher:
    namespace, _, account = value.rpartition("/")
    return _regex(f"^{escape(_SPIFFE)}{_SEGMENT}/ns/{escape(namespace or policy_namespace)}/sa/{escape(account)}$")


def cidr(block: str) -> address_pb2.CidrRange:
    net = ipaddress.ip_network(block, strict=False)
    return address_pb2.CidrRange(address_prefix=str(net.network_address), prefix_len=wrappers_pb2.UInt32Value(value=net.prefixlen))


# -- rules -> expressions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Where one pod's traffic is judged: facts known when translating fold away."""

    pod_ip: str
    tunnel: bool  # True: HBONE (a verified identity); False: plaintext (no identity)

    def principal(self, matcher: string_pb2.StringMatcher) -> Expr:
        return Leaf("principal", matcher) if self.tunnel else False  # plaintext has no identity to match

    def destination_ip(self, block: str) -> Expr:
        """The destination is always this chain's pod, so ``destination.ip`` is known here."""
        return ipaddress.ip_address(self.pod_ip) in ipaddress.ip_network(block, strict=False)


def _source(s: Source, policy_ns: str, site: Site) -> Expr:
    sa = lambda v: site.principal(service_account_matcher(v, policy_ns))  # noqa: E731
    principal = lambda v: site.principal(principal_matcher(v))  # noqa: E731
    namespace = lambda v: site.principal(namespace_matcher(v))  # noqa: E731
    ip = lambda v: Leaf("source_ip", v)  # noqa: E731
    return all_of(
        [
            _field(s.principals, principal, False),
            _field(s.not_principals, principal, True),
            _field(s.namespaces, namespace, False),
            _field(s.not_namespaces, namespace, True),
            _field(s.service_accounts, sa, False),
            _field(s.not_service_accounts, sa, True),
            _field(s.ip_blocks, ip, False),
            _field(s.not_ip_blocks, ip, True),
        ]
    )


def _operation(o: Operation) -> Expr:
    port = lambda v: Leaf("port", v)  # noqa: E731
    return all_of([_field(o.ports, port, False), _field(o.not_ports, port, True)])


def _condition(c: Condition, site: Site) -> tuple[Expr, Expr]:
    """(permission side, principal side) of one ``when``; a key an L4 proxy cannot read is ignored
    here (only DENY rules get this far with one)."""
    leaves: dict[str, Callable[[str], Expr]] = {
        "source.ip": lambda v: Leaf("source_ip", v),
        "source.namespace": lambda v: site.principal(namespace_matcher(v)),
        "source.principal": lambda v: site.principal(principal_matcher(v)),
        "destination.ip": site.destination_ip,
        "destination.port": lambda v: Leaf("port", int(v)),
    }
    leaf = leaves.get(c.key)
    if leaf is None:
        return True, True
    expr = all_of([_field(c.values, leaf, False), _field(c.not_values, leaf, True)])
    return (expr, True) if c.key.startswith("destination.") else (True, expr)


def rule_expressions(policy: AuthorizationPolicy, rule: Rule, site: Site) -> tuple[Expr, Expr]:
    """(permission, principal) of one rule: it matches when both do. False: it never matches."""
    if policy.action is Action.ALLOW and rule.l7_fields:
        return False, False
    to_clause = any_of(_operation(o) for o in rule.operations) if rule.operations else True
    from_clause = any_of(_source(s, policy.namespace, site) for s in rule.sources) if rule.sources else True
    when = [_condition(c, site) for c in rule.conditions]
    permission = all_of([to_clause, *(p for p, _ in when)])
    principal = all_of([from_clause, *(q for _, q in when)])
    return (False, False) if permission is False or principal is False else (permission, principal)


# -- expressions -> Envoy protos ------------------------------------------------------------------


def _permission(expr: Expr, site: Site) -> rbac_config.Permission:
    P = rbac_config.Permission
    if expr is True:
        return P(any=True)
    if isinstance(expr, All):
        return P(and_rules=P.Set(rules=[_permission(e, site) for e in expr.items]))
    if isinstance(expr, AnyOf):
        return P(or_rules=P.Set(rules=[_permission(e, site) for e in expr.items]))
    if isinstance(expr, Not):
        return P(not_rule=_permission(expr.item, site))
    assert isinstance(expr, Leaf) and expr.kind == "port", expr
    if site.tunnel:  # the stream's real destination: what virtual_inbound dials
        exact = string_pb2.StringMatcher(exact=f"{site.pod_ip}:{expr.value}")
        return P(header=route_components_pb2.HeaderMatcher(name=ORIGINAL_DST_HEADER, string_match=exact))
    return P(destination_port=int(expr.value))  # type: ignore[arg-type]


def _principal(expr: Expr, site: Site) -> rbac_config.Principal:
    Q = rbac_config.Principal
    if expr is True:
        return Q(any=True)
    if isinstance(expr, All):
        return Q(and_ids=Q.Set(ids=[_principal(e, site) for e in expr.items]))
    if isinstance(expr, AnyOf):
        return Q(or_ids=Q.Set(ids=[_principal(e, site) for e in expr.items]))
    if isinstance(expr, Not):
        return Q(not_id=_principal(expr.item, site))
    assert isinstance(expr, Leaf), expr
    if expr.kind == "principal":
        return Q(authenticated=Q.Authenticated(principal_name=expr.value))
    # source_ip: through the tunnel, the client pod's address the source ztunnel sent (x-forwarded-for);
    # in plaintext, the connection's own peer
    block = cidr(str(expr.value))
    return Q(remote_ip=block) if site.tunnel else Q(direct_remote_ip=block)


def rbac_rules(policies: Iterable[AuthorizationPolicy], action: Action, site: Site) -> rbac_config.RBAC:
    """One RBAC of ``action`` holding every rule of ``policies`` that can match at ``site``."""
    rules = rbac_config.RBAC(action=rbac_config.RBAC.ALLOW if action is Action.ALLOW else rbac_config.RBAC.DENY)
    for policy in policies:
        for i, rule in enumerate(policy.rules):
            permission, principal = rule_expressions(policy, rule, site)
            if permission is False:
                continue
            rules.policies[policy_name(policy, i)].CopyFrom(
                rbac_config.Policy(permissions=[_permission(permission, site)], principals=[_principal(principal, site)])
            )
    return rules


def _strict_rules(mtls: EffectiveMtls) -> rbac_config.RBAC:
    """DENY the plaintext ports PeerAuthentication makes STRICT."""
    P = rbac_config.Permission
    exceptions = P() if not mtls.ports else _permission(any_of(Leaf("port", p) for p in sorted(mtls.ports)), PLAINTEXT_SITE)
    if mtls.default is MtlsMode.STRICT:  # every port but the PERMISSIVE ones
        ports = P(not_rule=exceptions) if mtls.ports else P(any=True)
    else:  # only the STRICT ones
        ports = exceptions
    policy = rbac_config.Policy(permissions=[ports], principals=[rbac_config.Principal(any=True)])
    return rbac_config.RBAC(action=rbac_config.RBAC.DENY, policies={STRICT_POLICY: policy})


PLAINTEXT_SITE = Site("", tunnel=False)  # for what depends on no pod's address


def _stat_name(*parts: str) -> str:
    return ".".join(parts) + "."


# -- the filters ------------------------------------------------------------------------------


def connect_filters(pod: Workload, policies: WorkloadPolicies) -> list[hcm.HttpFilter]:
    """HTTP RBAC filters for the pod's CONNECT connection manager, before its router."""
    site = Site(pod.ip or "", tunnel=True)
    out = []
    for policy in policies.deny:
        rules = rbac_rules([policy], Action.DENY, site)
        if not rules.policies:  # none of its rules can match here: it never denies
            continue
        config = http_rbac.RBAC(rules=rules, rules_stat_prefix=_stat_name("deny", policy.namespace, policy.name),
                                track_per_rule_stats=True)
        out.append(hcm.HttpFilter(name=HTTP_RBAC, typed_config=pack(config)))
    if policies.allow:
        config = http_rbac.RBAC(rules=rbac_rules(policies.allow, Action.ALLOW, site), rules_stat_prefix="allow.",
                                track_per_rule_stats=True)
        out.append(hcm.HttpFilter(name=HTTP_RBAC, typed_config=pack(config)))
    return out


def plaintext_filters(pod: Workload, policies: WorkloadPolicies) -> list[listener_components_pb2.Filter]:
    """Network RBAC filters for the pod's plaintext chain, before its tcp_proxy: STRICT first."""
    site = Site(pod.ip or "", tunnel=False)
    out = []

    def add(rules: rbac_config.RBAC, *stat: str) -> None:
        config = network_rbac.RBAC(rules=rules, stat_prefix=_stat_name(PLAINTEXT_STATS, *stat))
        out.append(listener_components_pb2.Filter(name=NETWORK_RBAC, typed_config=pack(config)))

    if policies.mtls.refuses_any_plaintext:
        decider = policies.mtls.decided_by[-1]
        add(_strict_rules(policies.mtls), "strict", decider.namespace, decider.name)
    for policy in policies.deny:
        rules = rbac_rules([policy], Action.DENY, site)
        if rules.policies:  # else none of its rules can match here (they need an identity): it never denies
            add(rules, "deny", policy.namespace, policy.name)
    if policies.allow:
        add(rbac_rules(policies.allow, Action.ALLOW, site), "allow")
    return out


def connect_route_match(pod_ip: str) -> route_components_pb2.RouteMatch:
    """CONNECT to this pod only, written as virtual_inbound will dial it: ``<pod IP>:<port>``, no other
    form (a port with a leading zero would dial the same port but slip past a port rule)."""
    match = route_components_pb2.RouteMatch()
    match.CopyFrom(_connect_route_template())  # all alike but for the pod's address (10,000 at R): copied
    match.headers[0].string_match.safe_regex.regex = f"^{escape(pod_ip)}:[1-9][0-9]{{0,4}}$"
    return match


@functools.lru_cache(maxsize=1)
def _connect_route_template() -> route_components_pb2.RouteMatch:
    """:func:`connect_route_match`'s, its regex to be set (never modified: copied)."""
    destination = route_components_pb2.HeaderMatcher(name=ORIGINAL_DST_HEADER, string_match=_regex(""))
    return route_components_pb2.RouteMatch(
        connect_matcher=route_components_pb2.RouteMatch.ConnectMatcher(), headers=[destination]
    )
