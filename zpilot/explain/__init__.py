"""``zpilot explain``: a connection's hop-by-hop path through the mesh, computed from the
generated config (the translators' output per node) and the CNI plan of each node.

:func:`load_mesh` builds the inputs from a manifest directory; :func:`explain` computes the
paths; :func:`render` prints them as an operator reads them.
"""

from __future__ import annotations

from pathlib import Path

from .. import contract
from ..cni.desired import TunnelKind
from ..cni.plan import UNKNOWN_ZTUNNEL_VETH, NodeFacts, PlanError, build_plan
from ..kube.manifests import load_manifests
from ..model.index import MeshIndex
from ..model.policy import DEFAULT_ROOT_NAMESPACE
from ..translators import TranslateOptions, translate_node
from .path import FACT_KEYS, ExplainError, Explanation, Hop, Mesh, explain

__all__ = ["FACT_KEYS", "ExplainError", "Explanation", "Hop", "Mesh", "explain", "load_mesh", "mesh_from_index", "render"]


def mesh_from_index(
    index: MeshIndex,
    *,
    trust_domain: str = contract.DEFAULT_TRUST_DOMAIN,
    host_ips: dict[str, str] | None = None,
    layout: str = contract.DEFAULT_LAYOUT,
) -> Mesh:
    """Translate every node (with the outbound ``layout``) and plan its rules (with placeholders
    for facts only a node knows)."""
    resources, plans = {}, {}
    options = TranslateOptions(trust_domain=trust_domain, layout=layout)
    for node in sorted(index.nodes):
        resources[node] = translate_node(index, node, options)
        facts = NodeFacts(ztunnel_veth=UNKNOWN_ZTUNNEL_VETH, tunnel_kind=TunnelKind.VXLAN,
                          host_ip=(host_ips or {}).get(node))
        try:
            plans[node] = build_plan(index, node, facts)
        except PlanError:
            continue
    return Mesh(index, resources, plans, layout)


def load_mesh(manifests: str | Path, *, trust_domain: str = contract.DEFAULT_TRUST_DOMAIN,
              layout: str = contract.DEFAULT_LAYOUT, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> Mesh:
    loaded = load_manifests(manifests)
    index = MeshIndex.build(loaded.cluster, loaded.problems, root_namespace=root_namespace)
    return mesh_from_index(index, trust_domain=trust_domain, layout=layout)


def render(explanations: list[Explanation]) -> str:
    out: list[str] = []
    for n, e in enumerate(explanations, 1):
        title = f"{e.source} -> {e.target}"
        if len(explanations) > 1:
            title += f"  (path {n} of {len(explanations)}: endpoint {e.facts.get('endpoint', '?')})"
        out.append(title)
        for i, hop in enumerate(e.hops, 1):
            out.append(f"  {i:2}. [{hop.where}] {hop.what}")
            out += [f"        {d}" for d in hop.details]
        out.append(f"  => {e.outcome}")
        out.append("")
    return "\n".join(out)
