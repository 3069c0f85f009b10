"""Stakeholder notifications: a webhook POST at a milestone, skipped when none is configured."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from actions.local import LocalTransport
from bot.engine import Engine, Target
from bot.lifecycle import Status, StepStatus
from bot.runbook import parse_runbook
from bot.store import Store
from bot.targets import TargetSettings

RUNBOOK = textwrap.dedent("""\
    name: notify
    phases:
      - id: p
        title: P
        steps:
          - id: tell
            title: Tell the stakeholders
            kind: notify
            text: "Rollback {{ incident.id }} started: {{ incident.reason }}"
          - id: after
            title: After
            kind: command
            idempotent: true
            run: "true"
    """)


class Hook:
    """A webhook receiver on 127.0.0.1 that answers with a set status."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, str]] = []
        self.status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.text()))
        return web.Response(status=self.status, text="ok")


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/hook", h.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    h.url = f"http://127.0.0.1:{port}/hook"
    yield h
    await runner.cleanup()


async def _run(tmp_path: Path, reason: str) -> tuple[Store, Engine, str]:
    store = await Store.open(str(tmp_path / "state.db"))
    settings = TargetSettings(name="t", transport="local", workdir=str(tmp_path))
    engine = Engine(store, parse_runbook(RUNBOOK), {"t": Target(settings, LocalTransport(name="t"))},
                    artifacts_dir=tmp_path / "art")
    inc = await store.create_incident(target="t", runbook="notify", reason=reason)
    await engine.run(inc.id)
    return store, engine, inc.id


async def test_webhook_gets_the_milestone(tmp_path: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLBACK_STAKEHOLDER_WEBHOOK", hook.url)
    store, engine, iid = await _run(tmp_path, 'db "corrupt" $(x)')
    assert hook.bodies == [{"text": f'Rollback {iid} started: db "corrupt" $(x)'}]
    runs = await store.latest_runs(iid)
    assert runs["tell"].status is StepStatus.DONE
    assert (await store.incident(iid)).status is Status.COMPLETED
    await engine.targets["t"].transport.close()
    await store.close()


async def test_no_webhook_configured_is_skipped_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROLLBACK_STAKEHOLDER_WEBHOOK", raising=False)
    store, engine, iid = await _run(tmp_path, "r")
    runs = await store.latest_runs(iid)
    # Recorded as skipped, with the reason in words, not as done and not as an error.
    assert runs["tell"].status is StepStatus.SKIPPED and runs["tell"].error is None
    assert runs["tell"].captures["skip_reason"] == "no stakeholder webhook: ROLLBACK_STAKEHOLDER_WEBHOOK is not set"
    assert (await store.incident(iid)).status is Status.COMPLETED
    await engine.targets["t"].transport.close()
    await store.close()


async def test_a_failing_webhook_does_not_stop_the_rollback(
    tmp_path: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLBACK_STAKEHOLDER_WEBHOOK", hook.url)
    hook.status = 500
    store, engine, iid = await _run(tmp_path, "r")
    runs = await store.latest_runs(iid)
    assert runs["tell"].status is StepStatus.FAILED and "500" in (runs["tell"].error or "")
    assert runs["after"].status is StepStatus.DONE
    assert (await store.incident(iid)).status is Status.COMPLETED
    await engine.targets["t"].transport.close()
    await store.close()
