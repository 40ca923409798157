"""zpilot's own reading of a kubeconfig (``zpilot.kube.kubeconfig``): kubectl's merge and path rules, checked
through a real client against the in-process API server, and no private kubernetes-asyncio name used."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client

from zpilot.kube.client import KubeConfigError, api_client
from zpilot.kube.kubeconfig import KubeConfigProblem, read_kubeconfig

ZPILOT = Path(__file__).resolve().parents[2] / "zpilot"


async def whoami(api: client.ApiClient, apiserver) -> str:
    await client.CoreV1Api(api).list_namespace()
    return apiserver.requests[-1].user


async def test_merged_files_take_the_first_current_context_as_kubectl_does(apiserver, tmp_path):
    """kubectl: "the first file to set current-context wins" (kubernetes-asyncio took the last)."""
    first = apiserver.write_kubeconfig(tmp_path / "first", token=apiserver.add_token(user="first"), context="a")
    second = apiserver.write_kubeconfig(tmp_path / "second", token=apiserver.add_token(user="second"), context="b")
    async with await api_client(environ={"KUBECONFIG": f"{first}:{second}"}) as api:
        assert await whoami(api, apiserver) == "first"
    async with await api_client(None, "b", environ={"KUBECONFIG": f"{first}:{second}"}) as api:
        assert await whoami(api, apiserver) == "second"


async def test_a_name_in_two_files_is_the_first_files(apiserver, tmp_path):
    first = apiserver.write_kubeconfig(tmp_path / "first", token=apiserver.add_token(user="first"))
    second = apiserver.write_kubeconfig(tmp_path / "second", token=apiserver.add_token(user="second"))
    async with await api_client(environ={"KUBECONFIG": f"{second}:{first}"}) as api:
        assert await whoami(api, apiserver) == "second"


async def test_a_relative_token_file_is_relative_to_its_kubeconfig(apiserver, tmp_path, monkeypatch):
    directory = tmp_path / "conf"
    directory.mkdir()
    (directory / "token").write_text(apiserver.add_token(user="relative"))
    path = apiserver.write_kubeconfig(directory / "kubeconfig")
    document = yaml.safe_load(path.read_text())
    document["users"][0]["user"] = {"tokenFile": "token"}
    path.write_text(yaml.safe_dump(document))
    monkeypatch.chdir(tmp_path)  # not the kubeconfig's directory
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "relative"


async def test_a_kubeconfig_path_with_a_tilde_is_read_from_home(apiserver, tmp_path, monkeypatch):
    """``KUBECONFIG=~/.kube/other`` as a unit file or a container's environment passes it (no shell expands it)."""
    (tmp_path / ".kube").mkdir()
    apiserver.write_kubeconfig(tmp_path / ".kube" / "other", token=apiserver.add_token(user="tilde"))
    monkeypatch.setenv("HOME", str(tmp_path))
    async with await api_client(environ={"KUBECONFIG": "~/.kube/other"}) as api:
        assert await whoami(api, apiserver) == "tilde"


def test_an_exec_plugins_null_values_are_empty_strings(tmp_path):
    """``value:`` with nothing after it is YAML's null, which kubectl reads as the empty string: the plugin gets
    an empty variable, not the text "None"."""
    path = tmp_path / "kubeconfig"
    path.write_text("current-context: ctx\nclusters: [{name: c, cluster: {server: 'https://x'}}]\n"
                    "contexts: [{name: ctx, context: {cluster: c, user: u}}]\n"
                    "users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n"
                    "      command: aws\n      args: [eks, get-token, null]\n"
                    "      env:\n      - name: AWS_PROFILE\n        value:\n")
    plugin = read_kubeconfig([path]).exec_plugin()
    assert plugin is not None and plugin.env == {"AWS_PROFILE": ""} and plugin.args == ("eks", "get-token", "")


def test_unusable_kubeconfigs_are_named(tmp_path):
    path = tmp_path / "kubeconfig"

    def problem(document) -> str:
        path.write_text(yaml.safe_dump(document))
        with pytest.raises(KubeConfigProblem) as caught:
            read_kubeconfig([path], None).exec_plugin()
        return str(caught.value)

    base = {"clusters": [{"name": "c", "cluster": {"server": "https://x"}}],
            "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
            "users": [{"name": "u", "user": {"exec": {"apiVersion": "v1"}}}]}
    assert problem({**base, "current-context": ""}) == "no current-context (give --context)"
    assert problem({**base, "current-context": "other"}) == "no context other (contexts: ctx)"
    assert problem({**base, "current-context": "ctx", "users": []}) == "context ctx: no user u"
    assert problem({**base, "current-context": "ctx"}) == "user u: exec has no command"
    assert problem({**base, "current-context": "ctx", "clusters": [{"cluster": {}}]}).endswith(
        "an entry of clusters has no name")
    path.write_text("- a list\n")
    with pytest.raises(KubeConfigProblem, match="not a kubeconfig"):
        read_kubeconfig([path])


async def test_a_kubeconfig_that_is_not_yaml_is_named_without_quoting_it(tmp_path):
    """PyYAML's message quotes the line it failed on (parsed from bytes): here the token's."""
    path = tmp_path / "kubeconfig"
    path.write_text("current-context: c\nusers:\n- name: u\n  user:\n    token: s3cr3t-token: x\n")
    with pytest.raises(KubeConfigError) as caught:
        await api_client(path, environ={})
    assert "s3cr3t" not in str(caught.value)
    assert str(caught.value) == f"--kubeconfig {path}: {path}: not YAML at line 5, column 24 (mapping values are not allowed here)"


def _private_kubernetes_asyncio_uses(source: str) -> list[str]:
    """Private names of kubernetes-asyncio a module uses: imported by name, or read off an imported module
    or class (``kube_config._is_expired``)."""
    tree = ast.parse(source)
    bound: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kubernetes_asyncio"):
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("kubernetes_asyncio"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append(ast.unparse(node))
    return found


def test_zpilot_uses_no_private_kubernetes_asyncio_name():
    """A library upgrade may change private names without notice; the kubeconfig is read by zpilot instead."""
    used = {str(p.relative_to(ZPILOT)): found for p in sorted(ZPILOT.rglob("*.py"))
            if (found := _private_kubernetes_asyncio_uses(p.read_text()))}
    assert used == {}


def test_the_private_name_check_can_fail():
    assert _private_kubernetes_asyncio_uses(
        "from kubernetes_asyncio.config import kube_config\nkube_config._is_expired(x)\n") == ["kube_config._is_expired"]
    assert _private_kubernetes_asyncio_uses("from kubernetes_asyncio.config.kube_config import _is_expired\n") == [
        "kubernetes_asyncio.config.kube_config._is_expired"]
