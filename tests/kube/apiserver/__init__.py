"""An in-process Kubernetes API server that speaks the real list/watch protocol, for testing Kubernetes clients.

There is no kube-apiserver on the test machines, and a mocked client would hide exactly the protocol details a
watch source gets wrong (resourceVersions, 410 Gone, bookmarks, selectors). This server is the real thing in
miniature: HTTPS on 127.0.0.1 with a bearer token, the real URL paths, real objects (kubernetes-asyncio's models
deserialize them), and the registry semantics clients rely on. It runs on its own thread and event loop, so an
async client on the test's loop, a sync test and a ``zpilot serve`` subprocess (via the kubeconfig) all reach it.

Start one
---------
Use the pytest fixture ``apiserver`` (every test has it: ``tests/conftest.py`` loads
``tests.kube.apiserver.fixtures`` as a plugin), or::

    with ApiServer(tmp_path / "api", tls=True, bootstrap=True, controllers=True) as server: ...

``server.url`` (https://127.0.0.1:<free port>), ``server.kubeconfig_path`` (admin token, CA inline; give it to a
subprocess as ``KUBECONFIG`` or ``--kubeconfig``), ``server.ca_path``. ``server.write_kubeconfig(path, token=t)``
writes one for another token; ``server.write_in_cluster_files(dir)`` writes a service-account mount (token,
ca.crt, namespace) and returns the ``KUBERNETES_SERVICE_HOST``/``PORT`` environment for in-cluster config.
``tls=False`` serves plain http (kubernetes-asyncio accepts an http:// server in a kubeconfig; in-cluster config
needs TLS). ``stop()`` ends every watch cleanly and closes the port (clients then get "connection refused");
``start()`` again serves the same state on the same port.

``bootstrap`` creates what every cluster has: namespaces default, kube-system, kube-public, kube-node-lease
(with ``controllers``, each gets its ``default`` ServiceAccount), and Service ``default/kubernetes`` (the first IP of ``service_cidr``,
default 10.8.0.0/20, so 10.8.0.1:443, no selector) with an EndpointSlice pointing at ``api_address`` (default
172.16.0.2). ``controllers`` runs, synchronously inside each write, the ServiceAccount controller and the
EndpointSlice controller: every Service with a selector gets slices (a placeholder with no endpoints when no
pod matches; one slice per distinct resolved port set; ready/serving/terminating as the real controller sets
them; zones from the node's ``topology.kubernetes.io/zone``); selector-less Services keep the slices you write.
``seed_article(server)`` loads examples/article (manifest uids kept); ``seed(server, dir)`` any manifest dir.

Change the cluster from Python (thread-safe, effective at once, no auth, no faults)
------------------------------------------------------------------------------------
``create(obj)`` (409 AlreadyExists), ``update(obj)`` (whole object, status included; a stale
``metadata.resourceVersion`` is a 409 Conflict; an unchanged object is not a write), ``apply(obj)``,
``patch(resource, name, merge_patch, namespace)``, ``delete(resource, name, namespace)`` (immediate; a Namespace
takes its objects, a CRD its custom objects), ``terminate(resource, name, namespace)`` (sets deletionTimestamp,
as a graceful pod delete does, until you ``delete``), ``get``, ``list(resource, namespace, label_selector=,
field_selector=)``. ``resource`` is a kind, plural, ``plural.group`` or short name (``"Pod"``, ``"pods"``,
``"po"``). Failures raise :class:`ApiError` (``.code``, ``.reason``). Build objects with
``tests.kube.apiserver.objects``: ``make_pod`` (``node=`` a Node object fills hostIP; ``host_network=True``;
``ready=False``; ``phase="Pending"``), ``make_service`` (no ``cluster_ip``: one is allocated), ``make_node``
(``zone=``, ``region=``), ``make_namespace``, ``make_service_account``, ``make_endpoint_slice`` + ``endpoint``,
``make_secret``, ``container``, ``service_port``, ``replica_pod_name``, ``istio_security_crds``,
``make_authorization_policy``, ``make_peer_authentication``.

What HTTP clients see (the real server's behaviour)
---------------------------------------------------
- Resources: core/v1 pods, services, serviceaccounts, namespaces, nodes, secrets, configmaps;
  apps/v1 daemonsets (stored as written: no controller makes their pods); discovery.k8s.io/v1 endpointslices; authentication.k8s.io/v1 tokenreviews (create only);
  apiextensions.k8s.io/v1 customresourcedefinitions; and any CRD's resources while the CRD exists
  (``install_istio_crds()`` serves security.istio.io v1 and v1beta1 authorizationpolicies and peerauthentications;
  before it, and after ``remove_crd(name)``, the group/version is 404 and absent from /apis; removing it deletes
  its objects and ends their watches). Namespaced and all-namespaces paths; /api, /apis, /apis/<g>, /apis/<g>/<v>,
  /version, /healthz.
- Verbs: get, list, watch, create (201; 404 if the namespace does not exist; the server assigns uid,
  creationTimestamp, defaults such as a Service's targetPort/protocol/clusterIP and a Pod's serviceAccountName),
  update (409 on a stale resourceVersion; pods, services, nodes, namespaces, CRDs keep their status on a main
  PUT: use the ``/status`` subresource), patch (merge, JSON patch; strategic merge is treated as a merge patch, so
  lists are replaced whole), delete (immediate; preconditions honoured). No deletecollection, no dryRun, no apply.
- resourceVersion: one global counter (decimal string), bumped by every write. LIST returns it in
  ``metadata.resourceVersion``; ``resourceVersionMatch=Exact`` rebuilds an older state; ``limit``/``continue``
  page one snapshot; a version from the future is 504 (for a watch too). Built-in list items carry no kind/apiVersion (as real).
- WATCH (``watch=1`` on a collection): from ``resourceVersion`` N, every change after N as newline-delimited
  JSON (ADDED, MODIFIED, DELETED; the DELETED object carries the deletion's resourceVersion); without a version
  (or "0"), first an ADDED per existing object. A change that moves an object into or out of the selectors is
  ADDED or DELETED. ``allowWatchBookmarks=true``: a BOOKMARK every ``server.bookmark_interval`` seconds (default
  1.0) and on ``server.send_bookmarks()``. ``timeoutSeconds`` ends the stream cleanly. ``sendInitialEvents=true``
  ends the initial ADDEDs with a bookmark annotated ``k8s.io/initial-events-end``. A version older than the last
  ``server.compact()`` is refused with 410 Expired: ``server.expired_watch_as = "event"`` (default: HTTP 200
  then an ERROR event holding the Status, as the watch cache does) or ``"http"`` (an HTTP 410 Status).
- Selectors: labelSelector ``=``, ``==``, ``!=``, ``in``, ``notin``, ``k``, ``!k``; fieldSelector
  ``metadata.name``, ``metadata.namespace`` and per type (pods: ``spec.nodeName``, ``spec.hostNetwork``,
  ``status.phase``, ...); others are 400.
- Auth: ``Authorization: Bearer`` required (401 without or with an unknown token; /version and /healthz are
  open to anonymous). ``server.admin_token`` may do anything; ``server.add_token(allow={("list", "pods"),
  ("watch", "endpointslices.discovery.k8s.io")}, user=...)`` returns a token limited to those (verb, resource)
  pairs (``"*"`` matches any; ``pods/status`` for a subresource); anything else is 403 with RBAC's message.
  Without that header, a client certificate: ``server.issue_client_certificate(user, allow=...)`` returns a
  certificate and key (PEM) of the server's client CA that the server takes as ``user`` (its CN), as
  kube-apiserver's ``--client-ca-file`` does; ``server.auth.remove_certificate_user(user)`` refuses them again.
- TokenReview: ``server.issue_token(ns, service_account, pod=name_or_obj, audiences=[...], expires_in=s)`` mints
  a signed JWT like a projected token. A review authenticates it only if the signature is good, it has not
  expired, its audiences meet the requested ones (default: the API server's), and the ServiceAccount and bound
  Pod still exist with the same uids; the user carries the ``authentication.kubernetes.io/pod-name``,
  ``pod-uid``, ``node-name``, ``node-uid`` and ``credential-id`` extras.

Faults and observation
----------------------
``server.inject(status=500)``, ``inject(status=429, retry_after=2)``, ``inject(delay=3.0)`` (slow, then served),
``inject(reset=True)`` (connection closed without a response; recent aiohttp retries an idempotent request
once after that, so use ``times=2`` or a create to see it fail), ``inject(drop_after_events=2)`` (a watch cut after 2 events); each with ``times=N``,
``verb=`` ("list", "watch", "get", "create", "update", "patch", "delete", "discovery") and ``resource=``.
``server.drop_watches(resource)`` cuts open watches mid-stream (the client reads a truncated chunked body:
``aiohttp.ClientPayloadError``); ``end_watches`` ends them cleanly. ``server.watchers(resource)`` and
``await server.wait_for_watchers(resource, count)`` tell how many watches are open (a kubernetes-asyncio
``Watch.stream`` only connects when iterated). ``server.requests`` records every request (verb, resource,
namespace, query, user, status, monotonic time: e.g. to check a ``spec.nodeName`` field selector or the spacing
of retries); status 0 means the connection was reset or abandoned.

Example
-------
::

    from kubernetes_asyncio import client, watch
    from tests.kube.apiserver import seed_article
    from tests.kube.apiserver.fixtures import api_client
    from tests.kube.apiserver.objects import make_pod

    async def test_sees_a_new_pod(apiserver):
        seed_article(apiserver)
        async with api_client(apiserver) as api:  # kubeconfig -> kubernetes-asyncio ApiClient
            v1 = client.CoreV1Api(api)
            listed = await v1.list_pod_for_all_namespaces()
            apiserver.create(make_pod("web-1", ip="10.4.4.30", node="gke-jimmy-cluster-default-pool-d5041909-d10i",
                                      labels={"app": "web"}))
            async with watch.Watch() as w:
                async for event in w.stream(v1.list_pod_for_all_namespaces, allow_watch_bookmarks=True,
                                            resource_version=listed.metadata.resource_version, timeout_seconds=5):
                    assert (event["type"], event["object"].metadata.name) == ("ADDED", "web-1")
                    break
            apiserver.compact()  # a watch from listed.metadata.resource_version is now refused: 410 Expired
"""

from .article import ARTICLE, seed, seed_article
from .errors import ApiError
from .faults import Fault
from .handlers import RequestRecord
from .server import ApiServer

__all__ = ["ARTICLE", "ApiError", "ApiServer", "Fault", "RequestRecord", "seed", "seed_article"]
