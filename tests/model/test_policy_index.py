"""Which policies apply to which workload (the policy index), and what it reports."""

from __future__ import annotations

from types import MappingProxyType

from zpilot.model import Cluster, MeshIndex, Namespace, Node, Problems, Workload
from zpilot.model.objects import frozen_labels
from zpilot.model.policy import Action, AuthorizationPolicy, MtlsMode, Operation, PeerAuthentication, Rule

AMBIENT = frozen_labels({"istio.io/dataplane-mode": "ambient"})


def pod(name: str, ns: str, ip: str, labels: dict[str, str]) -> Workload:
    return Workload(name=name, namespace=ns, uid=f"uid-{name}", ips=(ip,), node_name="n1", service_account=name,
                    labels=frozen_labels(labels))


WEB = pod("web", "shop", "10.0.0.1", {"app": "web"})
DB = pod("db", "shop", "10.0.0.2", {"app": "db"})
API = pod("api", "edge", "10.0.0.3", {"app": "web"})
LEGACY = pod("legacy", "plain", "10.0.0.4", {"app": "web"})


def build(*, authz=(), peer=(), root: str = "istio-system") -> tuple[MeshIndex, Problems]:
    cluster = Cluster(
        nodes=(Node("n1", ("172.18.0.2",)),),
        namespaces=(Namespace("shop", AMBIENT), Namespace("edge", AMBIENT), Namespace("plain"), Namespace(root, AMBIENT)),
        workloads=(WEB, DB, API, LEGACY),
        authorization_policies=tuple(authz),
        peer_authentications=tuple(peer),
    )
    problems = Problems()
    return MeshIndex.build(cluster, problems, root_namespace=root), problems


def ap(name: str, ns: str, action: Action = Action.ALLOW, selector: dict | None = None, **kw) -> AuthorizationPolicy:
    return AuthorizationPolicy(name, ns, action, frozen_labels(selector) if selector else None, **kw)


def names(policies) -> list[str]:
    return [f"{p.namespace}/{p.name}" for p in policies]


def test_scope_by_selector_namespace_and_root() -> None:
    index, _ = build(authz=[
        ap("ns-wide", "shop"),
        ap("web-only", "shop", selector={"app": "web"}),
        ap("mesh-wide", "istio-system", Action.DENY),
        ap("all-web", "istio-system", selector={"app": "web"}),
    ])
    assert names(index.policies_for(WEB).allow) == ["istio-system/all-web", "shop/ns-wide", "shop/web-only"]
    assert names(index.policies_for(WEB).deny) == ["istio-system/mesh-wide"]
    assert names(index.policies_for(DB).allow) == ["shop/ns-wide"]
    # another namespace: only the root namespace's policies reach it (the selector one too)
    assert names(index.policies_for(API).allow) == ["istio-system/all-web"]
    # a pod outside the mesh gets nothing: no ztunnel enforces for it
    assert index.policies_for(LEGACY).empty


def test_root_namespace_is_configurable() -> None:
    index, _ = build(authz=[ap("mesh-wide", "mesh-root", Action.DENY)], root="mesh-root")
    assert names(index.policies_for(API).deny) == ["mesh-root/mesh-wide"]
    default_root, _ = build(authz=[ap("mesh-wide", "mesh-root", Action.DENY)])
    assert default_root.policies_for(API).empty


def test_unsupported_policies_are_reported_and_not_enforced() -> None:
    index, problems = build(authz=[
        ap("audit", "shop", Action.AUDIT),
        ap("custom", "shop", Action.CUSTOM),
        ap("waypoint", "shop", target_refs=("Service/web",)),
        ap("l7", "shop", rules=(Rule(operations=(Operation(ports=(80,), l7=("methods",)),)),)),
    ])
    assert names(index.policies_for(WEB).allow) == ["shop/l7"]  # enforced, fail-closed
    text = "\n".join(str(p) for p in problems)
    assert "error: AuthorizationPolicy shop/audit: action AUDIT is not supported" in text
    assert "error: AuthorizationPolicy shop/custom: action CUSTOM is not supported" in text
    assert "warning: AuthorizationPolicy shop/waypoint: targetRef(s) Service/web" in text
    assert "warning: AuthorizationPolicy shop/l7: rule 0 uses L7-only fields (methods)" in text
    assert "matches nothing (fail closed)" in text


def pa(name: str, ns: str, mode: MtlsMode, selector: dict | None = None, ports: dict | None = None,
       created: str = "") -> PeerAuthentication:
    return PeerAuthentication(name, ns, frozen_labels(selector) if selector else None, mode,
                              MappingProxyType(ports or {}), created)


def test_peer_authentication_levels_and_ports() -> None:
    index, _ = build(peer=[
        pa("mesh", "istio-system", MtlsMode.STRICT),
        pa("shop", "shop", MtlsMode.UNSET),
        pa("db", "shop", MtlsMode.UNSET, {"app": "db"}, {5432: MtlsMode.PERMISSIVE, 9000: MtlsMode.STRICT}),
    ])
    web = index.policies_for(WEB).mtls
    assert web.default is MtlsMode.STRICT and not web.ports and web.strict(80)
    db = index.policies_for(DB).mtls
    assert db.default is MtlsMode.STRICT and dict(db.ports) == {5432: MtlsMode.PERMISSIVE}
    assert db.strict(9000) and not db.strict(5432)
    assert [str(r) for r in db.decided_by] == ["PeerAuthentication istio-system/mesh", "PeerAuthentication shop/db"]


def test_namespace_overrides_mesh_and_disable_acts_as_permissive() -> None:
    index, problems = build(peer=[
        pa("mesh", "istio-system", MtlsMode.STRICT),
        pa("shop", "shop", MtlsMode.DISABLE),
        pa("db", "shop", MtlsMode.UNSET, {"app": "db"}, {9000: MtlsMode.STRICT}),
    ])
    assert not index.policies_for(WEB).mtls.refuses_any_plaintext
    assert index.policies_for(API).mtls.default is MtlsMode.STRICT
    db = index.policies_for(DB).mtls
    assert db.default is MtlsMode.PERMISSIVE and dict(db.ports) == {9000: MtlsMode.STRICT}
    assert any("DISABLE acts as PERMISSIVE" in str(p) for p in problems)


def test_competing_peer_authentications_the_oldest_wins() -> None:
    index, problems = build(peer=[
        pa("newer", "shop", MtlsMode.PERMISSIVE, created="2024-02-01T00:00:00Z"),
        pa("older", "shop", MtlsMode.STRICT, created="2024-01-01T00:00:00Z"),
        pa("root-selector", "istio-system", MtlsMode.STRICT, {"app": "web"}),
    ])
    assert index.policies_for(WEB).mtls.default is MtlsMode.STRICT
    assert index.policies_for(API).mtls.default is MtlsMode.PERMISSIVE  # the root selector policy is ignored
    text = "\n".join(str(p) for p in problems)
    assert "PeerAuthentication shop/older: competes with PeerAuthentication shop/newer" in text
    assert "PeerAuthentication istio-system/root-selector: a selector in the root namespace is ignored" in text


def test_commands_default_root_namespace_is_the_models() -> None:
    """The commands' cheap copy of the default (they must not import the model for --help) is the model's."""
    from zpilot.commands.options import DEFAULT_ROOT_NAMESPACE as commands_default
    from zpilot.model.policy import DEFAULT_ROOT_NAMESPACE

    assert commands_default == DEFAULT_ROOT_NAMESPACE
