"""``zpilot explain`` from generated config and CNI plan alone (no root, no traffic): the
article's paths, computed, with both outbound layouts (the ``mesh`` fixture's parameter). The
comparison with a live world is in test_demo.py."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import pytest

from zpilot.explain import ExplainError, explain, load_mesh, mesh_from_index, render
from zpilot.kube.manifests import load_manifests
from zpilot.model.index import MeshIndex
from zpilot.world.topology import NODE_A, NODE_B, article_world

ARTICLE = "examples/article"
SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
PRODUCTPAGE_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
DETAILS_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-details"


LAYOUTS = ["article", "linear"]
#: The facts that differ between the layouts (the names of ztunnel A's outbound chain and resources).
LINEAR = {
    "productpage-vip": {
        "filter_chain": "http_productpage.default.svc.cluster.local",
        "cluster": "http_productpage.default.svc.cluster.local",
        "endpoint": "envoy://tunnel_lis/10.4.3.20:9080",
        "internal_listener": "tunnel_lis",
    },
}


@pytest.fixture(scope="module", params=LAYOUTS)
def mesh(request):
    return load_mesh(ARTICLE, layout=request.param)


@pytest.fixture(scope="module")
def article_index():
    """The article's model: what the CNI plan is built from (the plan does not depend on the outbound layout)."""
    return MeshIndex.build(load_manifests(ARTICLE).cluster)


def test_article_path_sleep_to_productpage_vip(mesh):
    [path] = explain(mesh, "sleep", "10.8.14.226", 9080)
    expected = {
        "mark": "0x100",
        "ip_rule": "101: from all fwmark 0x100/0x100 lookup 101",
        "route_table": "101",
        "tunnel_device": "istioout",
        "tproxy_port": "15001",
        "listener": "ztunnel_outbound",
        "filter_chain": f"{SLEEP_ID}_to_http_productpage.default.svc.cluster.local_outbound_internal",
        "cluster": f"{SLEEP_ID}_to_http_productpage.default.svc.cluster.local_outbound_internal",
        "endpoint": f"envoy://outbound_tunnel_lis_{SLEEP_ID}/10.4.3.20:9080",
        "internal_listener": f"outbound_tunnel_lis_{SLEEP_ID}",
        "tunnel_cluster": f"outbound_tunnel_clus_{SLEEP_ID}",
        "tunnel_dial": "10.4.3.20:15008",
        "connect_authority": "10.4.3.20:9080",
        "peer_identity": SLEEP_ID,
        "server_identity": "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        "dest_ip_rule": "103: from all lookup 100",
        "dest_route_table": "100",
        "dest_tunnel_device": "istioin",
        "dest_tproxy_port": "15008",
        "inbound_listener": "ztunnel_inbound",
        "inbound_chain": "inbound_10.4.3.20",
        "inbound_cluster": "virtual_inbound",
        "destination": "10.4.3.20:9080",
        "verdict": "allowed",  # no policy in the example
        "pod": "productpage-v1-5586c4d4ff-qxz9f",
    }
    if mesh.layout == "linear":
        expected.update(LINEAR["productpage-vip"])
    assert path.facts == expected
    text = render([path])
    # the article's listings, line for line where the plan holds them
    assert "-p tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100" in text
    assert "ip rule 101: from all fwmark 0x100/0x100 lookup 101" in text
    assert "table 101: default via 192.168.127.2 dev istioout" in text
    assert "--on-port 15001 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff" in text
    assert "table 100: 10.4.3.20/32 via 192.168.126.2 dev istioin" in text


def test_service_with_several_endpoints_gives_one_path_each(mesh):
    paths = explain(mesh, "sleep", "10.8.7.166", 9080)  # reviews: v1 on node A, v2 and v3 on node B
    assert {p.facts["pod"] for p in paths} == {"reviews-v1-9c6bb6658-4jgrh", "reviews-v2-8454bb78d8-2xmvs",
                                                 "reviews-v3-6dc9897554-8q5bm"}
    same_node = next(p for p in paths if p.facts["pod"].startswith("reviews-v1"))
    assert same_node.facts["tunnel_dial"] == "10.4.4.11:15088"  # the same-node port, redirected locally
    assert "dest_route_table" not in same_node.facts
    assert same_node.facts["inbound_chain"] == "inbound_10.4.4.11"


