"""Argument types shared by sub-commands, cheap to import: ``zpilot --help`` must not load the
translators (protobuf, the Envoy API) just to list their choices, so values are checked when
the command line is parsed, not when the parser is built."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Callable

from .. import contract

log = logging.getLogger("zpilot.commands")


def add_layout_argument(parser: argparse.ArgumentParser, what: str = "outbound layout") -> None:
    """``--layout`` of every command that builds, runs or explains ztunnel config: one default
    (``contract.DEFAULT_LAYOUT``), so ``explain`` describes what ``serve`` sends."""
    parser.add_argument("--layout", default=contract.DEFAULT_LAYOUT, type=layout_name,
                        help=f"{what} (default {contract.DEFAULT_LAYOUT}; article: the article's own dump, whose"
                             " size grows with local pods x destinations)")


def whole_number(text: str, low: int, high: int, what: str = "a whole number") -> int:
    """``text`` as an integer from ``low`` to ``high``, else an argument error saying which."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is not {what} from {low} to {high}")
    return value


def port_number(text: str) -> int:
    """A TCP port (0: where a listener takes it, any free port)."""
    return whole_number(text, 0, 65535, "a port number")


def listen_address(port_flag: str) -> Callable[[str], str]:
    """A listen address: an IP address, a host name or ``unix:/path``, without a port (``port_flag`` gives it).
    ``127.0.0.1:15012`` was taken for a host name, so a debug API given so was refused as exposed, naming
    127.0.0.1, and any other listener failed to bind."""

    def parse(text: str) -> str:
        import ipaddress

        if text.startswith("unix:") or ":" not in text:
            return text
        try:
            ipaddress.ip_address(text)  # IPv6 (colons are its own)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text[:100]!r} is not an address: give the address alone, and the port with {port_flag}") from None
        return text

    return parse


def seconds(text: str, *, allow_zero: bool = True, maximum: float = math.inf) -> float:
    """A duration: a finite number of seconds, never negative, zero only where it means something
    (``allow_zero``), and at most ``maximum``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or value > maximum:
        wanted = "zero or more" if allow_zero else "more than zero"
        if maximum != math.inf:
            wanted += f" and at most {int(maximum) if float(maximum).is_integer() else maximum}"
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number of seconds, {wanted}")
    return value


def add_trust_domain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-domain", default=contract.DEFAULT_TRUST_DOMAIN,
                   help=f"SPIFFE trust domain of the workload identities (default {contract.DEFAULT_TRUST_DOMAIN})")


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


#: A debug token file longer than this is not a token.
MAX_DEBUG_TOKEN_BYTES = 4096


def read_token_file(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped); ValueError saying what is wrong."""
    import stat

    try:
        if path.stat().st_size > MAX_DEBUG_TOKEN_BYTES:
            raise ValueError(f"{path}: larger than {MAX_DEBUG_TOKEN_BYTES} bytes; is it a token?")
        token = path.read_text(encoding="utf-8").strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{path}: must hold one token (no spaces), and holds {'nothing' if not token else 'several words'}")
    if mode & 0o077:
        log.warning("%s: the debug token file has mode %o; make it readable by its owner only (chmod 600)", path, mode)
    return token
