"""``zpilot --log-format json serve``: every line on stderr is one JSON object, the ADS log lines
carry node, type URL, version and nonce as fields, and what a client sends is bounded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from zpilot.logs import MAX_FIELD_CHARS
from zpilot.xds.order import CLUSTER_TYPE

from .ads_client import AdsClient
from .envoy_util import NODE_A, die_with_parent, eventually, free_port, random_loopback, stop_process_group


@pytest.fixture
def serve_json(manifests: Path, tmp_path: Path):
    """``zpilot --log-format json serve`` with stderr in a file; SIGTERM (then SIGKILL) at teardown."""
    xds_port = free_port()
    err = tmp_path / "serve.err"
    with open(err, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zpilot.cli", "--log-format", "json", "serve", "--manifests", str(manifests),
             "--insecure-xds", "--xds-address", "127.0.0.1", "--xds-port", str(xds_port), "--debug-port", "0",
             "--metrics-address", "127.0.0.1", "--metrics-port", "0", "--bind-address", random_loopback()],
            stdout=subprocess.DEVNULL, stderr=out, preexec_fn=die_with_parent,
        )
    yield {"proc": proc, "xds_port": xds_port, "err": err}
    stop_process_group(proc)


def records(path: Path) -> list[dict]:
    """Every complete line of ``path``, each of which must be one JSON object."""
    text = path.read_text()
    lines = text.splitlines()[: text.count("\n")]  # a line still being written is not judged yet
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line on stderr: {line[:300]!r}") from None
        assert isinstance(record, dict), line
        out.append(record)
    return out


async def test_every_stderr_line_is_json_with_the_fields_to_filter_on(serve_json):
    proc, err = serve_json["proc"], serve_json["err"]

    async def serving():
        assert proc.poll() is None, err.read_text()
        return any(r["message"].startswith("serving ") for r in records(err))

    await eventually(serving, 20)

    client = AdsClient(serve_json["xds_port"])
    stranger = AdsClient(serve_json["xds_port"])
    try:
        client.request(CLUSTER_TYPE, node_name=NODE_A)
        response = await client.recv()
        client.request(CLUSTER_TYPE, nonce=response.nonce, version=response.version_info, error="bad " * 5000)
        stranger.request(CLUSTER_TYPE, node_name="n" * 20_000)  # longer than any node id: refused
        refused = await stranger.status()

        async def logged():
            return [r for r in records(err) if r.get("node") == NODE_A and r["level"] == "WARNING"]

        [nack] = await eventually(logged, 10)
    finally:
        await client.close()
        await stranger.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0

    every = records(err)
    assert err.read_text().endswith("\n")
    for record in every:
        assert {"time", "level", "logger", "message"} <= set(record), record
        for key, value in record.items():
            if key not in ("message", "exc_info"):
                assert len(str(value)) <= MAX_FIELD_CHARS + 30, (key, str(value)[:100])

    # the response to the first request, as the server logged it
    [sent] = [r for r in every if r.get("node") == NODE_A and r["message"].startswith("sent CDS")]
    assert (sent["type_url"], sent["version"], sent["nonce"]) == (CLUSTER_TYPE, response.version_info, response.nonce)
    assert sent["logger"] == "zpilot.xds" and sent["level"] == "INFO" and sent["conn"]
    # the NACK: its text is the client's, cut at its source; the fields name what was rejected
    assert (nack["type_url"], nack["version"], nack["nonce"]) == (CLUSTER_TYPE, response.version_info, response.nonce)
    assert "bad bad" in nack["message"] and len(nack["message"]) < 5000
    # the stranger's 20000-character node is refused, naming the limit, in one short line
    assert "node id of 20008 characters; the limit is 4096" in refused[1]
    [refusal] = [r for r in every if "refused" in r["message"]]
    assert refusal["level"] == "WARNING" and refusal["peer"].startswith("ipv4:127.0.0.1:")
    assert "node id of 20008 characters" in refusal["message"] and len(refusal["message"]) < 300
    assert not any("nnnnnnnn" in json.dumps(r) for r in every)
    # input problems name their object
    assert any(r.get("object") == "Namespace legacy" for r in every)
    assert any(r["message"] == "shutting down" for r in every)