def test_pod_ip_paths(mesh):
    linear = mesh.layout == "linear"
    [cross] = explain(mesh, "sleep", "10.4.3.20", 9080)
    assert cross.facts["filter_chain"] == (f"pods_on_{NODE_B}" if linear else f"fc-outbound_pod_tunnel_clus_{SLEEP_ID}_to_{PRODUCTPAGE_ID}")
    assert cross.facts["tunnel_dial"] == "10.4.3.20:15008"
    assert cross.facts["connect_authority"] == "10.4.3.20:9080"
    [same] = explain(mesh, "sleep", "10.4.4.7", 9080)
    assert same.facts["filter_chain"] == (f"pods_on_{NODE_A}" if linear else f"fc-outbound_pod_local_tunnel_clus_{SLEEP_ID}_to_{DETAILS_ID}")
    assert same.facts["tunnel_dial"] == "10.4.4.7:15088"
    assert same.facts["inbound_chain"] == "inbound_10.4.4.7"
    if linear:  # by the node's pod CIDR to the pod-select listener, which picks the pod's endpoint (the
        # identity to pin) from the node's cluster; then the tunnel listener picks sleep's chain
        assert cross.facts["cluster"] == same.facts["cluster"] == "pod_select"
        assert cross.facts["internal_listener"] == same.facts["internal_listener"] == "tunnel_lis"
        # one tunnel cluster for both, each chain giving it the destination's IP on its port
        assert cross.facts["tunnel_cluster"] == same.facts["tunnel_cluster"] == f"outbound_tunnel_clus_{SLEEP_ID}"
        assert f"filter chain tunnel_local_{SLEEP_ID}" in render([same])
        text = render([cross])
        assert f"tcp_proxy -> cluster pods_on_{NODE_B} (override_host: the endpoint envoy://tunnel_lis/10.4.3.20)" in text
        assert f"and is exactly {PRODUCTPAGE_ID} (pinned" in text
        assert "original_dst restores 10.4.3.20:9080 as the destination" in text


def test_passthrough_blackhole_and_plaintext(mesh):
    [out] = explain(mesh, "sleep", "10.4.3.19", 80)  # httpbin, namespace legacy: not meshed
    if mesh.layout == "linear":  # in node B's pod CIDR: node B's cluster has no endpoint for it
        assert out.facts["filter_chain"] == f"pods_on_{NODE_B}"
        assert "mesh_passthrough_lis" in render([out]) and "the passthrough endpoint" in render([out])
        assert out.facts["destination"] == "10.4.3.19:80"
    else:
        assert out.facts["filter_chain"] == "PassthroughFilterChain"
    assert "inbound_listener" not in out.facts and out.facts["pod"] == "httpbin-85d76b4bb6-dz6b2"
    [hole] = explain(mesh, "sleep", "10.4.3.20", 15001)
    assert hole.facts["filter_chain"] == "BlackHoleCluster" and hole.outcome == "dropped (blackhole)"
    [plain] = explain(mesh, "legacy/httpbin-85d76b4bb6-dz6b2", "10.4.3.20", 9080)
    assert "mark" not in plain.facts  # not captured at the source
    assert plain.facts["dest_tproxy_port"] == "15006"
    assert plain.facts["inbound_listener"] == "ztunnel_inbound_plaintext"


def test_opted_out_pod_through_kube_proxy(mesh):
    [path] = explain(mesh, "legacy-client", "10.8.14.226", 9080)  # istio.io/dataplane-mode=none
    assert "mark" not in path.facts and path.facts["inbound_listener"] == "ztunnel_inbound_plaintext"
    assert "kube-proxy DNATs 10.8.14.226:9080" in render([path])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_follows_the_plan_when_a_node_has_no_ztunnel(layout):
    """Fail-open: with node A's ztunnel gone, sleep's traffic is not captured."""
    loaded = load_manifests(ARTICLE)
    cluster = loaded.cluster
    cluster = dataclasses.replace(cluster, workloads=tuple(w for w in cluster.workloads if w.name != "ztunnel-rts54"))
    mesh = mesh_from_index(MeshIndex.build(cluster), layout=layout)
    [path] = explain(mesh, "sleep", "10.8.14.226", 9080)
    assert "mark" not in path.facts
    assert path.facts["dest_tproxy_port"] == "15006"  # still captured, as plaintext, on node B


