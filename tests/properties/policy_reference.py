"""A small reference evaluator of Istio's L4 security policy, written from Istio's documentation
(AuthorizationPolicy and PeerAuthentication reference pages, the ambient "Use Layer 4 security policy"
page) and independent of zpilot's model and translators: it reads the policies as the YAML a user
writes, and decides one connection to one workload.

What it encodes, in the documentation's words where it has them:

- scope: "If not set, the authorization policy will be applied to all workloads in the same namespace";
  in the root namespace a policy without a selector applies to the whole mesh, one with a selector to
  the matching workloads of every namespace; ``targetRef(s)`` policies are for waypoints (not here);
- order: "If there are any DENY policies that match the request, deny the request. If there are no ALLOW
  policies for the workload, allow the request. If any of the ALLOW policies match the request, allow
  the request. Deny the request." (CUSTOM and AUDIT are not enforced by ztunnel);
- "A match occurs when at least one source, one operation and all conditions matches"; an unset field
  matches; a rule without fields matches everything; a policy without rules matches nothing;
- values: exact, prefix ``abc*``, suffix ``*abc``, presence ``*``; principals are ``<td>/ns/<ns>/sa/<sa>``;
- a connection without mTLS has no principal and no namespace: positive matches on them fail, negative
  ones succeed;
- ztunnel (L4): in an ALLOW rule, HTTP attributes make the rule match nothing; in a DENY rule they are
  ignored; ``when`` keys other than source.ip, source.namespace, source.principal, destination.ip and
  destination.port are HTTP attributes; so are remoteIpBlocks and requestPrincipals;
- PeerAuthentication: workload over namespace over mesh (root namespace), UNSET inherits, portLevelMtls
  overrides per port; STRICT refuses plaintext; PERMISSIVE and (in ambient) DISABLE admit it; mTLS is
  always admitted. Without any: PERMISSIVE.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Mapping

TRUST_DOMAIN = "cluster.local"
L4_KEYS = {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
HTTP_SOURCE_FIELDS = {"requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks"}
HTTP_OPERATION_FIELDS = {"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"}


@dataclass(frozen=True)
class Workload:
    namespace: str
    labels: Mapping[str, str]
    ip: str


@dataclass(frozen=True)
class Connection:
    identity: tuple[str, str] | None  # (namespace, service account) of an mTLS peer; None: plaintext
    source_ip: str
    port: int

    @property
    def principal(self) -> str | None:
        return None if self.identity is None else f"{TRUST_DOMAIN}/ns/{self.identity[0]}/sa/{self.identity[1]}"


def value_matches(pattern: str, value: str | None) -> bool:
    if value is None:
        return False
    if pattern == "*":
        return value != ""
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def _in_block(block: str, ip: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(block, strict=False)


def _service_account_matches(value: str, policy_ns: str, conn: Connection) -> bool:
    ns, _, sa = value.rpartition("/")
    return conn.identity is not None and conn.identity == (ns or policy_ns, sa)


def _list(positive: list | None, negative: list | None, test) -> bool:
    ok = True
    if positive:
        ok &= any(test(v) for v in positive)
    if negative:
        ok &= not any(test(v) for v in negative)
    return ok


def _source(src: Mapping[str, Any], policy_ns: str, conn: Connection) -> bool:
    namespace = conn.identity[0] if conn.identity else None
    return (
        _list(src.get("principals"), src.get("notPrincipals"), lambda v: value_matches(v, conn.principal))
        and _list(src.get("namespaces"), src.get("notNamespaces"), lambda v: value_matches(v, namespace))
        and _list(src.get("serviceAccounts"), src.get("notServiceAccounts"),
                  lambda v: _service_account_matches(v, policy_ns, conn))
        and _list(src.get("ipBlocks"), src.get("notIpBlocks"), lambda v: _in_block(v, conn.source_ip))
    )


def _operation(op: Mapping[str, Any], conn: Connection) -> bool:
    return _list(op.get("ports"), op.get("notPorts"), lambda v: int(v) == conn.port)


def _condition(cond: Mapping[str, Any], workload: Workload, conn: Connection) -> bool:
    key = cond["key"]
    namespace = conn.identity[0] if conn.identity else None
    tests = {
        "source.ip": lambda v: _in_block(v, conn.source_ip),
        "source.namespace": lambda v: value_matches(v, namespace),
        "source.principal": lambda v: value_matches(v, conn.principal),
        "destination.ip": lambda v: _in_block(v, workload.ip),
        "destination.port": lambda v: int(v) == conn.port,
    }
    return _list(cond.get("values"), cond.get("notValues"), tests[key])


def _uses_http(rule: Mapping[str, Any]) -> bool:
    return (
        any(HTTP_SOURCE_FIELDS & set(f["source"]) for f in rule.get("from") or [])
        or any(HTTP_OPERATION_FIELDS & set(t["operation"]) for t in rule.get("to") or [])
        or any(c["key"] not in L4_KEYS for c in rule.get("when") or [])
    )


def rule_matches(rule: Mapping[str, Any], action: str, policy_ns: str, workload: Workload, conn: Connection) -> bool:
    if action == "ALLOW" and _uses_http(rule):
        return False  # ztunnel: an ALLOW rule with HTTP attributes matches nothing
    # (DENY: the HTTP attributes are ignored; what is left of an entry is checked)
    sources = rule.get("from") or []
    operations = rule.get("to") or []
    if sources and not any(_source(f["source"], policy_ns, conn) for f in sources):
        return False
    if operations and not any(_operation(t["operation"], conn) for t in operations):
        return False
    return all(_condition(c, workload, conn) for c in rule.get("when") or [] if c["key"] in L4_KEYS)


def applies(policy: Mapping[str, Any], workload: Workload, root: str) -> bool:
    spec = policy.get("spec") or {}
    if spec.get("targetRef") or spec.get("targetRefs"):
        return False
    ns = policy["metadata"]["namespace"]
    if ns not in (workload.namespace, root):
        return False
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    return all(workload.labels.get(k) == v for k, v in labels.items())


def authorized(policies: list[Mapping[str, Any]], workload: Workload, conn: Connection, root: str) -> bool:
    deny, allow = [], []
    for p in policies:
        if not applies(p, workload, root):
            continue
        action = (p.get("spec") or {}).get("action") or "ALLOW"
        if action == "DENY":
            deny.append(p)
        elif action == "ALLOW":
            allow.append(p)

    def matches(p: Mapping[str, Any], action: str) -> bool:
        rules = (p.get("spec") or {}).get("rules") or []
        return any(rule_matches(r, action, p["metadata"]["namespace"], workload, conn) for r in rules)

    if any(matches(p, "DENY") for p in deny):
        return False
    if not allow:
        return True
    return any(matches(p, "ALLOW") for p in allow)


def _oldest(candidates: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return min(candidates, key=lambda p: (p["metadata"].get("creationTimestamp") or "~", p["metadata"]["name"]),
               default=None)


def plaintext_admitted(peer_auths: list[Mapping[str, Any]], workload: Workload, port: int, root: str) -> bool:
    def mode_of(p: Mapping[str, Any] | None) -> str:
        return (((p.get("spec") or {}).get("mtls") or {}).get("mode") or "UNSET") if p else "UNSET"

    def selector(p: Mapping[str, Any]) -> Mapping[str, str]:
        return ((p.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}

    mesh = _oldest([p for p in peer_auths if p["metadata"]["namespace"] == root and not selector(p)])
    namespace = _oldest([p for p in peer_auths if p["metadata"]["namespace"] == workload.namespace != root
                         and not selector(p)])
    own = _oldest([p for p in peer_auths if p["metadata"]["namespace"] == workload.namespace != root and selector(p)
                   and all(workload.labels.get(k) == v for k, v in selector(p).items())])
    mode = "PERMISSIVE"
    for level in (mesh, namespace, own):
        if mode_of(level) != "UNSET":
            mode = mode_of(level)
    if own is not None:
        port_mode = ((own.get("spec") or {}).get("portLevelMtls") or {}).get(str(port), {}).get("mode") or "UNSET"
        if port_mode != "UNSET":
            mode = port_mode
    return mode != "STRICT"


def admitted(policies: list[Mapping[str, Any]], peer_auths: list[Mapping[str, Any]], workload: Workload,
             conn: Connection, root: str = "istio-system") -> bool:
    """The whole decision for one connection: mTLS (identity given) or plaintext."""
    if conn.identity is None and not plaintext_admitted(peer_auths, workload, conn.port, root):
        return False
    return authorized(policies, workload, conn, root)
