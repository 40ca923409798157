"""Fixtures for the xDS tests: an in-process control plane on free loopback ports, and Envoys
that are always killed at teardown."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from zpilot.certs import CertificateAuthority, IdentityCache
from zpilot.contract import DEFAULT_LAYOUT
from zpilot.kube.manifests import load_manifests
from zpilot.model.index import MeshIndex
from zpilot.translators import TranslateOptions, translate_node
from zpilot.runtime.control_plane import ControlPlane, DebugOptions
from zpilot.translators.resources import NodeResources
from zpilot.xds.metrics_server import MetricsOptions
from zpilot.xds.security import XdsSecurity
from zpilot.xds.server import ServerOptions

from ..layouts import LAYOUTS
from .ads_client import AdsClient, tls_credentials
from .envoy_util import Envoy, random_loopback

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "article"


def load_index(root: Path) -> MeshIndex:
    manifests = load_manifests(root)
    return MeshIndex.build(manifests.cluster, manifests.problems)


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    """A private copy of the example, so tests can add and remove manifests."""
    target = tmp_path / "manifests"
    shutil.copytree(EXAMPLE, target)
    return target


def per_node_translate(
    bind: dict[str, str], edit: Callable[[NodeResources], None] | None = None, layout: str = DEFAULT_LAYOUT
) -> Callable:
    """translate_node with each node's listeners on its own loopback address (tests share a host),
    then ``edit`` applied to the result (a test's way to serve something else, e.g. an invalid cluster)."""

    def translate(index: MeshIndex, node: str) -> NodeResources:
        address = bind.setdefault(node, random_loopback())
        resources = translate_node(index, node, TranslateOptions(bind_address=address, layout=layout))
        if edit is not None:
            edit(resources)
        return resources

    return translate


@pytest.fixture(params=LAYOUTS)
def layout(request) -> str:
    """The outbound layout: a test that takes it (and hands it to ``make_plane``) runs with each."""
    return request.param


@pytest.fixture
async def make_plane(manifests: Path):
    """Start an in-process ControlPlane (ADS, metrics and debug API on free loopback ports);
    ``edit`` changes each node's translated resources (see :func:`per_node_translate`); ``layout``
    is the outbound layout. ADS is plaintext unless ``security`` says otherwise
    (``security=XdsSecurity.mutual_tls``: called with the plane's CA, from which the tests then
    issue the client credentials too). The planes share one throwaway CA unless ``identities``
    gives the plane its own (a short lifetime, a CA on disk)."""
    planes: list[ControlPlane] = []
    shared_identities = IdentityCache(CertificateAuthority.generate())
    bind: dict[str, str] = {}

    async def make(*, xds_port: int = 0, edit=None, layout: str = DEFAULT_LAYOUT, index: MeshIndex | None = None,
                   xds_host: str = "127.0.0.1", debug_host: str = "127.0.0.1", metrics_host: str = "127.0.0.1",
                   security=None, identities: IdentityCache | None = None, **kw) -> ControlPlane:
        identities = shared_identities if identities is None else identities
        plane = ControlPlane(
            xds_security=security(lambda: identities.ca) if security is not None else XdsSecurity.insecure(),
            server_options=ServerOptions(host=xds_host, port=xds_port, **kw),
            debug_options=DebugOptions(host=debug_host, port=0),
            metrics_options=MetricsOptions(host=metrics_host, port=0),
            translate=per_node_translate(bind, edit, layout),
            identities=identities,
        )
        await plane.update(index or load_index(manifests))
        await plane.start()
        planes.append(plane)
        return plane

    yield make
    for plane in planes:
        await plane.stop()


@pytest.fixture
def envoys(tmp_path: Path):
    """Factory of started Envoys; every one is killed at teardown, pass or fail."""
    started: list[Envoy] = []

    def start(node: str, xds_port: int | str, *, delta: bool = False, name: str | None = None, tls=None,
              cli: tuple[str, ...] | None = None, flags: tuple[str, ...] = ()) -> Envoy:
        envoy = Envoy(tmp_path / (name or f"envoy-{len(started)}"), node, xds_port, delta=delta, tls=tls, cli=cli,
                      flags=flags)
        started.append(envoy)
        return envoy.start()

    yield start
    for envoy in started:
        envoy.stop()


@pytest.fixture
async def fake_plane():
    """A ControlPlane over a FakeWorld: nodes "a" (two clusters, a listener, a secret) and "b"."""
    from .fake_world import FakeWorld, NodeSpec

    world = FakeWorld(
        a=NodeSpec(clusters={"c1": ["10.0.0.1"], "c2": ["10.0.0.2"]}, listeners={"l1": 10001}, secrets=["s1"]),
        b=NodeSpec(clusters={"c1": ["10.0.0.1"]}, listeners={"l1": 10001}),
    )
    planes: list[ControlPlane] = []

    async def make(**server_kw) -> tuple[ControlPlane, FakeWorld]:
        plane = ControlPlane(
            xds_security=XdsSecurity.insecure(),
            server_options=ServerOptions(host="127.0.0.1", port=0, **server_kw),
            debug_options=DebugOptions(host="127.0.0.1", port=0),
            metrics_options=MetricsOptions(host="127.0.0.1", port=0),
            translate=world.translate,
            secrets=world.secrets,
        )
        await plane.update(world.index())
        await plane.start()
        planes.append(plane)
        return plane, world

    yield make
    for plane in planes:
        await plane.stop()


@pytest.fixture
async def tls_clients():
    """``make(port, credential, bundle, **kw)``: an ADS client over TLS to the server on ``port``, checked
    against ``bundle`` and presenting ``credential`` (a node credential; None presents none); each one made
    is closed after the test."""
    made: list[AdsClient] = []

    def make(port: int, credential=None, bundle: bytes | None = None, **kw) -> AdsClient:
        client = AdsClient(port, credentials=tls_credentials(bundle, credential), **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()
