"""Building a world and tearing it down: ``with World() as world: ...``.

The order follows a real cluster's: the nodes and their pod network first (veths, routes,
kube-proxy's portals), then the pods' servers, the control plane (``zpilot serve``, ADS over
mutual TLS on a Unix socket), each node's ztunnel Envoy (bootstrapped by ``zpilot bootstrap``
with the node's client certificate from the world's CA) and finally the CNI node agent's rules
(``zpilot cni apply``), which start redirecting the meshed pods' traffic.

Teardown runs on every exit from the ``with`` block, exceptions and Ctrl-C included (SIGTERM is
turned into the same path): processes first, then every namespace, which takes the rules,
routes, ipsets and devices inside it along, then the world's directory with the CA's keys. What
a SIGKILLed builder leaves is swept by the next world (:func:`sweep_abandoned_worlds`).

The parts live next door: ``network`` wires the namespaces, ``workdir`` owns the directory,
``cni_node`` and ``serve_api`` are how the world drives the node agent and reads the control
plane, ``processes`` starts and stops the children.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .. import contract
from ..envoy_binary import envoy_path, next_base_id
from . import serve_api, workdir
from .client import PodClient
from .cni_node import NodeCni
from .errors import WorldError
from .kubelet import ProbeSettings, ReadinessProber
from .netns import Namespaces, NetnsSockets, list_netns, new_world_prefix
from .netns import sweep_abandoned as sweep_abandoned_namespaces
from .network import CONTROL_PLANE_ROLE, build_network, node_role
from .prerequisites import missing_prerequisites
from .processes import Child, Supervisor, python_module, raise_open_files_limit, zpilot_cli
from .topology import NodeSpec, PodSpec, WorldSpec, article_world
from .ztunnel import Ztunnel

log = logging.getLogger("zpilot.world")

def sweep_abandoned_worlds() -> list[str]:
    """Remove what worlds of processes that are gone left behind (a SIGKILLed run): their
    namespaces (and whatever still ran inside) and their directories (CA keys included)."""
    removed = sweep_abandoned_namespaces()
    removed += [str(path) for path in workdir.sweep_abandoned()]
    return removed


@dataclass
class WorldOptions:
    envoy_concurrency: int = 1
    envoy_log_level: str = "warning"
    #: Where logs, manifests, sockets and the CA go; default a fresh private temporary directory,
    #: removed on close (or swept by the next world if this one is killed).
    workdir: Path | None = None
    #: Keep the directory's logs and manifests after close (its private keys are removed all the same).
    keep_workdir: bool = False
    #: Debounce of ``zpilot serve``'s manifest watch.
    debounce_quiet: float = 0.1
    ready_timeout: float = 60.0
    #: Run the CNI node agent (``zpilot cni run``) inside each node namespace, as a DaemonSet pod
    #: with hostNetwork would; False: apply the rules once per change with ``zpilot cni apply``.
    cni_agent: bool = True
    cni_poll: float = 0.2
    #: Bootstrap the ztunnels for incremental (delta) ADS instead of state of the world.
    delta_xds: bool = False
    #: No control plane: each ztunnel runs the static bootstrap of ``zpilot render --static``
    #: (config and secrets inline, one CA for both nodes). The model cannot change afterwards.
    static_config: bool = False
    #: Workload certificate lifetime given to ``zpilot serve --cert-lifetime`` (seconds); None: its default.
    cert_lifetime: float | None = None
    #: The ztunnels' outbound layout (``zpilot serve --layout``, or ``render --static --layout``).
    layout: str = contract.DEFAULT_LAYOUT
    #: Emulate the kubelet's readiness probe of each ztunnel pod (kubelet.py): a ztunnel whose Envoy
    #: dies turns NotReady in the manifests, and the CNI agents fail open or closed. None: no probes
    #: (the ztunnels stay Ready whatever happens to their Envoys).
    kubelet: ProbeSettings | None = None
    #: Run the CNI agents at debug level: each command they run is logged first, so a test can
    #: follow a reconcile step by step (``cni_node.commands_logged``).
    cni_log_commands: bool = False


@dataclass
class World:
    spec: WorldSpec = field(default_factory=article_world)
    options: WorldOptions = field(default_factory=WorldOptions)

    def __post_init__(self) -> None:
        self.prefix = new_world_prefix()
        self.namespaces = Namespaces(self.prefix)
        self.sockets = NetnsSockets()
        self.client = PodClient(self.sockets)
        self.dir: Path | None = None
        self.supervisor: Supervisor | None = None
        self.ztunnels: dict[str, Ztunnel] = {}
        self.server: Child | None = None
        self.cni_agents: dict[str, Child] = {}
        self.kubelet: ReadinessProber | None = None
        #: Nodes whose CNI agent runs with --fail-closed (start_cni_agent switches it).
        self._fail_closed: dict[str, bool] = {}
        #: One writer of the spec and the manifests at a time (tests and the kubelet's thread).
        self._spec_lock = threading.RLock()
        self._old_sigterm: Any = None
        self._closed = False
        #: Files in the directory holding private keys besides the CA's (static bootstraps).
        self._secret_files: list[Path] = []

    # -- names ---------------------------------------------------------------------------------

    def node_ns(self, node: NodeSpec | str) -> str:
        return self.namespaces.name(node_role(node))

    def pod_ns(self, pod: PodSpec | str) -> str:
        spec = self.spec.pod(pod) if isinstance(pod, str) else pod
        return self.namespaces.name(spec.key)

    @property
    def cp_ns(self) -> str:
        return self.namespaces.name(CONTROL_PLANE_ROLE)

    @property
    def manifests(self) -> Path:
        assert self.dir is not None
        return self.dir / "manifests"

    @property
    def xds_socket(self) -> Path:
        assert self.dir is not None
        return self.dir / "xds.sock"

    @property
    def ca_dir(self) -> Path:
        assert self.dir is not None
        return self.dir / workdir.CA_DIR

    @property
    def credentials_dir(self) -> Path:
        """Every node's ADS credential (``zpilot bootstrap --credential-dir``), one directory per node."""
        assert self.dir is not None
        return self.dir / workdir.CREDENTIALS_DIR

    def credential_dir(self, node_key: str) -> Path:
        return self.credentials_dir / node_key

    @property
    def key_stores(self) -> list[Path]:
        """What in the directory holds private keys: the CA, the nodes' credentials, static bootstraps."""
        return [self.ca_dir, self.credentials_dir, *self._secret_files]

    @property
    def keeps_dir(self) -> bool:
        """Whether the directory outlives the world (its private keys never do)."""
        return self.options.keep_workdir or self.options.workdir is not None

    @property
    def debug_socket(self) -> Path:
        assert self.dir is not None
        return self.dir / "debug.sock"

    @property
    def metrics_socket(self) -> Path:
        assert self.dir is not None
        return self.dir / "metrics.sock"

    # -- context manager -----------------------------------------------------------------------

    def __enter__(self) -> "World":
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _on_sigterm(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # -- build ---------------------------------------------------------------------------------

    def build(self) -> None:
        missing = missing_prerequisites()
        if missing:
            raise WorldError("cannot build a world here:\n  - " + "\n  - ".join(missing))
        sweep_abandoned_worlds()
        raise_open_files_limit()  # the clients of a world's tests live in this process
        if self.options.workdir is not None:
            self.dir = self.options.workdir
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self.dir = workdir.create(self.prefix)
        self.supervisor = Supervisor(self.dir)
        started = time.monotonic()
        build_network(self.namespaces, self.spec)
        self.spec.write_manifests(self.manifests)
        self._start_pod_servers()
        if not self.options.static_config:
            self.start_server()
        self._start_ztunnels()
        if self.options.cni_agent:
            self._start_cni_agents()
        else:
            for node in self.spec.nodes:
                self.cni_apply(node.key)
        for zt in self.ztunnels.values():
            self.supervisor.wait_for(zt.process, zt.ready, timeout=self.options.ready_timeout, what="LIVE")
        if self.options.kubelet is not None:
            self.kubelet = ReadinessProber(self, self.options.kubelet)
            self.kubelet.start()
        log.info("world %s built in %.1f s (%s)", self.prefix, time.monotonic() - started, self.dir)

    def _start_pod_servers(self) -> None:
        assert self.supervisor is not None
        servers = []
        for pod in self.spec.pods:
            if pod.is_ztunnel or not pod.ports:
                continue
            args = ["--name", pod.name]
            for _name, port in pod.ports:
                args += ["--port", str(port)]
            servers.append((pod, self.supervisor.start(f"pod-{pod.key}", python_module("zpilot.world.podserver", *args),
                                                       netns=self.pod_ns(pod))))
        for pod, child in servers:
            port = pod.ports[0][1]
            self.supervisor.wait_for(child, lambda: self._listening(pod, port), timeout=10, what="listening")

    def _listening(self, pod: PodSpec, port: int) -> bool:
        with self.sockets.socket(self.pod_ns(pod)) as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def start_server(self, *, extra_args: tuple[str, ...] = ()) -> None:
        """``zpilot serve`` in the control-plane namespace, with its CA kept in the world's
        directory (a restarted server keeps issuing from the same root, as a deployment would);
        returns once it is ready. ``extra_args``: more flags for this run (``("--idle-timeout", "4")``)."""
        assert self.supervisor is not None and self.dir is not None
        self.server = self.supervisor.start("zpilot-serve", zpilot_cli(
            "serve", "--manifests", str(self.manifests),
            "--xds-address", f"unix:{self.xds_socket}", "--debug-address", f"unix:{self.debug_socket}",
            "--metrics-address", f"unix:{self.metrics_socket}",
            "--trust-domain", self.spec.trust_domain, "--debounce-quiet", str(self.options.debounce_quiet),
            "--ca-dir", str(self.ca_dir), "--layout", self.options.layout,
            *(["--cert-lifetime", str(self.options.cert_lifetime)] if self.options.cert_lifetime else []),
            *extra_args,
        ), netns=self.cp_ns)
        self.supervisor.wait_for(self.server, lambda: self.debug("/healthz/ready", raw=True)[0] == 200,
                                 timeout=30, what="ready")

    def stop_server(self) -> None:
        """Stop ``zpilot serve`` (the ztunnels keep running on the config they have)."""
        assert self.supervisor is not None
        if self.server is not None:
            self.supervisor.stop(self.server)
            self.server = None

    def kill_server(self) -> None:
        """``kill -9`` of ``zpilot serve``: no shutdown, streams cut mid-flight."""
        assert self.supervisor is not None and self.server is not None
        self.supervisor.kill(self.server)
        self.server = None

    def synced_nodes(self) -> set[str]:
        """Node keys whose ztunnel has exactly one ADS stream with every type ACKed (``/debug/syncz``)."""
        connections = self.debug("/debug/syncz")
        out = set()
        for node in self.spec.nodes:
            mine = [c for c in connections if c["node"] == node.name]
            if len(mine) == 1 and mine[0]["synced"] and len(mine[0]["types"]) == 4:
                out.add(node.key)
        return out

    def wait_ztunnels_connected(self, timeout: float = 40.0) -> None:
        """Until every ztunnel has an ADS stream whose listeners are ACKed (after a server restart)."""
        def connected() -> bool:
            return all(self.config_version(node.key) for node in self.spec.nodes)

        self.wait_until(connected, timeout=timeout, what="every ztunnel to reconnect and ACK its listeners")

    def _start_ztunnels(self) -> None:
        for node in self.spec.nodes:
            self._write_ztunnel_bootstrap(node)
            self.start_ztunnel(node.key)

    def _bootstrap_path(self, node: NodeSpec) -> Path:
        assert self.dir is not None
        return self.dir / f"ztunnel-{node.key}.bootstrap.json"

    def _write_ztunnel_bootstrap(self, node: NodeSpec) -> None:
        """The node's Envoy bootstrap: ``zpilot bootstrap`` (ADS) or ``zpilot render --static``."""
        if self.options.static_config:
            argv = zpilot_cli("render", "--manifests", str(self.manifests), "--node", node.name, "--static",
                              "--quiet", "--trust-domain", self.spec.trust_domain, "--ca-dir", str(self.ca_dir),
                              "--layout", self.options.layout)
        else:  # the README's second command: the node's credential from the CA zpilot serve uses
            argv = zpilot_cli("bootstrap", "--node", node.name, "--xds", f"unix:{self.xds_socket}",
                              "--admin-port", str(contract.PORT_ADMIN), *self._credential_args(node.key),
                              *(["--delta"] if self.options.delta_xds else []))
        boot = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if boot.returncode != 0:
            raise WorldError(f"bootstrapping ztunnel {node.key} failed: {boot.stderr[-2000:]}")
        config = self._bootstrap_path(node)
        if self.options.static_config:  # secrets inline: workload private keys
            self._secret_files.append(config)
        config.write_text(boot.stdout)

    def _credential_args(self, node_key: str) -> list[str]:
        return ["--ca-dir", str(self.ca_dir), "--trust-domain", self.spec.trust_domain,
                "--credential-dir", str(self.credential_dir(node_key))]

    def start_ztunnel(self, node_key: str) -> Ztunnel:
        """Start node ``node_key``'s ztunnel Envoy on its bootstrap (also to restart one that was
        stopped or killed; its access log continues in the same file). Does not wait for it to be LIVE."""
        assert self.supervisor is not None
        node = self.spec.node(node_key)
        pod = self.spec.ztunnel_on(node.key)
        child = self.supervisor.start(f"ztunnel-{node.key}", [
            envoy_path(), "-c", str(self._bootstrap_path(node)), "--disable-hot-restart",
            "--base-id", str(next_base_id()),
            "--concurrency", str(self.options.envoy_concurrency), "-l", self.options.envoy_log_level,
            "--file-flush-interval-msec", "50", "--drain-time-s", "1",
        ], netns=self.pod_ns(pod))
        self.ztunnels[node.key] = Ztunnel(node, pod, self.pod_ns(pod), child, self.client)
        return self.ztunnels[node.key]

    def renew_credential(self, node_key: str, *, force: bool = True) -> str:
        """``zpilot bootstrap --renew`` for the node (``--force``: even if not due); its message.
        A running ztunnel re-reads the swapped files; it presents them on its next connection."""
        node = self.spec.node(node_key)
        argv = zpilot_cli("bootstrap", "--renew", *(["--force"] if force else []), "--node", node.name,
                          *self._credential_args(node_key))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise WorldError(f"renewing node {node_key}'s credential failed: {done.stderr[-2000:]}")
        return done.stderr

    def restart_ztunnel(self, node_key: str) -> Ztunnel:
        """Stop the node's Envoy and start it again from its bootstrap (as a pod restart would)."""
        assert self.supervisor is not None
        self.supervisor.stop(self.ztunnels[node_key].process)
        zt = self.start_ztunnel(node_key)
        self.supervisor.wait_for(zt.process, zt.ready, timeout=self.options.ready_timeout, what="LIVE")
        return zt

    def kill_ztunnel(self, node_key: str) -> None:
        """``kill -9`` of node ``node_key``'s ztunnel Envoy: its listeners and every connection
        through it vanish at once, as when the container is OOM-killed."""
        assert self.supervisor is not None
        self.supervisor.kill(self.ztunnels[node_key].process)

    def _start_cni_agents(self) -> None:
        """One ``zpilot cni run`` per node, inside the node's namespace, watching the manifests."""
        assert self.supervisor is not None
        for node in self.spec.nodes:
            self.start_cni_agent(node.key, wait=False)
        for node in self.spec.nodes:
            self.supervisor.wait_for(self.cni_agents[node.key], lambda: self.cni_in_sync(node.key),
                                     timeout=self.options.ready_timeout, what="in sync (zpilot cni status)")

    def start_cni_agent(self, node_key: str, *, fail_closed: bool | None = None, wait: bool = True) -> Child:
        """Start node ``node_key``'s agent (also to restart a killed one); ``fail_closed`` switches
        the node's mode (``--fail-closed``) for this and later runs. With ``wait``, returns once
        ``zpilot cni status`` finds the kernel as the plan says (any mode)."""
        assert self.supervisor is not None
        if fail_closed is not None:
            self._fail_closed[node_key] = fail_closed
        cni = self.node_cni(node_key)
        child = self.supervisor.start(f"cni-agent-{node_key}", cni.agent_argv(
            self.options.cni_poll, log_commands=self.options.cni_log_commands), netns=self.node_ns(node_key))
        self.cni_agents[node_key] = child
        if wait:
            self.supervisor.wait_for(child, lambda: cni.status().in_sync, timeout=self.options.ready_timeout,
                                     what="in sync (zpilot cni status)")
        return child

    def kill_cni_agent(self, node_key: str) -> None:
        """``kill -9`` of node ``node_key``'s agent and of whatever it runs (iptables-restore, ipset,
        nsenter): the rules stay as far as it got."""
        assert self.supervisor is not None
        self.supervisor.kill(self.cni_agents.pop(node_key))

    def node_cni(self, node_key: str) -> NodeCni:
        """The CNI commands for one node of this world."""
        node = self.spec.node(node_key)
        return NodeCni(node.key, node.name, self.manifests, self.node_ns(node), self.pod_ns(self.spec.ztunnel_on(node.key)),
                       fail_closed=self._fail_closed.get(node.key, False))

    def cni_in_sync(self, node_key: str) -> bool:
        """``zpilot cni status`` for the node: exit 0 means redirecting and the kernel matches the plan."""
        return self.node_cni(node_key).in_sync()

    def meshed_ips(self, node_key: str) -> set[str]:
        """The node's ipset of captured pod IPs, as the kernel holds it now."""
        return self.node_cni(node_key).meshed_ips()

    # -- operations ----------------------------------------------------------------------------

    def cni_apply(self, node_key: str) -> str:
        """``zpilot cni apply`` for one node and its ztunnel pod; returns its report."""
        return self.node_cni(node_key).apply()

    def debug(self, path: str, *, raw: bool = False) -> Any:
        """GET on ``zpilot serve``'s debug API (over its Unix socket)."""
        return serve_api.get(self.debug_socket, path, raw=raw)

    def metrics(self) -> str:
        """``zpilot serve``'s Prometheus metrics (from its metrics listener's Unix socket)."""
        return serve_api.metrics(self.metrics_socket)

    def update_spec(self, change: Callable[[WorldSpec], WorldSpec]) -> WorldSpec:
        """Apply ``change`` to the world's spec and write the manifests, as ``kubectl`` edits reach
        the API server; the one writer (tests and the kubelet's thread alike). Returns the new spec."""
        with self._spec_lock:
            self.spec = change(self.spec)
            self.spec.write_manifests(self.manifests)
            return self.spec

    def relabel(self, pod: str, labels: dict[str, str], *, timeout: float = 40.0) -> None:
        """Change a pod's labels in the manifests, as ``kubectl label`` would, and converge: the
        control plane pushes new config, and the node agent reconciles the node's rules."""
        if self.options.static_config:
            raise WorldError("a world on static config cannot change its model (no control plane)")
        spec = self.spec.pod(pod)
        self.wait_until(lambda: self.config_version(spec.node) != "", timeout=timeout,
                        what=f"node {spec.node}'s ztunnel to be in sync before the change")
        before = self.config_version(spec.node)
        self.update_spec(lambda world: world.with_pod_labels(pod, labels))
        if self.options.cni_agent:  # the agent notices the change by itself
            self.wait_until(lambda: self.cni_in_sync(spec.node), timeout=timeout,
                            what=f"node {spec.node}'s CNI agent to reconcile")
        else:
            self.cni_apply(spec.node)
        self.wait_until(lambda: self.config_version(spec.node) not in ("", before),
                        timeout=timeout, what=f"node {spec.node}'s ztunnel to ACK the new config")

    def write_manifest(self, name: str, docs: list[dict] | None, *, push_to: tuple[str, ...],
                       timeout: float = 40.0) -> None:
        """Add (or, with ``docs`` None, delete) the extra manifest file ``<name>.yaml`` beside the
        world's own, as ``kubectl apply`` / ``delete`` would, and wait until the ztunnels of the nodes
        ``push_to`` (keys) ACKed the config it changes and drained the filter chains it replaced. Used
        for policies, which change no node's rules."""
        if self.options.static_config:
            raise WorldError("a world on static config cannot change its model (no control plane)")
        for key in push_to:
            self.wait_until(lambda k=key: self.config_version(k) != "", timeout=timeout,
                            what=f"node {key}'s ztunnel to be in sync before the change")
        before = {key: self.config_version(key) for key in push_to}
        path = self.manifests / f"{name}.yaml"
        if docs is None:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_suffix(".tmp")  # the watch ignores it; the rename is the change
            tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            tmp.rename(path)
        for key in push_to:
            self.wait_until(lambda k=key: self.config_version(k) not in ("", before[k]), timeout=timeout,
                            what=f"node {key}'s ztunnel to ACK the config of {path.name}")
            # a changed filter chain serves the connections it already has until they are drained
            # (--drain-time-s 1): a stream on such a pooled HBONE connection would still see the old chain
            self.wait_until(lambda k=key: self.listeners_settled(k), timeout=timeout,
                            what=f"node {key}'s ztunnel to drain the filter chains {path.name} replaced")

    def listeners_settled(self, node_key: str) -> bool:
        """No listener warming and no replaced filter chain still draining (both gauges are raised
        while Envoy applies an LDS update, before it ACKs it)."""
        gauges = self.ztunnels[node_key].stats(
            r"^listener_manager[.]total_(listeners_warming|filter_chains_draining)$")
        return len(gauges) == 2 and not any(gauges.values())

    def config_version(self, node_key: str) -> str:
        """The listener version node ``node_key``'s ztunnel ACKed ("" while a push is in flight)."""
        return serve_api.acked_listener_version(self.debug(f"/debug/syncz?node={self.spec.node(node_key).name}"))

    @staticmethod
    def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception as exc:
                last = exc
            time.sleep(interval)
        raise WorldError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last})" if last else ""))

    # -- teardown ------------------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """What of this world still exists (empty after a clean :meth:`close`): namespaces,
        processes it started, its working directory (or, if it is kept, the private keys in it)."""
        left = [f"netns {ns}" for ns in list_netns() if ns.startswith(self.prefix + "-")]
        if self.supervisor is not None:
            left += [f"process {c.name} (pid {c.pid})" for c in self.supervisor.children if c.alive()]
        if self.dir is not None:
            if not self.keeps_dir and self.dir.exists():
                left.append(f"directory {self.dir}")
            elif self.keeps_dir:
                left += [f"private keys in {p}" for p in self.key_stores if p.exists()]
        return left

    def close(self) -> None:
        """Stop every process, delete every namespace and the working directory (or, if it is
        kept, the private keys in it). A second Ctrl-C (or SIGTERM) while this runs is ignored, so an
        impatient user cannot leave debris."""
        if self._closed:
            return
        self._closed = True
        main = threading.current_thread() is threading.main_thread()
        held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        errors: list[str] = []
        try:
            if self.kubelet is not None:
                self.kubelet.stop()
            if self.supervisor is not None:
                self.supervisor.stop_all()
        finally:
            self.client.close()
            errors += self.namespaces.delete_all()
            if self.dir is not None:
                if self.keeps_dir:
                    error = workdir.keep(self.dir, self.key_stores)
                else:
                    error = workdir.remove(self.dir)
                if error:
                    errors.append(error)
            for sig, handler in held.items():
                signal.signal(sig, handler)
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None
        if errors:
            raise WorldError("teardown left something behind:\n" + "\n".join(errors))
