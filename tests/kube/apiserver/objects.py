"""Builders for realistic objects: what ``kubectl get -o json`` would show, complete enough for the
kubernetes-asyncio models (which reject, for example, a Pod without containers or an EndpointSlice without
an addressType).

Identity (uid, creationTimestamp, resourceVersion) is the server's to assign; pass ``uid=`` only to pin one.
Every builder returns a plain dict, ready for ``ApiServer.create``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import uuid
from typing import Any, Iterable, Mapping, Sequence

Obj = dict[str, Any]
TIME = "2024-05-01T10:00:00Z"


def _meta(name: str, namespace: str | None = None, labels: Mapping[str, str] | None = None,
          annotations: Mapping[str, str] | None = None, uid: str | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    if uid:
        meta["uid"] = uid
    return meta


def stable_uid(*parts: str) -> str:
    """A uid derived from names, for tests that want the same uid on every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def replica_pod_name(workload: str, index: int) -> str:
    """A name shaped like a ReplicaSet's pods: ``<workload>-<template hash>-<5 chars>``."""
    digest = hashlib.sha256(f"{workload}/{index}".encode()).hexdigest()
    template = hashlib.sha256(workload.encode()).hexdigest()[:10]
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return f"{workload}-{template}-{''.join(alphabet[int(digest[i:i + 2], 16) % len(alphabet)] for i in range(0, 10, 2))}"


def make_namespace(name: str, labels: Mapping[str, str] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, labels=labels),
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def make_service_account(name: str, namespace: str = "default") -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace)}


def make_node(name: str, internal_ip: str, pod_cidrs: Sequence[str] | str = (), *, zone: str | None = None,
              region: str | None = None, ready: bool = True, labels: Mapping[str, str] | None = None,
              uid: str | None = None) -> Obj:
    cidrs = [pod_cidrs] if isinstance(pod_cidrs, str) else list(pod_cidrs)
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  **({"topology.kubernetes.io/zone": zone} if zone else {}),
                  **({"topology.kubernetes.io/region": region} if region else {}), **(labels or {})}
    spec: Obj = {}
    if cidrs:
        spec = {"podCIDR": cidrs[0], "podCIDRs": cidrs}
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": _meta(name, labels=all_labels, uid=uid), "spec": spec,
        "status": {
            "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "reason": "KubeletReady" if ready else "KubeletNotReady",
                            "lastHeartbeatTime": TIME, "lastTransitionTime": TIME}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        },
    }


def container(name: str, image: str = "registry.k8s.io/pause:3.9",
              ports: Iterable[int | tuple[int, str] | Mapping[str, Any]] = ()) -> Obj:
    """A container; ports as numbers, (number, name) pairs, or full ContainerPort dicts."""
    out: list[Obj] = []
    for p in ports:
        if isinstance(p, int):
            out.append({"containerPort": p, "protocol": "TCP"})
        elif isinstance(p, tuple):
            out.append({"containerPort": p[0], "name": p[1], "protocol": "TCP"})
        else:
            out.append(dict(p))
    c: Obj = {"name": name, "image": image}
    if out:
        c["ports"] = out
    return c


def make_pod(name: str, namespace: str = "default", *, ip: str | None = None, node: str | Obj | None = None,
             host_ip: str | None = None, labels: Mapping[str, str] | None = None,
             annotations: Mapping[str, str] | None = None, service_account: str = "default",
             containers: Sequence[Obj] | None = None, ports: Iterable[int | tuple[int, str] | Mapping[str, Any]] = (),
             ready: bool = True, phase: str = "Running", host_network: bool = False, uid: str | None = None) -> Obj:
    """A scheduled, running Pod (``ip=None, phase="Pending"`` for one not started yet).

    ``node`` is a node name or a Node object; given an object, ``status.hostIP`` is its InternalIP (as the
    kubelet reports it). A hostNetwork pod's IP is its node's: ``ip`` defaults to the host IP then.
    """
    node_name = node if isinstance(node, str) or node is None else node["metadata"]["name"]
    if isinstance(node, Mapping) and host_ip is None:
        host_ip = next((a["address"] for a in node.get("status", {}).get("addresses", ())
                        if a.get("type") == "InternalIP"), None)
    if host_network:
        ip = ip or host_ip
        host_ip = host_ip or ip
    spec: Obj = {"containers": list(containers) if containers else [container(name.split("-")[0] or "app", ports=ports)],
                 "serviceAccountName": service_account}
    if node_name:
        spec["nodeName"] = node_name
    if host_network:
        spec["hostNetwork"] = True
    status: Obj = {"phase": phase}
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    if phase == "Running":
        status["startTime"] = TIME
        condition = "True" if ready else "False"
        status["conditions"] = [
            {"type": "Initialized", "status": "True", "lastTransitionTime": TIME},
            {"type": "Ready", "status": condition, "lastTransitionTime": TIME},
            {"type": "ContainersReady", "status": condition, "lastTransitionTime": TIME},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": TIME},
        ]
        status["containerStatuses"] = [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready, "restartCount": 0,
             "started": True, "state": {"running": {"startedAt": TIME}}} for c in spec["containers"]]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(name, namespace, labels, annotations, uid),
            "spec": spec, "status": status}


