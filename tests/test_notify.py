"""Stakeholder notifications: a webhook POST at a milestone, skipped when none is configured."""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from actions.local import LocalTransport
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import parse_runbook
from bot.core.targets import TargetSettings
from bot.state.store import Store

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


async def test_typed_text_is_escaped_for_slack(tmp_path: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLBACK_STAKEHOLDER_WEBHOOK", hook.url)
    store, engine, iid = await _run(tmp_path, "<!channel> see <http://evil.example|the status page> & <@U0BOSS>")
    # Shown literally in Slack: no @channel ping, no disguised link, no mention.
    assert hook.bodies == [{"text": f"Rollback {iid} started: &lt;!channel&gt; see "
                                    "&lt;http://evil.example|the status page&gt; &amp; &lt;@U0BOSS&gt;"}]
    await engine.targets["t"].transport.close()
    await store.close()


async def test_the_webhook_url_is_redacted_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from bot.core.redaction import Redactor, env_secrets, redact_logs
    from bot.record.audit import AuditLog, AuditSink

    # A Slack-style webhook: the whole URL is the credential; nothing listens there.
    secret_url = "http://127.0.0.1:9/services/T0SECRET/B0SECRET/abcdefSECRETxyz"
    monkeypatch.setenv("ROLLBACK_STAKEHOLDER_WEBHOOK", secret_url)
    with caplog.at_level(logging.INFO):
        store, engine, iid = await _run(tmp_path, "r")
    run = (await store.latest_runs(iid))["tell"]
    assert run.status is StepStatus.FAILED and "[REDACTED]" in (run.error or "")
    journal = json.dumps([e.data for e in await store.events(iid)], default=str)
    audit = AuditLog(tmp_path / "audit.jsonl")
    await AuditSink(store, audit).flush()
    for where in (run.error or "", run.output_tail, journal, (tmp_path / "audit.jsonl").read_text()):
        assert "SECRET" not in where
    # Log lines are redacted too, and httpx's request lines (full URLs) are not logged at INFO.
    handler = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(handler)
    try:
        redact_logs(Redactor(values=env_secrets()))
        logging.getLogger("bot.test").warning("posting to %s failed", secret_url)
        logging.getLogger("bot.test").warning("db at postgresql+asyncpg://rb:hunter2pass@db/rb")
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
        text = handler.stream.getvalue()  # type: ignore[attr-defined]
        assert "SECRET" not in text and "hunter2pass" not in text and text.count("[REDACTED]") == 2
    finally:
        logging.getLogger().removeHandler(handler)
    await engine.targets["t"].transport.close()
    await store.close()
