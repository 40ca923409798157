"""The article's cluster plus every way IPv6 arrives in a dual-stack Kubernetes cluster (issue 11, point 3).

Shared by the translator and CNI regression tests, so both sides are checked against the same input:
node A gains two IPv6-only pods, a dual-stack pod listed IPv4 first and one listed IPv6 first (an
IPv6-primary cluster), and two services (dual-stack and IPv6-only); a dual-stack node lists its IPv6
InternalIP first, and an IPv6-only node has no IPv4 address at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ARTICLE = Path(__file__).resolve().parents[1] / "examples" / "article"
NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"

#: IPv4 addresses of the dual-stack pods: these, and only these, of the added pods join the mesh.
DUAL_STACK_V4 = {"dual-v4-first": "10.4.4.30", "dual-v6-first": "10.4.4.31"}
#: Every IPv6 address below: none of them may appear in any config or plan.
IPV6_ADDRESSES = (
    "fd00:10:4:4::20", "fd00:10:4:4::21", "fd00:10:4:4::30", "fd00:10:4:4::31",
    "fd00:10:8::30", "fd00:10:8::31", "fd00:10:168::5", "fd00:10:168::6",
)


def _pod(name: str, ips: list[str]) -> str:
    pod_ips = "".join(f"\n    - ip: '{ip}'" for ip in ips)
    return f"""- apiVersion: v1
  kind: Pod
  metadata: {{name: {name}, namespace: default, uid: uid-{name}, labels: {{app: dual}}}}
  spec:
    nodeName: {NODE_A}
    serviceAccountName: sleep
    containers: [{{name: c, image: i, ports: [{{containerPort: 8080, name: http}}]}}]
  status:
    phase: Running
    podIP: '{ips[0]}'
    podIPs:{pod_ips}
    conditions: [{{type: Ready, status: 'True'}}]
"""


IPV6_MANIFEST = f"""# `kubectl get pods,services,nodes -o yaml` of a dual-stack cluster, as far as it adds to the article's.
apiVersion: v1
kind: List
items:
{_pod("v6-only-a", ["fd00:10:4:4::20"])}{_pod("v6-only-b", ["fd00:10:4:4::21"])}\
{_pod("dual-v4-first", ["10.4.4.30", "fd00:10:4:4::30"])}{_pod("dual-v6-first", ["fd00:10:4:4::31", "10.4.4.31"])}\
- apiVersion: v1
  kind: Service
  metadata: {{name: dual, namespace: default}}
  spec:
    ipFamilyPolicy: PreferDualStack
    clusterIP: 10.8.9.30
    clusterIPs: [10.8.9.30, 'fd00:10:8::30']
    selector: {{app: dual}}
    ports: [{{name: http, port: 80, targetPort: http}}]
- apiVersion: v1
  kind: Service
  metadata: {{name: v6-only, namespace: default}}
  spec:
    ipFamilies: [IPv6]
    clusterIP: 'fd00:10:8::31'
    clusterIPs: ['fd00:10:8::31']
    selector: {{app: dual}}
    ports: [{{name: http, port: 80, targetPort: http}}]
- apiVersion: v1
  kind: Node
  metadata: {{name: node-dual}}
  spec: {{podCIDRs: ['fd00:10:5::/64', 10.4.5.0/24]}}
  status:
    addresses: [{{type: InternalIP, address: 'fd00:10:168::5'}}, {{type: InternalIP, address: 10.168.15.5}}]
- apiVersion: v1
  kind: Node
  metadata: {{name: node-v6-only}}
  spec: {{podCIDRs: ['fd00:10:6::/64']}}
  status:
    addresses: [{{type: InternalIP, address: 'fd00:10:168::6'}}]
"""


def article_with_ipv6(target: Path) -> Path:
    """A copy of the article's manifests at ``target`` with the dual-stack objects added."""
    shutil.copytree(ARTICLE, target, dirs_exist_ok=True)
    (target / "dual-stack.yaml").write_text(IPV6_MANIFEST)
    return target
