"""Where a pod's own credentials are: the service account the kubelet mounts into every pod.

A module of its own, the standard library alone: :mod:`zpilot.kube.client` (which imports the Kubernetes
client) reads them, and :class:`zpilot.kube.credentials.Credentials` names the place as its default without
importing that client, so a command that makes Credentials but never loads them (``zpilot serve
--manifests``) does not pay 0.5 s of CPU for it.
"""

from __future__ import annotations

from pathlib import Path

#: The token, ca.crt and namespace of the pod's service account.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
