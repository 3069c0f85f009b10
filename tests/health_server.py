"""A real HTTP health endpoint on 127.0.0.1 (port 0) that can be made slow, failing or flapping.

    async with HealthServer() as hs:          # GET hs.url -> 200 {"status": "ok"}
        hs.mode = "failing"                   # 503 {"status": "error"}
        hs.mode = "bad_body"                  # 200 {"status": "degraded"}
        hs.mode = "flapping"                  # failing, ok, failing, ok ... (by request count)
        hs.delay = 0.3                        # every answer waits this long (slow)
        hs.script = ["ok", "failing"]         # the next answers, in order, before ``mode`` again
        hs.requests                           # every request's headers, in order
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web


class HealthServer:
    """The health endpoint the stability checks call."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.script: list[str] = []
        self.requests: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The health URL."""
        return f"http://127.0.0.1:{self.port}/health"

    async def _health(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        mode = self.script.pop(0) if self.script else self.mode
        if mode == "flapping":
            mode = "failing" if len(self.requests) % 2 else "ok"
        if self.delay:
            await asyncio.sleep(self.delay)
        if mode == "failing":
            return web.json_response({"status": "error", "db": "locked"}, status=503)
        if mode == "bad_body":
            return web.json_response({"status": "degraded"})
        return web.json_response({"status": "ok", "version": "v1"})

    async def start(self) -> HealthServer:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> HealthServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
