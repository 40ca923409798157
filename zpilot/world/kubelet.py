"""The kubelet's part in a world: each ztunnel pod's readiness probe, reported in the manifests.

In a cluster the kubelet probes the ztunnel container and the Pod's ``Ready`` condition carries the
result to the API server; the CNI node agent reads it there (``MeshIndex.ztunnel_on``: the newest
*ready* ztunnel pod of the node) and, while there is none, stops redirecting the node's meshed pods
(fail-open) or drops their TCP (fail-closed). That is how the agent learns that a ztunnel died. A
world has no kubelet: without this, a killed ztunnel Envoy would stay ready in the model and the
agent would keep sending pods' connections to a namespace where nothing listens.

:class:`ReadinessProber` probes like a kubelet (``periodSeconds``, ``timeoutSeconds``,
``failureThreshold``, ``successThreshold``, scaled down to a test's pace) the ztunnel's admin
``/ready`` (LIVE once every listener has its config), and writes the condition into the manifests
only when it changes, through the world's one writer (``World.update_spec``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from .topology import WorldSpec
from .ztunnel import Ztunnel

log = logging.getLogger("zpilot.world")


@dataclass(frozen=True)
class ProbeSettings:
    period: float = 0.25  # seconds between probes (the kubelet's default is 10 s)
    timeout: float = 1.0  # the kubelet's default timeoutSeconds
    failure_threshold: int = 2  # consecutive failures before NotReady (default 3)
    success_threshold: int = 1  # consecutive successes before Ready again (default 1)


@dataclass(frozen=True)
class Transition:
    """One change of a ztunnel pod's Ready condition, as written into the manifests."""

    at: float  # time.monotonic()
    node: str  # node key
    ready: bool


class ProbedWorld(Protocol):
    """What the prober needs of a world (``builder.World``)."""

    spec: WorldSpec
    ztunnels: dict[str, Ztunnel]

    def update_spec(self, change: Callable[[WorldSpec], WorldSpec]) -> WorldSpec: ...


class ReadinessProber:
    """A thread probing every node's ztunnel and reporting its readiness in the world's manifests."""

    def __init__(self, world: ProbedWorld, settings: ProbeSettings) -> None:
        self.world = world
        self.settings = settings
        self.transitions: list[Transition] = []
        self._streaks: dict[str, int] = {}  # node key -> consecutive results against the reported state
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="world-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No probing meanwhile: a test that sets a ztunnel's readiness itself keeps what it set."""
        self._paused.set()
        try:
            yield
        finally:
            self._streaks.clear()
            self._paused.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.period):
            if self._paused.is_set():
                continue
            for node in self.world.spec.nodes:
                try:
                    self._probe(node.key)
                except Exception:  # a probe error must not end the kubelet (a world error surfaces elsewhere)
                    log.exception("readiness probe of node %s's ztunnel failed unexpectedly", node.key)

    def _probe(self, node_key: str) -> None:
        ztunnel = self.world.ztunnels.get(node_key)
        if ztunnel is None:
            return
        try:
            live = ztunnel.process.alive() and ztunnel.ready(timeout=self.settings.timeout)
        except Exception:  # refused, reset, timed out: the probe failed
            live = False
        reported = self.world.spec.ztunnel_on(node_key).ready
        if live == reported:
            self._streaks[node_key] = 0
            return
        streak = self._streaks.get(node_key, 0) + 1
        self._streaks[node_key] = streak
        if streak < (self.settings.success_threshold if live else self.settings.failure_threshold):
            return
        self._streaks[node_key] = 0
        pod = self.world.spec.ztunnel_on(node_key)
        self.world.update_spec(lambda spec: spec.with_pod_ready(pod.name, live))
        self.transitions.append(Transition(time.monotonic(), node_key, live))
        log.info("kubelet: ztunnel pod %s/%s on node %s is %s", pod.namespace, pod.name, node_key,
                 "Ready" if live else "NotReady")

    def first_after(self, after: float, node_key: str, ready: bool) -> Transition | None:
        """The first transition of ``node_key`` to ``ready`` after ``after`` (monotonic), if any."""
        for transition in self.transitions:
            if transition.node == node_key and transition.ready == ready and transition.at > after:
                return transition
        return None
