"""The seam for the outbound half of a ztunnel's config.

The outbound side is where designs differ: the article's layout (``outbound_article.py``) multiplies
local pods by destinations by ports; the linear one (``outbound_linear.py``, the default:
``contract.DEFAULT_LAYOUT``) grows with their sum. Each layout is a
function adding its listeners, clusters, endpoints and secret references to a node's
resources; the inbound side and the fixed clusters do not depend on the choice.
"""

from __future__ import annotations

from typing import Callable

from .context import NodeView
from .resources import NodeResources

OutboundLayout = Callable[[NodeView, NodeResources], None]

_LAYOUTS: dict[str, OutboundLayout] = {}


def register(name: str) -> Callable[[OutboundLayout], OutboundLayout]:
    def add(layout: OutboundLayout) -> OutboundLayout:
        _LAYOUTS[name] = layout
        return layout

    return add


def get(name: str) -> OutboundLayout:
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown outbound layout {name!r} (known: {', '.join(sorted(_LAYOUTS))})") from None


def known() -> list[str]:
    return sorted(_LAYOUTS)
