"""Unix socket -> TCP relay: how the ztunnels' Envoys reach ``zpilot serve``.

``zpilot serve`` listens on TCP only (no Unix-socket listen option yet), and runs in the
world's control-plane namespace, whose loopback no ztunnel namespace can reach. A Unix socket
is reachable from every namespace (it lives in the file system), so this relay, started in the
control-plane namespace, accepts there and connects to the server's loopback port. gRPC's
HTTP/2 and the debug API's HTTP/1.1 pass through it byte for byte.

Run as ``python -m zpilot.world.relay --map /path/xds.sock=127.0.0.1:15010 [--map ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


def _handler(host: str, port: int):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return handle


async def relay(mappings: list[tuple[str, str, int]]) -> None:
    servers = []
    for path, host, port in mappings:
        if os.path.exists(path):
            os.unlink(path)
        servers.append(await asyncio.start_unix_server(_handler(host, port), path=path))
        os.chmod(path, 0o600)
    print("relay: " + ", ".join(f"{p} -> {h}:{port}" for p, h, port in mappings), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    for path, _h, _p in mappings:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def parse_map(text: str) -> tuple[str, str, int]:
    path, _, target = text.partition("=")
    host, _, port = target.rpartition(":")
    if not path or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not PATH=HOST:PORT")
    return path, host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--map", type=parse_map, action="append", required=True, metavar="PATH=HOST:PORT")
    args = p.parse_args(argv)
    asyncio.run(relay(args.map))
    return 0


if __name__ == "__main__":
    sys.exit(main())
