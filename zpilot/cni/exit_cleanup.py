"""Whether the CNI agent removes the node's rules as it stops: at an uninstall, not at a restart or rollout.

The rules, sets, routes and devices the agent made are what keeps the node's meshed pods meshed; the
kernel keeps them without the agent, and a new agent reads the kernel afresh and converges on its first
reconcile (nothing lost or duplicated). So an agent that stops for a rollout, a ``kubectl delete pod`` or a
crash-restart must leave them, or the node's meshed pods talk plaintext with no policy until its successor
runs. An agent that stops because the chart is uninstalled must remove them, or they outlive it
(istio/istio#43601: the 2022 agent left its rules and broke the node's pods).

SIGTERM alone does not tell the two apart; the API server does. With ``--cleanup-on-exit=uninstall`` the
agent asks, as it stops, for its own pod (its name and namespace from the downward API) and the DaemonSet
that controls it (the pod's ``ownerReferences``):

===========================================================  ==========  ======================================
what the API server answers                                  rules       why
===========================================================  ==========  ======================================
the DaemonSet, same uid, no ``deletionTimestamp``            kept        a rollout or restart: an agent follows
the DaemonSet gone (404), replaced (another uid), or         removed     uninstalled (``helm uninstall``;
being deleted (``deletionTimestamp``: foreground cascade)                ``--cascade=foreground``)
401 or 403 to the agent's own requests                       removed     ``helm uninstall`` deletes the agent's
                                                                         ServiceAccount and RBAC right after
                                                                         its DaemonSet, before the kubelet stops
                                                                         the pod: refused credentials are the
                                                                         uninstall's usual trace
the pod not controlled by a DaemonSet                        removed if  nothing will start another agent in
                                                             the pod is  its place
                                                             deleted
no answer: unreachable, timed out, 5xx, the pod itself 404   kept        see below
===========================================================  ==========  ======================================

No answer within :data:`DECISION_SECONDS` keeps the rules and says so at ERROR level, with the command that
removes them. An uninstall is made through the API server, which has just told the kubelet to stop this pod,
and it usually withdraws the agent's credentials (the 401/403 row): an agent that cannot reach the API at
all is far likelier to be restarting on a node cut off from it, where removing the rules would unmesh every
meshed pod of the node, silently, on a guess. Rules left behind are visible (``zpilot cni status``) and
removed by ``zpilot cni cleanup``; a next agent on the node converges them. (Istio's later agent asks the
same question, its DaemonSet's presence and ``deletionTimestamp``, but removes its plugin on any error.)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from ..kube.api_calls import ApiCalls, ApiFailure, Timeouts
from ..kube.credentials import Credentials
from ..kube.object_names import DNS_LABEL, DNS_SUBDOMAIN
from ..kube.source import SourceError
from ..model.problems import clip
from .errors import CniError

log = logging.getLogger("zpilot.cni")

#: The longest the agent waits for the API server's answer as it stops (both GETs, the connection
#: included). The chart's terminationGracePeriodSeconds covers it, and the cleanup after it.
DECISION_SECONDS = 5.0

#: (verb, API group, resource) of every request the decision makes, in the agent's own namespace: RBAC
#: checks the chart's Role against this (tests/helm/test_rbac.py).
PERMISSIONS: tuple[tuple[str, str, str], ...] = (("get", "", "pods"), ("get", "apps", "daemonsets"))


@dataclass(frozen=True)
class PodRef:
    """The agent's own pod."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, namespace: str, name: str) -> PodRef:
        """Checked as the API server checks them (a namespace is a DNS label, a pod name a DNS subdomain)."""
        if not DNS_LABEL.match(namespace):
            raise CniError(f"pod namespace {clip(namespace, 80)!r} is not a Kubernetes namespace name")
        if not DNS_SUBDOMAIN.match(name):
            raise CniError(f"pod name {clip(name, 80)!r} is not a Kubernetes pod name")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ExitDecision:
    cleanup: bool
    reason: str
    #: False when the API server gave no answer to decide on (the rules are then kept).
    answered: bool = True


def _controller(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the DaemonSet that controls ``pod``, None when no DaemonSet does."""
    for ref in pod["metadata"].get("ownerReferences") or ():
        if (isinstance(ref, dict) and ref.get("controller") is True and ref.get("kind") == "DaemonSet"
                and str(ref.get("apiVersion", "")).startswith("apps/")
                and isinstance(ref.get("name"), str) and DNS_SUBDOMAIN.match(ref["name"])
                and isinstance(ref.get("uid"), str)):
            return ref["name"], ref["uid"]
    return None


def _refused(failure: ApiFailure, what: str) -> ExitDecision:
    if failure.status in (401, 403):
        return ExitDecision(True, f"the API server refuses the agent's credentials for {what} ({failure}): its"
                                  " ServiceAccount or RBAC is gone, as `helm uninstall` leaves it")
    return ExitDecision(False, f"{what}: {failure}", answered=False)


async def _ask(calls: ApiCalls, pod: PodRef, seconds: float) -> ExitDecision:
    try:
        own = await calls.get_object(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}", seconds=seconds)
    except ApiFailure as exc:
        return _refused(exc, f"its pod {pod}")
    controller = _controller(own)
    if controller is None:
        deleted = own["metadata"].get("deletionTimestamp") is not None
        return ExitDecision(deleted, f"pod {pod} has no DaemonSet to start another agent, and is "
                                     + ("being deleted" if deleted else "not being deleted (a container restart)"))
    name, uid = controller
    where = f"DaemonSet {pod.namespace}/{clip(name, 253)}"
    try:
        daemonset = await calls.get_object(f"/apis/apps/v1/namespaces/{pod.namespace}/daemonsets/{name}",
                                           seconds=seconds)
    except ApiFailure as exc:
        if exc.status == 404:
            return ExitDecision(True, f"{where} is gone: uninstalled")
        return _refused(exc, where)
    meta = daemonset["metadata"]
    if meta.get("uid") != uid:
        return ExitDecision(True, f"{where} is another one than this pod's (uid {clip(str(meta.get('uid')), 64)}, not"
                                  f" {clip(uid, 64)}): this pod's was deleted")
    if meta.get("deletionTimestamp") is not None:
        return ExitDecision(True, f"{where} is being deleted (deletionTimestamp {clip(str(meta['deletionTimestamp']), 64)})")
    return ExitDecision(False, f"{where} is still there: a restart or rollout, and the next agent converges")


async def decide(credentials: Credentials, pod: PodRef, *, seconds: float = DECISION_SECONDS) -> ExitDecision:
    """Whether to remove the node's rules now that the agent stops (see the table above), within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            async with await credentials.client() as api:
                return await _ask(ApiCalls(api, Timeouts(connect=seconds, list=seconds)), pod, seconds)
    except TimeoutError:
        return ExitDecision(False, f"no answer from the API server within {seconds:g} s", answered=False)
    except SourceError as exc:  # the credentials could not be loaded again (an exec plugin that fails now)
        return ExitDecision(False, f"no credentials: {exc}", answered=False)


def log_decision(decision: ExitDecision) -> None:
    if decision.cleanup:
        log.warning("stopping: removing the node's rules: %s", decision.reason)
    elif decision.answered:
        log.warning("stopping: rules stay in place: %s", decision.reason)
    else:
        log.error("stopping: CANNOT TELL an uninstall from a restart (%s): the rules stay in place, so a restart"
                  " does not unmesh the node's pods; if the agent was uninstalled, remove them on the node with"
                  " `zpilot cni cleanup`", decision.reason)
