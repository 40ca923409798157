"""Where ``zpilot.kube.client.api_client`` finds credentials, against the in-process API server:
--kubeconfig, then KUBECONFIG, then the pod's service account, then ~/.kube/config; --context."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes_asyncio import client

from zpilot.kube.client import KubeConfigError, api_client, server


async def whoami(api: client.ApiClient, apiserver) -> str:
    """Make a call and say which user the API server saw (the credentials actually used)."""
    await client.CoreV1Api(api).list_namespace()
    return apiserver.requests[-1].user


@pytest.fixture
def home(tmp_path: Path, apiserver) -> Path:
    """A HOME whose ~/.kube/config works, as a token of its own ("home")."""
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    apiserver.write_kubeconfig(home / ".kube" / "config", token=apiserver.add_token(user="home"))
    return home


async def test_kubeconfig_flag_then_kubeconfig_env_then_in_cluster_then_home(apiserver, home, tmp_path):
    flag = apiserver.write_kubeconfig(tmp_path / "flag", token=apiserver.add_token(user="flag"))
    env_file = apiserver.write_kubeconfig(tmp_path / "env", token=apiserver.add_token(user="env"))
    sa_dir = tmp_path / "sa"
    pod_env = apiserver.write_in_cluster_files(sa_dir, token=apiserver.add_token(user="pod"))
    everything = {"HOME": str(home), "KUBECONFIG": f"{tmp_path / 'absent'}:{env_file}", **pod_env}

    async def user(kubeconfig=None, **environ) -> str:
        async with await api_client(kubeconfig, environ=environ, service_account_dir=sa_dir) as api:
            assert server(api) == apiserver.url
            return await whoami(api, apiserver)

    assert await user(flag, **everything) == "flag"
    assert await user(**everything) == "env"  # the absent file of the list is skipped, as kubectl does
    assert await user(**{k: v for k, v in everything.items() if k != "KUBECONFIG"}) == "pod"
    assert await user(HOME=str(home)) == "home"


async def test_context_picks_a_kubeconfig_context(apiserver, tmp_path):
    path = apiserver.write_kubeconfig(tmp_path / "kubeconfig", context="one")
    async with await api_client(path, "one", environ={}) as api:
        assert await whoami(api, apiserver) == "admin"
    with pytest.raises(KubeConfigError, match=f"--kubeconfig {path} context two: .*two"):
        await api_client(path, "two", environ={})


async def test_missing_or_unusable_credentials_are_named(apiserver, tmp_path):
    with pytest.raises(KubeConfigError, match=f"--kubeconfig {tmp_path / 'nope'}: no such file"):
        await api_client(tmp_path / "nope", environ={})
    with pytest.raises(KubeConfigError, match=f"default kubeconfig {tmp_path}/.kube/config: no such file"):
        await api_client(environ={"HOME": str(tmp_path)})
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(KubeConfigError, match=f"KUBECONFIG {broken}: "):
        await api_client(environ={"KUBECONFIG": str(broken)})
    sa_dir = tmp_path / "sa"
    env = apiserver.write_in_cluster_files(sa_dir)
    with pytest.raises(KubeConfigError, match="in-cluster credentials have no contexts"):
        await api_client(None, "prod", environ=env, service_account_dir=sa_dir)
    (sa_dir / "ca.crt").unlink()
    with pytest.raises(KubeConfigError, match=f"in-cluster credentials \\({sa_dir}\\): .*cert"):
        await api_client(environ=env, service_account_dir=sa_dir)
