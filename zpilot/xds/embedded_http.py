"""uvicorn inside our own event loop, for the HTTP servers zpilot serve runs beside ADS."""

from __future__ import annotations

import contextlib
from typing import Iterator

import uvicorn


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn's Server without its signal handling: the process's owner handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list | None = None) -> None:
        # uvicorn calls sys.exit() when it cannot bind, and asyncio lets SystemExit end the whole
        # process: turn it into an error of this task, which the caller reports.
        try:
            await super().startup(sockets=sockets)
        except SystemExit:
            raise OSError("uvicorn could not start (see its error above)") from None


def bound_port(server: uvicorn.Server) -> int | None:
    """The TCP port a started server listens on (None for a Unix socket)."""
    for srv in getattr(server, "servers", []) or []:
        for sock in getattr(srv, "sockets", []) or []:
            name = sock.getsockname()
            return name[1] if isinstance(name, tuple) else None
    return None
