"""Label and field selectors with the real server's grammar and matching rules.

Label selectors: ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, comma-joined
(AND). ``!=`` and ``notin`` also match objects without the label, as in apimachinery. Field selectors: ``f=v``,
``f==v``, ``f!=v`` over the fields the resource supports (``metadata.name``, ``metadata.namespace`` and the
type's own, e.g. ``spec.nodeName`` for pods); any other field is a 400, as on a real server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import ApiError

MAX_SELECTOR = 4096
_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # exists, !exists, =, !=, in, notin
    values: frozenset[str] = frozenset()

    def matches(self, labels: Labels) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # != and notin


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _bad(selector: str, why: str) -> ApiError:
    return ApiError(400, f"unable to parse requirement: {why} (in selector {selector[:200]!r})")


def _check_key(selector: str, key: str) -> str:
    if not _KEY.match(key) or len(key) > 316:
        raise _bad(selector, f"invalid label key {key[:100]!r}")
    return key


def _check_value(selector: str, value: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise _bad(selector, f"invalid label value {value[:100]!r}")
    return value


_SET = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")
_EQ = re.compile(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(\S*)\s*$")


def parse_label_selector(selector: str | None) -> list[Requirement]:
    if not selector:
        return []
    if len(selector) > MAX_SELECTOR:
        raise ApiError(400, f"labelSelector longer than {MAX_SELECTOR} characters")
    reqs: list[Requirement] = []
    for part in _split_top_level(selector):
        if not part.strip():
            raise _bad(selector, "empty requirement")
        if m := _SET.match(part):
            values = [v.strip() for v in m.group(3).split(",")] if m.group(3).strip() else [""]
            reqs.append(Requirement(_check_key(selector, m.group(1)), m.group(2),
                                    frozenset(_check_value(selector, v) for v in values)))
        elif m := _EQ.match(part):
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append(Requirement(_check_key(selector, m.group(1)), op,
                                    frozenset({_check_value(selector, m.group(3))})))
        elif part.strip().startswith("!"):
            reqs.append(Requirement(_check_key(selector, part.strip()[1:].strip()), "!exists"))
        else:
            reqs.append(Requirement(_check_key(selector, part.strip()), "exists"))
    return reqs


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool


def parse_field_selector(selector: str | None, supported: tuple[str, ...], kind: str) -> list[FieldRequirement]:
    if not selector:
        return []
    if len(selector) > MAX_SELECTOR:
        raise ApiError(400, f"fieldSelector longer than {MAX_SELECTOR} characters")
    reqs: list[FieldRequirement] = []
    for part in selector.split(","):
        m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ApiError(400, f"invalid field selector requirement {part[:100]!r}")
        field_name = m.group(1)
        if field_name not in ("metadata.name", "metadata.namespace") + supported:
            raise ApiError(400, f'field label not supported: {field_name[:100]}', details={"kind": kind})
        reqs.append(FieldRequirement(field_name, m.group(3), m.group(2) != "!="))
    return reqs


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string a field selector compares: booleans print as ``true``/``false``, a missing field as ``""``."""
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if path == "spec.hostNetwork" or path == "spec.unschedulable":
        return "true" if node else "false"
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def make_filter(labels: list[Requirement], fields: list[FieldRequirement]) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over stored objects that is true when every requirement holds."""

    def matches(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        obj_labels = meta.get("labels") or {}
        if not all(r.matches(obj_labels) for r in labels):
            return False
        return all((field_value(obj, f.field) == f.value) == f.equal for f in fields)

    return matches
