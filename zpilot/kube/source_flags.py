"""Where a long-running command reads the cluster from: its API server (the default) or ``--manifests``.

Shared by ``zpilot serve`` and the CNI agent (``zpilot cni apply|status|run``), so both take the
same credential flags and say the same thing when they are wrong. Argument definitions only (the
standard library: ``--help`` stays light, see tests/test_cli_startup.py); the sources themselves
are imported when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .credentials import Credentials


def add_arguments(p: argparse.ArgumentParser, *, manifests_help: str) -> None:
    p.add_argument("--manifests", type=Path, metavar="DIR", help=manifests_help)
    p.add_argument("--kubeconfig", type=Path, metavar="PATH",
                   help="kubeconfig of the cluster (default: $KUBECONFIG, else the pod's service account,"
                        " else ~/.kube/config)")
    p.add_argument("--context", metavar="NAME", help="kubeconfig context to use (default: its current-context)")


def problem(args: argparse.Namespace, loaded: Credentials | None = None, *,
            cluster_used_otherwise: bool = False) -> str | None:
    """Why the flags name no usable source, or None. With ``--manifests`` the credential flags are
    refused unless something else reads the cluster (``cluster_used_otherwise``: serve's --ca-secret);
    without it, the credentials are loaded to check them: into ``loaded`` if given (the object the process
    then uses, which keeps what was loaded: a plugin's answer is not asked for again), else into a new one."""
    if args.manifests is not None:
        if not cluster_used_otherwise and (args.kubeconfig is not None or args.context is not None):
            return "--manifests reads a directory instead of the cluster: give it without --kubeconfig/--context"
        if not args.manifests.exists():
            return f"manifest directory {args.manifests} does not exist"
        return None
    import asyncio

    why = asyncio.run((loaded if loaded is not None else credentials(args)).problem())
    return None if why is None else f"{why} (or read manifests with --manifests DIR)"


def credentials(args: argparse.Namespace) -> Credentials:
    from .credentials import Credentials

    return Credentials(kubeconfig=args.kubeconfig, context=args.context)
