"""The process: the Bolt app wired to ``handlers``, served, and the ``rollback-bot`` command
(the command line of ``bot.cli`` with ``serve`` running this app).

``serve``: Socket Mode when ``SLACK_APP_TOKEN`` is set, HTTP mode (POST
``/slack/events``, signatures checked with ``SLACK_SIGNING_SECRET``) otherwise; both
expose GET ``/healthz`` for container probes. A path setting the bot cannot use, or a
token Slack refuses, stops the start with a one-line message and a non-zero exit; SIGTERM
and SIGINT stop it within seconds (see ``Services.close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TextIO, TypeVar

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.cli.main import main as cli_main
from bot.core.config import Settings, SlackSecrets
from bot.slack.client import make_client, verify_app_token, verify_token
from bot.slack.services import CLOSE_SECONDS, Services, build_services
from bot.state.schema import SchemaTooNew
from bot.state.store import StateUrlError, StoreUnavailable
from handlers import register

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Longest wait for Slack to answer the token checks at start.
TOKEN_CHECK_SECONDS = 12.0


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
    register(app)
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
    """Run the bot until SIGINT/SIGTERM (or ``stop``); returns the exit status.

    Before anything opens: every path setting (2 on a problem), the bot token by ``auth.test``
    and, in Socket Mode, the app token by ``apps.connections.open`` (1 when refused).
    """
    err = err or sys.stderr
    stop = stop or asyncio.Event()
    why = {"signal": "bot stopped"}
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, _on_signal, stop, why, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread (tests): ``stop`` is set by the caller
    try:
        return await _serve(settings, err, stop, why)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _on_signal(stop: asyncio.Event, why: dict[str, str], sig: signal.Signals) -> None:
    why["signal"] = f"bot stopped ({sig.name})"
    log.info("%s received: stopping", sig.name)
    stop.set()


async def _until_stop(stop: asyncio.Event, coro: Coroutine[Any, Any, T]) -> tuple[bool, T | None]:
    """Run ``coro`` unless ``stop`` is set first: (True, result), or (False, None) when stopped."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False, None


async def start_problems(settings: Settings, client: AsyncWebClient) -> tuple[int, list[str]]:
    """What stops a start: (2, path problems) or (1, token problems) or (0, [])."""
    problems = settings.config.path_problems()
    if problems:
        return 2, problems
    try:
        async with asyncio.timeout(TOKEN_CHECK_SECONDS):
            problem = await verify_token(client)
            if problem is None and settings.secrets.socket_mode:
                assert settings.secrets.slack_app_token is not None
                problem = await verify_app_token(client, settings.secrets.slack_app_token.get_secret_value())
    except TimeoutError:
        problem = f"SLACK_API_URL: Slack's Web API did not answer within {TOKEN_CHECK_SECONDS:g} s"
    return (1, [problem]) if problem else (0, [])


async def _serve(settings: Settings, err: TextIO, stop: asyncio.Event, why: dict[str, str]) -> int:
    secrets = settings.secrets
    client = make_client(secrets)
    finished, checked = await _until_stop(stop, start_problems(settings, client))
    if not finished:
        return 0
    assert checked is not None
    code, problems = checked
    if problems:
        for problem in problems:
            print(f"rollback-bot serve: {problem}", file=err)
        return code
    settings.config.artifacts_dir.mkdir(parents=True, exist_ok=True)
    try:
        services = await build_services(settings.config, client,
                                        config_path=str(settings.path) if settings.path else None)
    except (SchemaTooNew, StateUrlError, StoreUnavailable) as exc:
        print(f"rollback-bot serve: {exc}", file=err)
        return 1
    app = create_app(secrets, services)
    runner: web.AppRunner | None = None
    socket_handler: Any = None
    try:
        await services.resume()
        if secrets.socket_mode:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            assert secrets.slack_app_token is not None
            port = settings.config.slack.health_port
            if port:
                runner = await _start_site(web_app(None, services), port)
            socket_handler = AsyncSocketModeHandler(app, secrets.slack_app_token.get_secret_value())
            # The SDK retries a failed connect forever: a stop must win over it.
            connected, _ = await _until_stop(stop, socket_handler.connect_async())
            if connected:
                log.info("serving in Socket Mode%s", f"; /healthz on :{port}" if port else "")
        else:
            port = settings.config.slack.http_port
            runner = await _start_site(web_app(app, services), port)
            log.info("serving in HTTP mode on :%d (/slack/events, /healthz)", port)
        await stop.wait()
    finally:
        # Intake first (no new request starts work), then the work itself.
        if socket_handler is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(socket_handler.close_async(), CLOSE_SECONDS)
        if runner is not None:
            await runner.cleanup()
        await services.close(why["signal"])
    log.info("stopped")
    return 0


async def _start_site(wa: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(wa, shutdown_timeout=CLOSE_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


def main(argv: Sequence[str] | None = None) -> int:
    """The ``rollback-bot`` command: bot's command line, its ``serve`` running this app."""
    return cli_main(argv, serve=serve)


if __name__ == "__main__":
    sys.exit(main())
