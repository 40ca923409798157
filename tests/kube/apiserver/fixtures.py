"""The pytest fixture and a client helper. ``tests/conftest.py`` loads this module as a plugin, so
every test may take ``apiserver`` as an argument."""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from kubernetes_asyncio import client, config

from .server import ApiServer


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[ApiServer]:
    """A started server with the standard namespaces and the ``kubernetes`` Service; admin kubeconfig at
    ``apiserver.kubeconfig_path``."""
    with ApiServer(tmp_path / "apiserver") as server:
        yield server


@asynccontextmanager
async def api_client(server: ApiServer, token: str | None = None) -> AsyncIterator[client.ApiClient]:
    """A kubernetes-asyncio client configured from a kubeconfig of ``server`` (admin, or ``token``)."""
    path = server.kubeconfig_path
    if token is not None:
        path = server.write_kubeconfig(server.workdir / f"kubeconfig-{hashlib.sha256(token.encode()).hexdigest()[:8]}",
                                       token=token)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api
