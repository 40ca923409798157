"""``security.istio.io`` objects (``v1`` and ``v1beta1``) -> model policy objects.

Every source hands plain dicts here (the manifest directory now, the API watch later), like the
core kinds in :mod:`zpilot.kube.convert`. What Istio's validation would reject is rejected with the
reason (:class:`InvalidObject`), so a policy the API server would never have stored never takes
effect. What is valid but cannot be enforced by an L4 ztunnel (L7 fields, AUDIT, CUSTOM, targetRefs)
is kept, by name, for the policy index to report and apply fail-closed.

Limits keep one object from growing every node's config without bound.
"""

from __future__ import annotations

import ipaddress
from types import MappingProxyType
from typing import Any, Mapping

from ..model.policy import (
    SECURITY_API_VERSIONS,
    Action,
    AuthorizationPolicy,
    Condition,
    MtlsMode,
    Operation,
    PeerAuthentication,
    Rule,
    Source,
)
from .convert import CONVERTERS, InvalidObject, _labels, _mapping, _name, _namespace

MAX_RULES = 256
MAX_ENTRIES = 256  # from/to/when entries of one rule
MAX_VALUES = 1024  # values of one list (principals, ports...)
MAX_VALUE_LENGTH = 1024

#: Source fields an L4 proxy can check (API name -> model field) and the ones it cannot.
_SOURCE_L4 = {
    "principals": "principals",
    "notPrincipals": "not_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "serviceAccounts": "service_accounts",
    "notServiceAccounts": "not_service_accounts",
    "ipBlocks": "ip_blocks",
    "notIpBlocks": "not_ip_blocks",
}
# remoteIpBlocks is the client address from X-Forwarded-For or PROXY protocol, which an L4 ztunnel
# never reads: Istio's ambient control plane lists it with the HTTP attributes, and so do we.
_SOURCE_L7 = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
_OPERATION_L7 = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")


def _api_version(obj: Mapping[str, Any]) -> None:
    version = obj.get("apiVersion")
    if version not in SECURITY_API_VERSIONS:
        raise InvalidObject(f"apiVersion {version!r} is not one of {', '.join(SECURITY_API_VERSIONS)}")


def _list(value: Any, what: str, limit: int = MAX_VALUES) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidObject(f"{what} must be a list, not {type(value).__name__}")
    if len(value) > limit:
        raise InvalidObject(f"{what} has {len(value)} entries (at most {limit})")
    return value


def _strings(value: Any, what: str) -> tuple[str, ...]:
    out = []
    for v in _list(value, what):
        if not isinstance(v, str) or not v:
            raise InvalidObject(f"{what} must hold non-empty strings ({v!r})")
        if len(v) > MAX_VALUE_LENGTH:
            raise InvalidObject(f"{what} holds a value longer than {MAX_VALUE_LENGTH} characters")
        out.append(v)
    return tuple(out)