@pytest.mark.parametrize("layout", LAYOUTS)
def test_world_manifests_explain_like_the_article(tmp_path, layout):
    article_world().write_manifests(tmp_path)
    [path] = explain(load_mesh(tmp_path, layout=layout), "sleep", "10.8.14.226", 9080)
    assert path.facts["pod"] == "productpage-v1-5586c4d4ff-qxz9f"
    assert path.facts["peer_identity"] == SLEEP_ID


def test_service_names_resolve_like_dns(mesh):
    by_ip = explain(mesh, "sleep", "10.8.14.226", 9080)[0].facts
    for name in ("productpage.default.svc.cluster.local", "productpage.default", "productpage"):
        assert explain(mesh, "sleep", name, 9080)[0].facts == by_ip
    with pytest.raises(ExplainError):
        explain(mesh, "sleep", "nosuchservice.default", 9080)


def test_unknown_pod(mesh):
    with pytest.raises(ExplainError):
        explain(mesh, "nosuchpod", "10.8.14.226", 9080)


def test_a_dual_stack_pod_is_explained_from_its_ipv4_address(tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(ARTICLE, manifests)
    (manifests / "dual.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: dual, namespace: default, uid: u-dual}\n"
        "spec: {nodeName: gke-jimmy-cluster-default-pool-d5041909-d10i, serviceAccountName: sleep,"
        " containers: [{name: c, image: i}]}\n"
        "status: {phase: Running, podIP: 'fd00::6', podIPs: [{ip: 'fd00::6'}, {ip: 10.4.4.77}],"
        " conditions: [{type: Ready, status: 'True'}]}\n")
    [path] = explain(load_mesh(manifests), "dual", "10.8.14.226", 9080)
    assert path.source == "default/dual (10.4.4.77)"
    assert path.facts["mark"] == "0x100" and path.facts["peer_identity"] == SLEEP_ID  # meshed, as the plan has it


def test_the_command_names_input_errors_that_can_explain_a_missing_pod(tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(ARTICLE, manifests)
    (manifests / "pods.yaml").write_text("kind: Pod\nmetadata: [unclosed\n")
    broken = subprocess.run([sys.executable, "-m", "zpilot.cli", "explain", "--manifests", manifests, "--from", "sleep",
                             "--to", "10.8.14.226:9080"], capture_output=True, text=True, timeout=60)
    assert broken.returncode == 2
    assert f"error: {manifests / 'pods.yaml'}: malformed YAML" in broken.stderr and "no pod 'sleep'" in broken.stderr
    clean = subprocess.run([sys.executable, "-m", "zpilot.cli", "explain", "--manifests", ARTICLE, "--from", "sleep",
                            "--to", "10.8.14.226:9080"], capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0 and clean.stderr == ""  # information (pods left out on purpose) is not news here


def test_command_line():
    ok = subprocess.run([sys.executable, "-m", "zpilot.cli", "explain", "--manifests", ARTICLE, "--from", "sleep",
                         "--to", "10.8.14.226:9080"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "listener ztunnel_inbound -> filter chain inbound_10.4.3.20" in ok.stdout
    as_json = subprocess.run([sys.executable, "-m", "zpilot.cli", "explain", "--manifests", ARTICLE, "--from",
                              "sleep", "--to", "reviews.default:9080", "--json"], capture_output=True, text=True,
                             timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    import json

    paths = json.loads(as_json.stdout)
    assert len(paths) == 3 and all(p["facts"]["peer_identity"] == SLEEP_ID for p in paths)
    assert all(p["hops"][0]["where"] == "pod sleep-5644bdc767-2dfg7" for p in paths)
    # the default layout is the linear one; --layout article explains the article's
    assert "endpoint envoy://tunnel_lis/10.4.3.20:9080 -> internal listener tunnel_lis" in ok.stdout
    article = subprocess.run([sys.executable, "-m", "zpilot.cli", "explain", "--manifests", ARTICLE, "--from", "sleep",
                              "--to", "10.8.14.226:9080", "--layout", "article"], capture_output=True, text=True,
                             timeout=60)
    assert article.returncode == 0, article.stderr
    assert (f"endpoint envoy://outbound_tunnel_lis_{SLEEP_ID}/10.4.3.20:9080 -> internal listener"
            f" outbound_tunnel_lis_{SLEEP_ID}") in article.stdout
    bad = subprocess.run([sys.executable, "-m", "zpilot.cli", "explain", "--manifests", ARTICLE, "--from", "nosuch",
                          "--to", "10.8.14.226:9080"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no pod" in bad.stderr


# -- the netfilter interpreter on the plan's own rules ------------------------------------------

from zpilot.cni.desired import TunnelKind  # noqa: E402
from zpilot.cni.plan import NodeFacts, build_plan  # noqa: E402
from zpilot.explain.netfilter import Packet, UnsupportedRule, route, run_chain  # noqa: E402

NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"


@pytest.fixture(scope="module")
def plan_a(article_index):
    return build_plan(article_index, NODE_A, NodeFacts(ztunnel_veth="veth300a1d80", host_ip="10.4.4.1",
                                                    tunnel_kind=TunnelKind.VXLAN))


def _mark_and_table(plan, packet):
    res = run_chain(plan.node_side, "mangle", "ztunnel-PREROUTING", packet)
    return res.packet.mark, route(plan.node_side, packet.dst, res.packet.mark)


def test_node_rules_each_kind_of_packet(plan_a):
    # a meshed pod's TCP: captured
    mark, decision = _mark_and_table(plan_a, Packet("10.4.4.19", "10.8.14.226", 9080, "vethsleep"))
    assert mark == 0x100 and decision.table == "101" and decision.route.dev == "istioout"
    # its UDP is never captured
    mark, _ = _mark_and_table(plan_a, Packet("10.4.4.19", "10.8.0.10", 53, "vethsleep", proto="udp"))
    assert mark == 0x220
    # a pod outside the mesh: no mark; a meshed destination is still routed to the ztunnel (table 100)
    mark, decision = _mark_and_table(plan_a, Packet("10.4.4.25", "10.4.4.19", 80, "vethlegacy"))
    assert mark == 0 and decision.table == "100" and decision.route.dev == "istioin"
    # the ztunnel's own connections: 0x220, never captured again, main table
    mark, decision = _mark_and_table(plan_a, Packet("10.4.4.18", "10.4.3.20", 15008, "veth300a1d80"))
    assert mark == 0x220 and decision.table == "main"
    # the ztunnel speaking for a pod (original_src): 0x210, main table
    mark, decision = _mark_and_table(plan_a, Packet("10.4.4.19", "10.4.3.19", 80, "veth300a1d80"))
    assert mark == 0x210 and decision.table == "main"
    # ... and the reply of that connection, from the other node: back to the ztunnel (table 102)
    mark, decision = _mark_and_table(plan_a, Packet("10.4.3.19", "10.4.4.19", 40000, "eth0", connmark=0x210))
    assert mark == 0x040 and decision.table == "102" and decision.route.gateway == "10.4.4.18"
    # out of a tunnel: already handled
    mark, decision = _mark_and_table(plan_a, Packet("10.4.4.18", "10.4.4.19", 80, "istioin"))
    assert mark == 0x200 and decision.table == "main"


def test_ztunnel_rules(plan_a):
    z = plan_a.ztunnel_side
    hbone = run_chain(z, "mangle", "ztunnel-PREROUTING", Packet("10.4.3.14", "10.4.4.19", 15008, "pistioin"))
    plain = run_chain(z, "mangle", "ztunnel-PREROUTING", Packet("10.4.4.25", "10.4.4.19", 80, "pistioin"))
    out = run_chain(z, "mangle", "ztunnel-PREROUTING", Packet("10.4.4.19", "1.2.3.4", 443, "pistioout"))
    assert (hbone.tproxy_port, plain.tproxy_port, out.tproxy_port) == (15008, 15006, 15001)
    assert route(z, "10.4.4.19", hbone.packet.mark).route.local
    # a reply for a spoofed connection arriving on eth0: marked 0x4d3, delivered locally
    back = run_chain(z, "mangle", "ztunnel-PREROUTING", Packet("10.4.3.19", "10.4.4.19", 40000, "eth0"))
    assert back.packet.mark == 0x4D3 and route(z, "10.4.4.19", back.packet.mark).route.local
    redirect = run_chain(z, "nat", "ztunnel-OUTPUT", Packet("10.4.4.18", "10.4.4.7", 15088, ""))
    assert redirect.redirect_port == 15008


def test_unknown_rule_is_an_error_not_a_guess(plan_a):
    import dataclasses

    from zpilot.cni.desired import IptablesChain

    odd = dataclasses.replace(plan_a.node_side, chains=(IptablesChain("mangle", "ztunnel-PREROUTING",
                                                                      ("-m owner --uid-owner 0 -j RETURN",)),))
    with pytest.raises(UnsupportedRule):
        run_chain(odd, "mangle", "ztunnel-PREROUTING", Packet("10.4.4.19", "10.4.3.20", 80, "vethsleep"))


ZTUNNEL_A_IP = "10.4.4.18"


def _without_hairpin_rule(mesh):
    """``mesh`` with node A's ztunnel side missing the hairpin rule (19999: from 127.0.0.1 fwmark 0x402)."""
    plan = mesh.plans[NODE_A]
    z = plan.ztunnel_side
    without = dataclasses.replace(z, rules=tuple(r for r in z.rules if getattr(r, "src", None) is None))
    assert len(without.rules) == len(z.rules) - 1
    return dataclasses.replace(mesh, plans={**mesh.plans, NODE_A: dataclasses.replace(plan, ztunnel_side=without)})


def test_same_node_hairpin_replies_are_checked(mesh):
    """A same-node tunnel is redirected to the ztunnel's own 15008; its replies (127.0.0.1 -> the
    tunnel's source, mark 0x402) must be delivered locally. The article's pod-IP tunnel comes from
    the pod's own address (original_src): only the plan's hairpin rule delivers its replies, and
    without it explain says why the tunnel cannot be set up (what the world showed as UF,URX before
    7a7573d). The linear layout's tunnels come from ztunnel A's own address, which the kernel's
    ``local`` table (rule 0) delivers to before any rule of the plan: it needs no hairpin rule."""
    [ok] = explain(mesh, "sleep", "10.4.4.7", 9080)
    assert ok.facts["pod"] == "details-v1-6997d94bb9-4jssp"
    text = render([ok])
    [path] = explain(_without_hairpin_rule(mesh), "sleep", "10.4.4.7", 9080)
    if mesh.layout == "article":
        assert "source 10.4.4.19 (original_src: the pod's address)" in text
        assert "from 127.0.0.1 fwmark 0x402/0xfff lookup 100" in text
        assert "pod" not in path.facts
        assert path.outcome.startswith("the tunnel cannot be set up") and "pistioin" in path.outcome
    else:
        assert f"source {ZTUNNEL_A_IP} (the ztunnel's own)" in text
        assert f"(127.0.0.1:15008 -> {ZTUNNEL_A_IP}, mark 0x402): ip rule 0: from all lookup local," \
               f" table local: local {ZTUNNEL_A_IP}/32 dev eth0" in text
        assert path.facts == ok.facts and path.outcome == ok.outcome


def test_the_local_table_comes_before_every_rule(plan_a):
    """Rule 0: the namespace's own addresses (which the caller names) and loopback are delivered
    locally whatever the mark; any other address goes on to the plan's rules."""
    z = plan_a.ztunnel_side
    own = {ZTUNNEL_A_IP: "eth0"}
    mine = route(z, ZTUNNEL_A_IP, 0x402, src="127.0.0.1", own=own)
    assert (mine.table, mine.route.dev, mine.route.local) == ("local", "eth0", True)
    assert route(z, "127.0.0.1", 0, own=own).route.dev == "lo"
    pod = route(z, "10.4.4.19", 0x402, src="127.0.0.1", own=own)
    assert pod.table == "100" and pod.rule.priority == 19999
    assert route(z, ZTUNNEL_A_IP, 0x402, src="127.0.0.1").table != "local"  # not named as its own: not local


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_vip_without_endpoints_passes_through_to_kube_proxy(tmp_path, layout):
    import shutil

    shutil.copytree(ARTICLE, tmp_path / "m")
    (tmp_path / "m" / "unbacked.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: kubernetes, namespace: default}\n"
        "spec: {clusterIP: 10.8.0.1, ports: [{name: https, port: 443, targetPort: 6443}]}\n"
    )
    [path] = explain(load_mesh(str(tmp_path / "m"), layout=layout), "sleep", "kubernetes", 443)
    assert path.facts["filter_chain"] == "PassthroughFilterChain"
    assert path.outcome == "refused by kube-proxy: Service default/kubernetes has no endpoints here"
    assert "kube-proxy: Service default/kubernetes port https: REJECT (no endpoints)" in render([path])
