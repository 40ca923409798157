"""Comparing intent with reality: our config dump against a live Envoy's.

As ``istioctl proxy-status <pod>`` does: keep only dynamic active resources, sort them by name,
drop ``version_info`` and ``last_updated`` (Envoy keeps an old version when content is
unchanged, so versions say nothing about content), render both the same way, diff. Secrets no
listener or cluster references are left out: Envoy never asks for them, so it cannot hold them.
"""

from __future__ import annotations

import copy
import difflib
import json
from typing import Any, Callable, Mapping

_ADMIN = "type.googleapis.com/envoy.admin.v3."


#: Envoy's EDS dump is rebuilt from its host sets, not echoed: it adds these defaults (and, per
#: endpoint, health HEALTHY, weight 1 and an empty health check config).
DEFAULT_OVERPROVISIONING_FACTOR = 140


def _normalize_assignment(cla: Mapping[str, Any]) -> dict[str, Any]:
    """Drop what Envoy adds to a ClusterLoadAssignment when dumping it (defaults and empty fields)."""
    out = copy.deepcopy(dict(cla))
    policy = out.get("policy")
    if isinstance(policy, dict):
        if policy.get("overprovisioning_factor") == DEFAULT_OVERPROVISIONING_FACTOR:
            del policy["overprovisioning_factor"]
        if not policy:
            del out["policy"]
    for locality in out.get("endpoints", []) or []:
        if isinstance(locality, dict):
            if locality.get("load_balancing_weight", 0) == 0:
                locality.pop("load_balancing_weight", None)
            if locality.get("locality") == {}:
                del locality["locality"]
            for lb in locality.get("lb_endpoints", []) or []:
                if isinstance(lb, dict):
                    _drop_endpoint_defaults(lb)
    if not out.get("endpoints"):
        out.pop("endpoints", None)
    return out


def _drop_endpoint_defaults(lb: dict[str, Any]) -> None:
    """An endpoint's fields at the value Envoy gives them when left out (and dumps): a healthy
    endpoint of weight 1 with no health check config is the same with or without them."""
    if lb.get("health_status") == "HEALTHY":
        del lb["health_status"]
    if lb.get("load_balancing_weight") == 1:
        del lb["load_balancing_weight"]
    endpoint = lb.get("endpoint")
    if isinstance(endpoint, dict) and endpoint.get("health_check_config") == {}:
        del endpoint["health_check_config"]


def _sds_names(value: Any) -> set[str]:
    """Names of the SDS secrets referenced anywhere below ``value`` (``*_sds_secret_config(s)`` fields)."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key.endswith("sds_secret_config") and isinstance(item, Mapping) and "name" in item:
                found.add(str(item["name"]))
            elif key.endswith("sds_secret_configs") and isinstance(item, list):
                found.update(str(ref["name"]) for ref in item if isinstance(ref, Mapping) and "name" in ref)
            else:
                found |= _sds_names(item)
    elif isinstance(value, list):
        for item in value:
            found |= _sds_names(item)
    return found


def _by(key: str) -> Callable[[Any], str]:
    def get(item: Any) -> str:
        return str(item.get(key, "")) if isinstance(item, Mapping) else ""

    return get


def _kind(entry: Mapping[str, Any]) -> str:
    return str(entry.get("@type", "")).removeprefix(_ADMIN)


def normalize(dump: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The comparable part of a ``/config_dump?include_eds`` document."""
    out: dict[str, list[Any]] = {"clusters": [], "endpoints": [], "secrets": [], "listeners": []}
    for entry in dump.get("configs", []) or []:
        kind = _kind(entry)
        if kind == "ClustersConfigDump":
            out["clusters"] += [c["cluster"] for c in entry.get("dynamic_active_clusters", []) if "cluster" in c]
        elif kind == "ListenersConfigDump":
            for lis in entry.get("dynamic_listeners", []):
                active = lis.get("active_state")
                if active and "listener" in active:
                    out["listeners"].append(active["listener"])
        elif kind == "EndpointsConfigDump":
            out["endpoints"] += [
                e["endpoint_config"] for e in entry.get("dynamic_endpoint_configs", []) if "endpoint_config" in e
            ]
        elif kind == "SecretsConfigDump":
            out["secrets"] += [
                s["secret"] for s in entry.get("dynamic_active_secrets", []) if "secret" in s
            ]
    # Envoy also dumps the inline load_assignment of non-EDS clusters as endpoint configs; that is
    # already compared as part of the cluster, so only EDS clusters' (and orphan) assignments count.
    inline = {c.get("name") for c in out["clusters"] if c.get("type") != "EDS"}
    out["endpoints"] = [
        _normalize_assignment(e) for e in out["endpoints"] if e.get("cluster_name") not in inline
    ]
    # Envoy only ever asks for secrets its listeners and clusters reference: one that nothing references
    # can be offered but never held, so it is not part of the comparison.
    referenced = _sds_names(out["listeners"]) | _sds_names(out["clusters"])
    out["secrets"] = [secret for secret in out["secrets"] if secret.get("name") in referenced]
    keys = {"clusters": "name", "listeners": "name", "secrets": "name", "endpoints": "cluster_name"}
    for section, key in keys.items():
        out[section].sort(key=_by(key))
    return out


def render(dump: Mapping[str, Any]) -> str:
    """One JSON rendering of the normalized dump, stable line by line."""
    return json.dumps(normalize(dump), indent=1, sort_keys=True) + "\n"


def unified_diff(intent: Mapping[str, Any], actual: Mapping[str, Any], *, intent_name: str = "zpilot",
                 actual_name: str = "envoy") -> str:
    """The unified diff from our intent to Envoy's state; empty when they agree."""
    return "".join(
        difflib.unified_diff(
            render(intent).splitlines(keepends=True),
            render(actual).splitlines(keepends=True),
            fromfile=intent_name,
            tofile=actual_name,
        )
    )


def summary(dump: Mapping[str, Any]) -> dict[str, int]:
    """How many resources of each kind a dump holds (for messages)."""
    return {k: len(v) for k, v in normalize(dump).items()}
