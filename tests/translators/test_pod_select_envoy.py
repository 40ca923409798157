"""A real Envoy picks, in the linear layout's destination map, the longest prefix that holds the
destination: a stray pod's /32 inside another node's pod CIDR goes to the stray's chain, the rest
of the CIDR to the node's chain, anything else passes through (translators/outbound_linear.py).

The destination map as ``matcher.by_ranges`` builds it, in a listener on 0.0.0.0 of a network
namespace of its own (loopback only: every 127.x address reaches it), each chain a tcp_proxy to
an empty cluster; Envoy's access log says which chain each connection took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import json_format

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2

from zpilot.envoy_binary import envoy_path, next_base_id
from zpilot.translators import clusters, matcher, names
from zpilot.translators.envoy_common import pack, socket_address
from zpilot.translators.limits import DataPathLimits, idle_timeout
from zpilot.translators.tcp_proxy import proxy_chain

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy]

PORT = 18080
NODE_CHAIN, STRAY_CHAIN = names.pods_on_node("node-b"), names.pod_direct_chain("spiffe://td/ns/a/sa/stray")


def _config(log: Path) -> dict:
    destinations = matcher.by_ranges(
        "ip",
        [(["127.1.0.0/16"], matcher.chain(NODE_CHAIN)), (["127.1.2.3"], matcher.chain(STRAY_CHAIN))],
        on_no_match=matcher.chain(names.PASSTHROUGH_CHAIN),
    )
    idle = idle_timeout(DataPathLimits())
    logger = file_pb2.FileAccessLog(path=str(log))
    logger.log_format.text_format_source.inline_string = "%FILTER_CHAIN_NAME% %DOWNSTREAM_LOCAL_ADDRESS%\n"
    listener = listener_pb2.Listener(
        name="destinations",
        address=socket_address("0.0.0.0", PORT),
        filter_chains=[proxy_chain(name, names.BLACKHOLE_CLUSTER, idle_timeout=idle)
                       for name in (NODE_CHAIN, STRAY_CHAIN, names.PASSTHROUGH_CHAIN)],
        filter_chain_matcher=destinations,
    )
    listener.access_log.add(name="envoy.access_loggers.file", typed_config=pack(logger))
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.static_resources.listeners.append(listener)
    bootstrap.static_resources.clusters.append(clusters.blackhole())
    bootstrap.admin.address.CopyFrom(socket_address("127.0.0.1", 19901))
    return json_format.MessageToDict(bootstrap)


def _connect_all(netns: str, addresses: list[str]) -> None:
    code = (
        "import socket, sys\n"
        "for a in sys.argv[1:]:\n"
        "    s = socket.create_connection((a, %d), timeout=5)\n"
        "    s.close()\n"
    ) % PORT
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, *addresses], check=True, timeout=30)


def test_the_longest_prefix_picks_the_chain(tmp_path: Path) -> None:
    netns = f"zp-podsel-{os.getpid()}"
    log = tmp_path / "access.log"
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(_config(log)))
    subprocess.run(["ip", "netns", "add", netns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        out = open(tmp_path / "envoy.out", "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", netns, envoy_path(), "-c", str(config), "--base-id",
                                 str(next_base_id()), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        probe = "import socket; socket.create_connection(('127.0.0.1', %d), timeout=1).close()" % PORT
        deadline = time.monotonic() + 30
        while subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", probe],
                             capture_output=True).returncode != 0:
            assert proc.poll() is None, (tmp_path / "envoy.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "envoy did not listen"
            time.sleep(0.2)
        _connect_all(netns, ["127.1.2.3", "127.1.2.4", "127.2.0.1"])
        wanted = {
            f"{STRAY_CHAIN} 127.1.2.3:{PORT}",  # the /32 inside the /16
            f"{NODE_CHAIN} 127.1.2.4:{PORT}",
            f"{names.PASSTHROUGH_CHAIN} 127.2.0.1:{PORT}",
        }
        deadline = time.monotonic() + 15
        while not wanted <= set(log.read_text().splitlines() if log.exists() else ()):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no access log"
            time.sleep(0.2)
    finally:
        if proc is not None:
            os.killpg(proc.pid, 15)
            proc.wait(10)
        subprocess.run(["ip", "netns", "delete", netns], check=False)
