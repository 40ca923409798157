"""The benchmark's simulated ztunnels (bench/ztunnels.py) open the flow-control windows Envoy's
ADS connection opens: 256 MiB for the stream and for the connection (Envoy's
Http2ProtocolOptions defaults). Checked on the wire: a plain socket plays the server and reads
the HTTP/2 frames the client sends first (its SETTINGS, then a WINDOW_UPDATE of the connection),
so what is checked is what the client advertises, not which options it was given."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import ztunnels  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, WINDOW_UPDATE, INITIAL_WINDOW_SIZE = 0x4, 0x8, 0x4
HTTP2_DEFAULT_WINDOW = 65_535


async def advertised(options: list[tuple[str, int]]) -> tuple[dict[int, int], int]:
    """(the client's SETTINGS, its connection window) as it opens a stream to a silent server."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.getsockname()[1]}", options=options)
    call = channel.stream_stream("/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources")(
        iter([b""]))
    try:
        conn, _ = await asyncio.wait_for(loop.sock_accept(server), 10)
        data, settings, window = b"", None, HTTP2_DEFAULT_WINDOW
        with conn:
            while settings is None or window == HTTP2_DEFAULT_WINDOW:
                chunk = await asyncio.wait_for(loop.sock_recv(conn, 65536), 10)
                assert chunk, "the client closed the connection before advertising its windows"
                data += chunk
                assert data.startswith(PREFACE[: len(data)])
                frames, at = data[len(PREFACE):], 0
                while len(frames) - at >= 9:
                    length = int.from_bytes(frames[at : at + 3], "big")
                    kind, flags = frames[at + 3], frames[at + 4]
                    stream = int.from_bytes(frames[at + 5 : at + 9], "big") & 0x7FFFFFFF
                    payload = frames[at + 9 : at + 9 + length]
                    if len(payload) < length:
                        break
                    at += 9 + length
                    if kind == SETTINGS and not flags & 0x1 and settings is None:
                        settings = dict(struct.unpack(">HI", payload[i : i + 6]) for i in range(0, length, 6))
                    elif kind == WINDOW_UPDATE and stream == 0:
                        window = HTTP2_DEFAULT_WINDOW + (struct.unpack(">I", payload)[0] & 0x7FFFFFFF)
                if len(data) > 1 << 20:
                    pytest.fail("no connection WINDOW_UPDATE in the client's first megabyte")
        return settings, window
    finally:
        call.cancel()
        await channel.close()
        server.close()


async def test_the_simulated_ztunnels_open_envoys_windows():
    settings, window = await advertised(ztunnels.channel_options())
    assert settings.get(INITIAL_WINDOW_SIZE) == ztunnels.ENVOY_WINDOW == 256 << 20
    assert window == ztunnels.ENVOY_WINDOW


async def test_grpcs_own_windows_are_smaller_and_ignore_the_lookahead_while_probing():
    """Why the bench turns gRPC's BDP probing off: with it on, the option that names the window is
    not what the client advertises (so a bench that set it alone kept gRPC's windows)."""
    settings, window = await advertised(ztunnels.channel_options(0) + [("grpc.http2.lookahead_bytes", 256 << 20)])
    assert settings.get(INITIAL_WINDOW_SIZE, HTTP2_DEFAULT_WINDOW) < 256 << 20
    assert window < 256 << 20
