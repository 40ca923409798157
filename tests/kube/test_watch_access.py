"""Credentials and permissions of the API watch: which cluster, as whom, and exactly what it may call."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from pathlib import Path

import pytest
import yaml

from zpilot.kube.api_resources import API_ACCESS, NODE_AGENT_API_ACCESS, api_access, control_plane_watches, \
    node_agent_watches, rbac_rules
from zpilot.kube.credentials import Credentials
from zpilot.kube.source import SourceError, first_model

from .apiserver import ApiServer, seed_article
from .apiserver.tls import make_serving_certs
from .watch_util import Follower, requests_of, source_for, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"


def allow(access) -> set[tuple[str, str]]:
    """API_ACCESS's (verb, group, resource) as the test server's (verb, resource[.group]) grants."""
    return {(verb, f"{resource}.{group}" if group else resource) for verb, group, resource in access}


@pytest.fixture
def article(apiserver: ApiServer) -> ApiServer:
    seed_article(apiserver)
    return apiserver


async def test_api_access_is_enough_and_exactly_what_is_called(article):
    article.install_istio_crds()  # so that the optional kinds are listed and watched too
    token = article.add_token(allow=allow(API_ACCESS), user="system:serviceaccount:istio-system:zpilot")
    async with Follower(source_for(article, credentials=Credentials(
            kubeconfig=article.write_kubeconfig(article.workdir / "zpilot.kubeconfig", token=token)))) as follower:
        model = await follower.until(lambda m: True)
        assert model.cluster.workloads
        for resource in (w.resource.qualified for w in control_plane_watches()):
            await article.wait_for_watchers(resource)
        article.end_watches()  # a watch is recorded once it ends

        def mine() -> list:
            return [r for r in article.requests if r.user and r.user.endswith(":zpilot")]

        def called() -> set[tuple[str, str]]:
            return {(r.verb, r.resource) for r in mine() if r.verb != "discovery"}

        await wait_for(lambda: called() >= allow(API_ACCESS))
    assert called() == allow(API_ACCESS)
    assert all(r.status in (0, 200) for r in mine())
    # besides: discovery of the optional kinds' group/version, which every authenticated user may read
    assert {r.path for r in mine() if r.verb == "discovery"} == {"/apis/security.istio.io/v1"}


async def test_the_node_agent_access_is_enough(article):
    token = article.add_token(allow=allow(NODE_AGENT_API_ACCESS), user="system:serviceaccount:istio-system:zpilot-cni")
    credentials = Credentials(kubeconfig=article.write_kubeconfig(article.workdir / "cni.kubeconfig", token=token))
    event = await first_model(source_for(article, node_agent_watches(NODE_A), credentials=credentials))
    assert set(event.index.nodes) == {NODE_A}
    assert NODE_AGENT_API_ACCESS == api_access(node_agent_watches("any"))
    assert set(NODE_AGENT_API_ACCESS) < set(API_ACCESS)


def test_the_readme_documents_exactly_the_rbac_the_code_needs():
    text = README.read_text()
    blocks = re.findall(r"```yaml\n(# zpilot serve.*?)```", text, re.S)
    assert len(blocks) == 1, "the README's RBAC block (a yaml block starting with '# zpilot serve') is missing"
    wanted = rbac_rules(API_ACCESS)
    assert yaml.safe_load(blocks[0])["rules"] == wanted, "README: the rules must be\n" + yaml.safe_dump(wanted)
    agent = re.findall(r"```yaml\n(# zpilot cni.*?)```", text, re.S)
    wanted = rbac_rules(NODE_AGENT_API_ACCESS)
    assert len(agent) == 1 and yaml.safe_load(agent[0])["rules"] == wanted, "README: the agent's rules must be\n" + \
        yaml.safe_dump(wanted)
    assert API_ACCESS == api_access(control_plane_watches())


async def test_forbidden_is_logged_with_rbacs_message_and_nothing_is_served(article, caplog):
    token = article.add_token(allow=allow(API_ACCESS) - {("list", "services")}, user="limited")
    credentials = Credentials(kubeconfig=article.write_kubeconfig(article.workdir / "limited", token=token))
    with caplog.at_level(logging.WARNING, logger="zpilot.kube.watch"):
        async with Follower(source_for(article, credentials=credentials)) as follower:
            await asyncio.sleep(1.0)
            assert follower.events == []
    lines = [r.getMessage() for r in caplog.records if "403 Forbidden" in r.getMessage()]
    assert len(lines) == 1, lines  # once, not at every retry
    assert article.url in lines[0] and 'cannot list resource "services"' in lines[0]


async def test_unauthorized_is_retried_with_backoff_and_nothing_is_served(article, caplog):
    kubeconfig = article.write_kubeconfig(article.workdir / "stale", token="not-a-token")
    with caplog.at_level(logging.WARNING, logger="zpilot.kube.watch"):
        async with Follower(source_for(article, credentials=Credentials(kubeconfig=kubeconfig))) as follower:
            await wait_for(lambda: len(requests_of(article, "list", "pods")) >= 5)
            assert follower.events == []
    refused = requests_of(article, "list", "pods")[:5]
    assert all(r.status == 401 for r in refused)
    # backoff: pauses drawn from [b/2, b], b = 0.05 s doubling to 0.4 s: the fourth is at least 0.2 s
    gaps = [b.time - a.time for a, b in zip(refused, refused[1:])]
    assert gaps[3] >= 0.2
    assert any("401 Unauthorized" in r.getMessage() and article.url in r.getMessage() for r in caplog.records)


async def test_an_untrusted_server_certificate_is_a_tls_error(article, caplog):
    config = yaml.safe_load(article.kubeconfig_path.read_text())
    config["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        make_serving_certs().ca_pem).decode()
    path = article.workdir / "wrong-ca"
    path.write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING, logger="zpilot.kube.watch"):
        async with Follower(source_for(article, credentials=Credentials(kubeconfig=path))) as follower:
            await asyncio.sleep(0.5)
            assert follower.events == []
    assert any("TLS" in r.getMessage() and "not trusted" in r.getMessage() and article.url in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


async def test_in_cluster_service_account(article, tmp_path):
    token = article.add_token(allow=allow(API_ACCESS), user="system:serviceaccount:istio-system:zpilot")
    env = article.write_in_cluster_files(tmp_path / "sa", token=token)
    credentials = Credentials(service_account_dir=tmp_path / "sa", environ=env)
    assert str(credentials) == "the Kubernetes API"
    event = await first_model(source_for(article, credentials=credentials))
    assert event.index.cluster.workloads
    assert {r.user for r in requests_of(article, "list", "pods")} == {"system:serviceaccount:istio-system:zpilot"}


def two_contexts(server: ApiServer, path: Path) -> Path:
    """A kubeconfig whose current context is an unreachable cluster, and a second context for ``server``."""
    config = yaml.safe_load(server.kubeconfig_path.read_text())
    config["clusters"].append({"name": "gone", "cluster": {"server": "https://127.0.0.1:1"}})
    config["contexts"].append({"name": "gone", "context": {"cluster": "gone", "user": "test-apiserver"}})
    config["current-context"] = "gone"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_kubeconfig_from_the_environment_and_a_context(article, tmp_path):
    path = two_contexts(article, tmp_path / "config")
    env = {"KUBECONFIG": f"{tmp_path / 'missing'}:{path}"}
    credentials = Credentials(context="test-apiserver", environ=env)
    assert str(credentials) == "the Kubernetes API (context test-apiserver)"
    event = await first_model(source_for(article, credentials=credentials))
    assert event.index.cluster.workloads
    # without --context, the current context: an unreachable server, retried and never served
    async with Follower(source_for(article, credentials=Credentials(kubeconfig=path, environ={}))) as follower:
        await asyncio.sleep(0.3)
        assert follower.events == []


@pytest.mark.parametrize("content, context, expected", [
    ("clusters: [", None, "--kubeconfig"),
    (None, "nope", "context nope"),
])
async def test_an_unusable_kubeconfig_is_a_source_error_naming_it(article, tmp_path, content, context, expected):
    path = tmp_path / "config"
    path.write_text(article.kubeconfig_path.read_text() if content is None else content)
    with pytest.raises(SourceError, match=expected) as info:
        await first_model(source_for(article, credentials=Credentials(kubeconfig=path, context=context, environ={})))
    assert str(path) in str(info.value)


def test_serve_names_unusable_credentials_before_starting(tmp_path, capsys):
    from zpilot.cli import main

    assert main(["serve", "--kubeconfig", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"--kubeconfig {tmp_path / 'nope'}: no such file" in err and "--manifests" in err
    assert main(["serve", "--manifests", str(tmp_path), "--context", "x"]) == 2
    assert "without --kubeconfig/--context" in capsys.readouterr().err
