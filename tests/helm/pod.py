"""A pod emulated on this machine for the chart's tests: a network namespace of its own, the
kubelet's ``$(VAR)`` expansion of the downward API, each volume a directory of the test's."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pyroute2.netns import setns

from .chart import containers


class Pod:
    """A network namespace standing for a pod (and the cluster network around it), removed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.name = f"zph{os.getpid()}-{secrets.token_hex(3)}"
        self.tmp = tmp
        self.etc = Path("/etc/netns") / self.name
        self.procs: list[subprocess.Popen] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def resolve(self, names: dict[str, str]) -> None:
        """What the cluster's DNS would answer, for the processes of this namespace."""
        self.etc.mkdir(parents=True)
        self.etc.joinpath("hosts").write_text("".join(f"{ip} {name}\n" for name, ip in names.items()))

    def started_inside(self, make: Callable[[], Any]) -> Any:
        """``make()`` on a thread that entered the namespace: threads it starts (a server's loop) stay in it."""
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                setns(f"/run/netns/{self.name}", flags=0)
                result["value"] = make()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["value"]

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, **kw)

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        shutil.rmtree(self.etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def mounted(pod: dict[str, Any], volumes: dict[str, Path], argv: list[str]) -> list[str]:
    """``argv`` with each path under a mount of the pod's containers moved to that volume's directory
    (a path the init container writes and the Envoy container reads is one file)."""
    mounts = sorted({(m["mountPath"], volumes[m["name"]]) for c in containers(pod) for m in c.get("volumeMounts", [])},
                    key=lambda m: -len(m[0]))
    out = []
    for arg in argv:
        for path, directory in mounts:
            if arg == path or arg.startswith(path + "/"):
                arg = str(directory) + arg[len(path):]
                break
        out.append(arg)
    return out


def downward(c: dict[str, Any], argv: list[str], node: str) -> list[str]:
    """The kubelet's ``$(VAR)`` expansion of the downward API's node name."""
    env = {e["name"]: node for e in c.get("env", [])
           if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName"}
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in argv]


def downward_env(c: dict[str, Any], *, node: str, pod: str, namespace: str) -> dict[str, str]:
    """The environment the kubelet gives a container from the downward API (the fields the chart uses)."""
    fields = {"spec.nodeName": node, "metadata.name": pod, "metadata.namespace": namespace}
    return {e["name"]: fields[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in c.get("env", [])
            if "fieldRef" in e.get("valueFrom", {})}


def until(check: Callable[[], bool], what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log and log.exists() else ""
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tail}")
        time.sleep(0.2)


def as_container(pod_spec: dict[str, Any], c: dict[str, Any], *, user: bool = True) -> list[str]:
    """``setpriv`` arguments that run a command the way a container runtime runs the container:
    holding only the capabilities it adds (a container that drops ALL gets nothing else, root
    included), with no new privileges when escalation is off, and (``user``) as its user and group and
    the pod's fsGroup. A privileged container runs as root with every capability: no prefix.

    ``user=False`` keeps root for a non-root container whose program this machine cannot run as
    another user (its Python packages are installed under /root): capabilities still apply."""
    sc = c["securityContext"]
    if sc.get("privileged"):
        return []
    capabilities = sc["capabilities"]
    assert capabilities["drop"] == ["ALL"], f"{c['name']}: a container keeps the runtime's default capabilities"
    bounding = ",".join(["-all", *(f"+{cap.lower()}" for cap in capabilities.get("add", []))])
    argv = ["setpriv", "--inh-caps=-all", f"--bounding-set={bounding}"]
    if user:
        groups = pod_spec.get("securityContext", {}).get("fsGroup")
        argv += [f"--reuid={sc['runAsUser']}", f"--regid={sc['runAsGroup']}",
                 f"--groups={groups}" if groups is not None else "--clear-groups"]
    if sc.get("allowPrivilegeEscalation") is False:
        argv.append("--no-new-privs")
    return argv
