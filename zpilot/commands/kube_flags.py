"""The cluster credential flags every command that talks to a Kubernetes API server shares.

One definition, so ``--kubeconfig`` and ``--context`` mean the same everywhere (the CA Secret, the
API watch source); :func:`zpilot.kube.client.api_client` turns them into a client, and its
docstring says in which order credentials are looked for.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", type=Path,
                        help="kubeconfig file (default: $KUBECONFIG, else in-cluster service account, else ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: its current-context)")