def service_port(port: int, target_port: int | str | None = None, name: str = "", protocol: str = "TCP",
                 app_protocol: str | None = None) -> Obj:
    p: Obj = {"port": port, "targetPort": port if target_port is None else target_port, "protocol": protocol}
    if name:
        p["name"] = name
    if app_protocol:
        p["appProtocol"] = app_protocol
    return p


def make_service(name: str, namespace: str = "default", *, selector: Mapping[str, str] | None = None,
                 ports: Sequence[Obj | int] = (), cluster_ip: str | None = None, labels: Mapping[str, str] | None = None,
                 headless: bool = False, publish_not_ready: bool = False, internal_traffic_policy: str | None = None,
                 type: str = "ClusterIP", external_name: str | None = None) -> Obj:
    """A Service; without ``cluster_ip`` the server allocates one, as a real one does."""
    spec: Obj = {"type": type,
                 "ports": [service_port(p) if isinstance(p, int) else dict(p) for p in ports]}
    if selector is not None:
        spec["selector"] = dict(selector)
    if headless:
        spec["clusterIP"] = "None"
    elif cluster_ip:
        spec["clusterIP"] = cluster_ip
        spec["clusterIPs"] = [cluster_ip]
    if publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    if internal_traffic_policy:
        spec["internalTrafficPolicy"] = internal_traffic_policy
    if external_name:
        spec["externalName"] = external_name
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace, labels), "spec": spec}


def endpoint(address: str, *, ready: bool = True, serving: bool | None = None, terminating: bool = False,
             node: str | None = None, zone: str | None = None, pod: Obj | None = None) -> Obj:
    """One EndpointSlice endpoint; ``pod`` fills the targetRef from a Pod object."""
    ep: Obj = {"addresses": [address],
               "conditions": {"ready": ready, "serving": ready if serving is None else serving, "terminating": terminating}}
    if node:
        ep["nodeName"] = node
    if zone:
        ep["zone"] = zone
    if pod is not None:
        meta = pod["metadata"]
        ep["targetRef"] = {"kind": "Pod", "namespace": meta.get("namespace", "default"), "name": meta["name"],
                           **({"uid": meta["uid"]} if meta.get("uid") else {})}
    return ep


def make_endpoint_slice(name: str, service: str, namespace: str = "default", *, endpoints: Sequence[Obj] = (),
                        ports: Sequence[Obj] = (), address_type: str | None = None,
                        managed_by: str | None = "tests.kube.apiserver") -> Obj:
    """A slice for a Service (as a selector-less Service's owner writes one).

    ``ports`` as EndpointPort dicts (``{"name": "https", "port": 6443, "protocol": "TCP"}``).
    """
    labels = {"kubernetes.io/service-name": service,
              **({"endpointslice.kubernetes.io/managed-by": managed_by} if managed_by else {})}
    if address_type is None:
        first = endpoints[0]["addresses"][0] if endpoints else "0.0.0.0"
        address_type = "IPv6" if ipaddress.ip_address(first).version == 6 else "IPv4"
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": _meta(name, namespace, labels),
        "addressType": address_type, "endpoints": [dict(e) for e in endpoints], "ports": [dict(p) for p in ports],
    }


def make_secret(name: str, namespace: str = "default", *, data: Mapping[str, bytes] | None = None,
                string_data: Mapping[str, str] | None = None, type: str = "Opaque",
                labels: Mapping[str, str] | None = None) -> Obj:
    secret: Obj = {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, namespace, labels), "type": type}
    if data:
        secret["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
    if string_data:
        secret["stringData"] = dict(string_data)
    return secret


# -- Istio's security CRDs -------------------------------------------------------------------------------------

def _istio_crd(kind: str, plural: str, short: list[str]) -> Obj:
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    versions = [
        {"name": v, "served": True, "storage": v == "v1", "schema": schema, "subresources": {"status": {}}}
        for v in ("v1", "v1beta1")
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.security.istio.io",
                     "labels": {"app": "istio-pilot", "istio": "security", "chart": "istio"}},
        "spec": {"group": "security.istio.io", "scope": "Namespaced", "versions": versions,
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List",
                           "shortNames": short, "categories": ["istio-io", "security-istio-io"]}},
    }


def istio_security_crds() -> list[Obj]:
    """The CustomResourceDefinitions of ``security.istio.io`` that zpilot reads (served as v1 and v1beta1)."""
    return [_istio_crd("AuthorizationPolicy", "authorizationpolicies", ["ap"]),
            _istio_crd("PeerAuthentication", "peerauthentications", ["pa"])]


def make_authorization_policy(name: str, namespace: str = "default", *, spec: Mapping[str, Any] | None = None,
                              version: str = "v1") -> Obj:
    return {"apiVersion": f"security.istio.io/{version}", "kind": "AuthorizationPolicy",
            "metadata": _meta(name, namespace), "spec": dict(spec or {})}


def make_peer_authentication(name: str, namespace: str = "default", *, mode: str = "STRICT",
                             version: str = "v1") -> Obj:
    return {"apiVersion": f"security.istio.io/{version}", "kind": "PeerAuthentication",
            "metadata": _meta(name, namespace), "spec": {"mtls": {"mode": mode}}}