def _port(value: Any, what: str) -> int:
    """Istio writes ports as strings ("9080"); a YAML number is taken too."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidObject(f"{what} {value!r} is not a port number (1-65535)")
    return int(text)


def _ports(value: Any, what: str) -> tuple[int, ...]:
    return tuple(_port(v, what) for v in _list(value, what))


def _ip_blocks(value: Any, what: str) -> tuple[str, ...]:
    blocks = _strings(value, what)
    for block in blocks:
        try:
            ipaddress.ip_network(block, strict=False)
        except ValueError:
            raise InvalidObject(f"{what} {block!r} is neither an IP address nor a CIDR") from None
    return blocks


def _selector(spec: Mapping[str, Any]) -> Mapping[str, str] | None:
    """``matchLabels``; None when there is none (or it is empty): then the policy is namespace- or mesh-wide."""
    selector = _mapping(spec.get("selector"), "spec.selector")
    unknown = sorted(set(selector) - {"matchLabels"})
    if unknown:
        raise InvalidObject(f"spec.selector has unknown fields {unknown} (Istio selects by matchLabels only)")
    labels = _labels(selector.get("matchLabels"), "spec.selector.matchLabels")
    return labels or None


def _source(raw: Any, where: str) -> Source:
    entry = _mapping(raw, where)
    source = _mapping(entry.get("source"), f"{where}.source")
    if not source:
        raise InvalidObject(f"{where}.source must not be empty")
    fields: dict[str, tuple[str, ...]] = {}
    for api, attr in _SOURCE_L4.items():
        read = _ip_blocks if api in ("ipBlocks", "notIpBlocks") else _strings
        fields[attr] = read(source.get(api), f"{where}.source.{api}")
    for api in _SOURCE_L7:
        _strings(source.get(api), f"{where}.source.{api}")
    unknown = sorted(set(source) - set(_SOURCE_L4) - set(_SOURCE_L7))
    if unknown:
        raise InvalidObject(f"{where}.source has unknown fields {unknown}")
    if (fields["service_accounts"] or fields["not_service_accounts"]) and (
        fields["principals"] or fields["not_principals"] or fields["namespaces"] or fields["not_namespaces"]
    ):
        raise InvalidObject(f"{where}.source: serviceAccounts cannot be set with principals or namespaces")
    return Source(**fields, l7=tuple(api for api in _SOURCE_L7 if source.get(api)))


def _operation(raw: Any, where: str) -> Operation:
    entry = _mapping(raw, where)
    operation = _mapping(entry.get("operation"), f"{where}.operation")
    if not operation:
        raise InvalidObject(f"{where}.operation must not be empty")
    for api in _OPERATION_L7:
        _strings(operation.get(api), f"{where}.operation.{api}")
    unknown = sorted(set(operation) - {"ports", "notPorts", *_OPERATION_L7})
    if unknown:
        raise InvalidObject(f"{where}.operation has unknown fields {unknown}")
    return Operation(
        ports=_ports(operation.get("ports"), f"{where}.operation.ports"),
        not_ports=_ports(operation.get("notPorts"), f"{where}.operation.notPorts"),
        l7=tuple(api for api in _OPERATION_L7 if operation.get(api)),
    )


def _condition(raw: Any, where: str) -> Condition:
    entry = _mapping(raw, where)
    key = entry.get("key")
    if not isinstance(key, str) or not key or len(key) > MAX_VALUE_LENGTH:
        raise InvalidObject(f"{where}.key is missing")
    values = _strings(entry.get("values"), f"{where}.values")
    not_values = _strings(entry.get("notValues"), f"{where}.notValues")
    if not values and not not_values:
        raise InvalidObject(f"{where} ({key}) has neither values nor notValues")
    if key in ("source.ip", "destination.ip"):
        _ip_blocks(list(values + not_values), f"{where} ({key})")
    elif key == "destination.port":
        for v in values + not_values:
            _port(v, f"{where} ({key})")
    return Condition(key, values, not_values)


def _rule(raw: Any, where: str) -> Rule:
    rule = _mapping(raw, where)
    unknown = sorted(set(rule) - {"from", "to", "when"})
    if unknown:
        raise InvalidObject(f"{where} has unknown fields {unknown}")
    return Rule(
        sources=tuple(_source(s, f"{where}.from[{i}]") for i, s in enumerate(_list(rule.get("from"), f"{where}.from", MAX_ENTRIES))),
        operations=tuple(_operation(o, f"{where}.to[{i}]") for i, o in enumerate(_list(rule.get("to"), f"{where}.to", MAX_ENTRIES))),
        conditions=tuple(_condition(c, f"{where}.when[{i}]") for i, c in enumerate(_list(rule.get("when"), f"{where}.when", MAX_ENTRIES))),
    )


def _target_refs(spec: Mapping[str, Any]) -> tuple[str, ...]:
    refs = []
    single = spec.get("targetRef")
    for i, ref in enumerate(([single] if single else []) + _list(spec.get("targetRefs"), "spec.targetRefs", MAX_ENTRIES)):
        ref = _mapping(ref, f"spec.targetRefs[{i}]")
        refs.append(f"{ref.get('kind', '?')}/{ref.get('name', '?')}")
    return tuple(refs)


def authorization_policy_from(obj: Mapping[str, Any]) -> AuthorizationPolicy:
    _api_version(obj)
    meta = _mapping(obj.get("metadata"), "metadata")
    spec = _mapping(obj.get("spec"), "spec")
    action_name = spec.get("action") or "ALLOW"
    try:
        action = Action(action_name)
    except ValueError:
        raise InvalidObject(f"spec.action {action_name!r} is not one of ALLOW, DENY, AUDIT, CUSTOM") from None
    if (action is Action.CUSTOM) != bool(spec.get("provider")):
        raise InvalidObject("spec.provider goes with action CUSTOM, and only with it")
    target_refs = _target_refs(spec)
    if target_refs and spec.get("selector"):
        raise InvalidObject("spec.selector and spec.targetRef(s) cannot both be set")
    rules = _list(spec.get("rules"), "spec.rules", MAX_RULES)
    return AuthorizationPolicy(
        name=_name(meta, max_len=253, label=False),
        namespace=_namespace(meta),
        action=action,
        selector=_selector(spec),
        rules=tuple(_rule(r, f"spec.rules[{i}]") for i, r in enumerate(rules)),
        target_refs=target_refs,
        created=str(meta.get("creationTimestamp") or ""),
    )


def _mtls_mode(raw: Any, what: str) -> MtlsMode:
    mode = _mapping(raw, what).get("mode") or "UNSET"
    try:
        return MtlsMode(mode)
    except ValueError:
        raise InvalidObject(f"{what}.mode {mode!r} is not one of UNSET, STRICT, PERMISSIVE, DISABLE") from None


def peer_authentication_from(obj: Mapping[str, Any]) -> PeerAuthentication:
    _api_version(obj)
    meta = _mapping(obj.get("metadata"), "metadata")
    spec = _mapping(obj.get("spec"), "spec")
    selector = _selector(spec)
    port_levels = _mapping(spec.get("portLevelMtls"), "spec.portLevelMtls")
    if port_levels and selector is None:
        raise InvalidObject("spec.portLevelMtls needs a spec.selector (Istio: port-level mTLS is per workload)")
    if len(port_levels) > MAX_VALUES:
        raise InvalidObject(f"spec.portLevelMtls has {len(port_levels)} ports (at most {MAX_VALUES})")
    ports = {_port(p, "spec.portLevelMtls port"): _mtls_mode(m, f"spec.portLevelMtls[{p}]") for p, m in port_levels.items()}
    return PeerAuthentication(
        name=_name(meta, max_len=253, label=False),
        namespace=_namespace(meta),
        selector=selector,
        mode=_mtls_mode(spec.get("mtls"), "spec.mtls"),
        port_modes=MappingProxyType(dict(sorted(ports.items()))),
        created=str(meta.get("creationTimestamp") or ""),
    )


#: kind -> converter for the security.istio.io kinds.
SECURITY_CONVERTERS = {
    "AuthorizationPolicy": authorization_policy_from,
    "PeerAuthentication": peer_authentication_from,
}
#: Every kind zpilot reads: the core ones of :mod:`zpilot.kube.convert` and these (what sources look up).
KIND_CONVERTERS = {**CONVERTERS, **SECURITY_CONVERTERS}
