"""The in-process API server fixture for the Kubernetes source tests."""

from tests.kube.apiserver.fixtures import apiserver  # noqa: F401
