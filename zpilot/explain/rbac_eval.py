"""Envoy's RBAC, evaluated on the config zpilot generates: which filter and which policy decide a
plaintext connection or a CONNECT stream (HBONE), the way Envoy would.

It reads exactly the subset of the RBAC proto the translators emit, and refuses anything else
(:class:`Unsupported`) instead of guessing, so ``zpilot explain`` never shows a verdict Envoy would
not reach, and the property tests can compare the generated config with Istio's semantics.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from envoy.config.listener.v3.listener_components_pb2 import FilterChain
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.type.matcher.v3 import string_pb2

from ..translators.inbound_guard import CONNECT_GUARD_FILTER

#: Verdict.action of a stream the inbound guard refused (before any policy judged it).
GUARD = "GUARD"

class Unsupported(ValueError):
    """The config uses a part of RBAC this evaluator does not read."""


@dataclass(frozen=True)
class Peer:
    """What RBAC sees of a connection or stream.

    ``remote_ip`` is the downstream remote address (HBONE: the one the connection manager took
    from ``x-forwarded-for``), ``direct_ip`` the TCP peer; ``principal`` the peer certificate's URI
    SAN (None without TLS); ``headers`` the request's (a CONNECT stream only, lower-case names).
    """

    remote_ip: str
    direct_ip: str
    principal: str | None
    local_ip: str
    local_port: int
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    #: The filter that decided (its stat prefix names the policy) and the Envoy policy that matched:
    #: for a denial, the DENY policy, or "" when no ALLOW policy matched; for an admission, the ALLOW
    #: policy that matched, or "" when no filter objected.
    stat_prefix: str = ""
    policy: str = ""
    action: str = ""  # "ALLOW" / "DENY" of the deciding filter, "GUARD" for the inbound guard, "" when none decided

    def describe(self) -> str:
        if self.action == GUARD:
            return f"refused by the inbound guard ({self.stat_prefix}denied): not this pod, or a port of the ztunnel's own"
        if not self.action:
            return "allowed: no policy applies"
        if self.allowed:
            return f"allowed by {self.policy} ({self.stat_prefix}allowed)" if self.policy else \
                f"allowed ({self.stat_prefix}allowed)"
        if self.policy:
            return f"denied by {self.policy} ({self.stat_prefix}denied)"
        return f"denied: no ALLOW policy matches ({self.stat_prefix}denied)"


def _string(m: string_pb2.StringMatcher, value: str) -> bool:
    which = m.WhichOneof("match_pattern")
    if m.ignore_case:
        raise Unsupported("ignore_case")
    if which == "exact":
        return value == m.exact
    if which == "prefix":
        return value.startswith(m.prefix)
    if which == "suffix":
        return value.endswith(m.suffix)
    if which == "contains":
        return m.contains in value
    if which == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, value) is not None
    raise Unsupported(f"string matcher {which}")


def _in(cidr, ip: str) -> bool:
    net = ipaddress.ip_network(f"{cidr.address_prefix}/{cidr.prefix_len.value}", strict=False)
    return ipaddress.ip_address(ip) in net


def permission(p: rbac_config.Permission, peer: Peer) -> bool:
    which = p.WhichOneof("rule")
    if which == "any":
        return p.any
    if which == "and_rules":
        return all(permission(r, peer) for r in p.and_rules.rules)
    if which == "or_rules":
        return any(permission(r, peer) for r in p.or_rules.rules)
    if which == "not_rule":
        return not permission(p.not_rule, peer)
    if which == "destination_port":
        return peer.local_port == p.destination_port
    if which == "destination_ip":
        return _in(p.destination_ip, peer.local_ip)
    if which == "header":
        h = p.header
        if h.invert_match or h.WhichOneof("header_match_specifier") != "string_match":
            raise Unsupported("header matcher other than string_match")
        value = peer.headers.get(h.name.lower())
        return value is not None and _string(h.string_match, value)
    raise Unsupported(f"permission {which}")


def principal(q: rbac_config.Principal, peer: Peer) -> bool:
    which = q.WhichOneof("identifier")
    if which == "any":
        return q.any
    if which == "and_ids":
        return all(principal(i, peer) for i in q.and_ids.ids)
    if which == "or_ids":
        return any(principal(i, peer) for i in q.or_ids.ids)
    if which == "not_id":
        return not principal(q.not_id, peer)
    if which == "authenticated":
        if peer.principal is None:  # no TLS: Envoy's authenticated never matches
            return False
        if not q.authenticated.HasField("principal_name"):
            return True
        return _string(q.authenticated.principal_name, peer.principal)
    if which == "direct_remote_ip":
        return _in(q.direct_remote_ip, peer.direct_ip)
    if which == "remote_ip":
        return _in(q.remote_ip, peer.remote_ip)
    raise Unsupported(f"principal {which}")


def matching_policy(rules: rbac_config.RBAC, peer: Peer) -> str | None:
    """The first (by name, as Envoy's map is unordered) policy of ``rules`` that matches."""
    for name in sorted(rules.policies):
        policy = rules.policies[name]
        if policy.HasField("condition") or policy.HasField("checked_condition"):
            raise Unsupported("policy conditions (CEL)")
        if any(permission(p, peer) for p in policy.permissions) and any(principal(q, peer) for q in policy.principals):
            return name
    return None


def _decide(configs: Iterable[tuple[str, rbac_config.RBAC]], peer: Peer) -> Verdict:
    """Filters in order: the first that refuses decides; otherwise the last that admitted by a policy."""
    admitted = Verdict(True)
    for stat_prefix, rules in configs:
        matched = matching_policy(rules, peer)
        if rules.action == rbac_config.RBAC.ALLOW:
            if matched is None:
                return Verdict(False, stat_prefix, "", "ALLOW")
            admitted = Verdict(True, stat_prefix, matched, "ALLOW")
        elif rules.action == rbac_config.RBAC.DENY:
            if matched is not None:
                return Verdict(False, stat_prefix, matched, "DENY")
            if admitted.action == "":
                admitted = Verdict(True, stat_prefix, "", "DENY")
        else:
            raise Unsupported(f"action {rbac_config.RBAC.Action.Name(rules.action)}")
    return admitted


def _network_rbac(chain: FilterChain) -> list[tuple[str, rbac_config.RBAC]]:
    out = []
    for f in chain.filters:
        if f.typed_config.type_url.endswith(network_rbac.RBAC.DESCRIPTOR.full_name):
            config = network_rbac.RBAC()
            f.typed_config.Unpack(config)
            if config.HasField("matcher") or config.HasField("shadow_matcher"):
                raise Unsupported("RBAC matcher trees")
            out.append((config.stat_prefix + "rbac.", config.rules))
    return out


def connection_manager(chain: FilterChain) -> hcm_pb2.HttpConnectionManager | None:
    for f in chain.filters:
        if f.typed_config.type_url.endswith(hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name):
            manager = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(manager)
            return manager
    return None


def _http_rbac(manager: hcm_pb2.HttpConnectionManager, *, guard: bool) -> list[tuple[str, rbac_config.RBAC]]:
    """The manager's HTTP RBAC filters: the inbound guard's (``guard``), or the policies'."""
    out = []
    for f in manager.http_filters:
        if (f.name == CONNECT_GUARD_FILTER) != guard:
            continue
        if f.typed_config.type_url.endswith(http_rbac.RBAC.DESCRIPTOR.full_name):
            config = http_rbac.RBAC()
            f.typed_config.Unpack(config)
            if config.HasField("matcher") or config.HasField("shadow_matcher"):
                raise Unsupported("RBAC matcher trees")
            out.append((f"http.{manager.stat_prefix}.rbac.{config.rules_stat_prefix}", config.rules))
    return out


def _route_accepts(manager: hcm_pb2.HttpConnectionManager, peer: Peer) -> bool:
    """Whether a CONNECT route takes the stream (its header matchers; else the router answers 404)."""
    for vhost in manager.route_config.virtual_hosts:
        for route in vhost.routes:
            if not route.match.HasField("connect_matcher"):
                continue
            ok = True
            for h in route.match.headers:
                value = peer.headers.get(h.name.lower())
                ok &= value is not None and h.WhichOneof("header_match_specifier") == "string_match" \
                    and _string(h.string_match, value)
            if ok:
                return True
    return False


def connection_verdict(chain: FilterChain, peer: Peer) -> Verdict:
    """A plaintext connection: the chain's network RBAC filters."""
    return _decide(_network_rbac(chain), peer)


def stream_verdict(chain: FilterChain, peer: Peer) -> Verdict:
    """A CONNECT stream (HBONE): the TLS connection's network RBAC, then the inbound guard, the
    stream's HTTP RBAC (the pod's policies), and the route (a stream for another destination is
    refused with 404)."""
    verdict = _decide(_network_rbac(chain), peer)
    if not verdict.allowed:
        return verdict
    manager = connection_manager(chain)
    if manager is None:
        return verdict
    guard = _decide(_http_rbac(manager, guard=True), peer)
    if not guard.allowed:
        return Verdict(False, guard.stat_prefix, "", GUARD)
    stream = _decide(_http_rbac(manager, guard=False), peer)
    if stream.allowed and not _route_accepts(manager, peer):
        return Verdict(False, "", "no CONNECT route for this destination (404)", "ROUTE")
    return stream
