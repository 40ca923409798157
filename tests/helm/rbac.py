"""RBAC rules as sets of single grants, so the chart's rules compare with the code's lists."""

from __future__ import annotations

from typing import Any, Iterable

#: (API group, resource, verb, resource names: () for any)
Grant = tuple[str, str, str, tuple[str, ...]]


def grants(rules: Iterable[dict[str, Any]]) -> set[Grant]:
    """Every (group, resource, verb, names) a list of PolicyRules allows, one by one."""
    out: set[Grant] = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule  # no nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    out.add((group, resource, verb, tuple(sorted(rule.get("resourceNames", ())))))
    return out


def as_access(granted: set[Grant]) -> set[tuple[str, str, str]]:
    """(verb, group, resource), the shape of the code's lists, names dropped."""
    return {(verb, group, resource) for group, resource, verb, _ in granted}


def token_allowance(granted: set[Grant]) -> set[tuple[str, str]]:
    """The in-process API server's ``add_token(allow=...)`` form: (verb, ``plural`` or ``plural.group``)."""
    return {(verb, f"{resource}.{group}" if group else resource) for group, resource, verb, _ in granted}
