"""The seam for the outbound half of a ztunnel's config.

The outbound side is where designs differ: the article's layout (``outbound_article.py``) multiplies
local pods by destinations by ports; the linear one (``outbound_linear.py``, the default:
``contract.DEFAULT_LAYOUT``) grows with their sum. Each layout is a
function adding its listeners, clusters, endpoints and secret references to a node's
resources; the inbound side and the fixed clusters do not depend on the choice.

A layout may keep its ClusterLoadAssignments apart (:class:`LateEndpoints`): a function that adds
only them, and the *shape* of the mesh, everything the rest of the layout reads of it. Endpoints
come and go far more often than what is captured and how (a pod added behind a service, made
ready, deleted), and then only the endpoints change: the producer composes the node's new
endpoints without translating the node again (``IncrementalTranslator.endpoints_only``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable

from .context import NodeView
from .resources import NodeResources

if TYPE_CHECKING:
    from .inputs import MeshInput, NodeInput

OutboundLayout = Callable[[NodeView, NodeResources], None]


@dataclass(frozen=True)
class LateEndpoints:
    """How a layout's endpoints are made apart from the rest of its config.

    ``add`` adds the node's ClusterLoadAssignments (and nothing else), each through
    ``NodeView.add_resources``; ``shape`` is what the layout's other resources read of the mesh:
    two meshes of equal shape give a node the same listeners and clusters; ``key`` is what the
    endpoints read of the node's own input (besides the mesh and the options): nodes of equal
    keys get the same endpoints, made once. A test holds the layout to both
    (tests/properties/test_endpoints_only.py)."""

    add: OutboundLayout
    shape: Callable[["MeshInput"], Hashable]
    key: Callable[["NodeInput"], Hashable]


_LAYOUTS: dict[str, OutboundLayout] = {}
_LATE: dict[str, LateEndpoints] = {}


def register(
    name: str, *, endpoints: LateEndpoints | None = None
) -> Callable[[OutboundLayout], OutboundLayout]:
    def add(layout: OutboundLayout) -> OutboundLayout:
        _LAYOUTS[name] = layout
        if endpoints is not None:
            _LATE[name] = endpoints
        return layout

    return add


def get(name: str) -> OutboundLayout:
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown outbound layout {name!r} (known: {', '.join(sorted(_LAYOUTS))})") from None


def late_endpoints(name: str) -> LateEndpoints | None:
    """The layout's endpoints kept apart, or None (they are made with the rest)."""
    get(name)
    return _LATE.get(name)


def add_outbound(name: str, view: NodeView, out: NodeResources) -> None:
    """Layout ``name``'s whole outbound side for the node: its config and its endpoints."""
    get(name)(view, out)
    late = _LATE.get(name)
    if late is not None:
        late.add(view, out)


def known() -> list[str]:
    return sorted(_LAYOUTS)
