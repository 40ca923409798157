"""Kubernetes object names as the API server checks them, for names zpilot is given rather than reads from an
object (the CA Secret's and trust bundle's ``NAMESPACE/NAME``, the CNI agent's own pod, the DaemonSet its pod
names as its controller): they are put in API paths, so one that is not a name is refused before a request.

``\\Z``, not ``$``: ``$`` also matches before a final newline, and ``"istio-system\\n"`` is not a namespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A namespace's name (RFC 1123 label: at most 63 lower-case letters, digits and '-', alphanumeric at both ends).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
#: Most objects' names (RFC 1123 subdomain: such labels joined by '.', at most 253 characters).
DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


@dataclass(frozen=True)
class SecretName:
    """A namespaced object's ``NAMESPACE/NAME`` (the CA Secret, the trust bundle's ConfigMap): here, beside the
    name rules, so ``zpilot serve`` parses one without importing the Kubernetes client."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str, what: str = "a CA Secret") -> "SecretName":
        """``NAMESPACE/NAME`` (of a Secret, or another namespaced object: ``what``); ValueError (naming
        the text) unless both are valid Kubernetes names."""
        namespace, slash, name = text.partition("/")
        if not slash or not DNS_LABEL.match(namespace) or not DNS_SUBDOMAIN.match(name):
            raise ValueError(f"{text[:300]!r}: {what} is NAMESPACE/NAME, both lower-case Kubernetes names")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"
