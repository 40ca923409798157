"""Argument types shared by sub-commands, cheap to import: ``zpilot --help`` must not load the
translators (protobuf, the Envoy API) just to list their choices, so values are checked when
the command line is parsed, not when the parser is built."""

from __future__ import annotations

import argparse


def layout_name(text: str) -> str:
    """``--layout``: the name of a registered outbound layout (see ``zpilot.translators.layout``)."""
    from ..translators import known_layouts

    if text not in known_layouts():
        raise argparse.ArgumentTypeError(f"unknown outbound layout {text!r} (known: {', '.join(known_layouts())})")
    return text


#: Istio's default root namespace (``zpilot.model.policy.DEFAULT_ROOT_NAMESPACE``, not imported: the model is not cheap).
DEFAULT_ROOT_NAMESPACE = "istio-system"


def namespace_name(text: str) -> str:
    """A Kubernetes namespace name (an RFC 1123 label), e.g. ``--root-namespace``."""
    import re

    if len(text) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace name (RFC 1123 label)")
    return text


def add_root_namespace(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root-namespace", default=DEFAULT_ROOT_NAMESPACE, type=namespace_name,
                   help="Istio's root namespace: its policies without a selector apply to the whole mesh"
                        f" (default {DEFAULT_ROOT_NAMESPACE})")
