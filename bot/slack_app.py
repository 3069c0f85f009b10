"""Wiring the Bolt app (the one module of ``bot`` that imports slack_bolt) and serving it.

``serve``: Socket Mode when ``SLACK_APP_TOKEN`` is set, HTTP mode (POST
``/slack/events``, signatures checked with ``SLACK_SIGNING_SECRET``) otherwise; both
expose GET ``/healthz`` for container probes. A token that ``auth.test`` refuses stops
the start with a clear message and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any, TextIO

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp, AsyncBoltContext

import handlers
from bot.config import Settings, SlackSecrets
from bot.services import Services, build_services
from bot.slack_client import make_client, verify_token

log = logging.getLogger(__name__)


def create_app(secrets: SlackSecrets, services: Services) -> AsyncApp:
    """The Bolt app with every listener of ``handlers`` and the services in each context."""
    signing = secrets.slack_signing_secret.get_secret_value() if secrets.slack_signing_secret else None
    app = AsyncApp(client=services.client, signing_secret=signing or "socket-mode",
                   request_verification_enabled=bool(signing) or not secrets.socket_mode,
                   process_before_response=False)

    async def inject(context: AsyncBoltContext, next: Any) -> None:
        context["services"] = services
        await next()

    app.middleware(inject)
    handlers.register(app)
    return app


def web_app(app: AsyncApp | None, services: Services) -> web.Application:
    """aiohttp routes: POST /slack/events (HTTP mode only) and GET /healthz."""

    async def events(request: web.Request) -> web.Response:
        assert app is not None
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    async def healthz(_: web.Request) -> web.Response:
        try:
            active = await services.store.incidents(active_only=True)
        except Exception as exc:  # a probe reports any failure as unhealthy
            return web.json_response({"ok": False, "error": f"store: {type(exc).__name__}"}, status=503)
        return web.json_response({"ok": True, "active_incidents": len(active)})

    routes = [web.get("/healthz", healthz)]
    if app is not None:
        routes.append(web.post("/slack/events", events))
    wa = web.Application()
    wa.add_routes(routes)
    return wa


async def serve(settings: Settings, *, err: TextIO | None = None, stop: asyncio.Event | None = None) -> int:
    """Run the bot until SIGINT/SIGTERM (or ``stop``); returns the exit status."""
    err = err or sys.stderr
    secrets = settings.secrets
    client = make_client(secrets)
    problem = await verify_token(client)
    if problem:
        print(f"rollback-bot serve: {problem}", file=err)
        return 1
    services = await build_services(settings.config, client,
                                    config_path=str(settings.path) if settings.path else None)
    app = create_app(secrets, services)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread (tests): ``stop`` is set by the caller
    runner: web.AppRunner | None = None
    socket_handler: Any = None
    try:
        await services.resume()
        if secrets.socket_mode:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            assert secrets.slack_app_token is not None
            socket_handler = AsyncSocketModeHandler(app, secrets.slack_app_token.get_secret_value())
            await socket_handler.connect_async()
            port = settings.config.slack.health_port
            if port:
                runner = await _start_site(web_app(None, services), port)
            log.info("serving in Socket Mode%s", f"; /healthz on :{port}" if port else "")
        else:
            port = settings.config.slack.http_port
            runner = await _start_site(web_app(app, services), port)
            log.info("serving in HTTP mode on :%d (/slack/events, /healthz)", port)
        await stop.wait()
    finally:
        if socket_handler is not None:
            await socket_handler.close_async()
        if runner is not None:
            await runner.cleanup()
        await services.close()
    return 0


async def _start_site(wa: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(wa)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
