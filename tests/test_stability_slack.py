"""Stability checks and the P3 schedule in Slack: the real Bolt stack on the Slack fake, a real
health server, a manual clock; every button pressed is one the bot posted."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.clock.scheduler import ManualClock
from bot.core.config import BotConfig, SlackSecrets, parse_config
from bot.core.lifecycle import Status
from bot.slack.client import make_client
from bot.slack.services import build_services
from handlers.app import create_app
from tests.clock_env import T0
from tests.health_server import HealthServer
from tests.slack_driver import SlackDriver, bolt_sender
from tests.slack_fake import SlackFake
from tests.test_slack_e2e import (
    CH,
    IC,
    LEAD,
    NOBODY,
    PO,
    REQ,
    Harness,
    _assert_thread_matches_state,
    _ephemerals_to,
    _open_incident,
    _state_messages,
)

RUNBOOK = textwrap.dedent("""\
    name: stab
    phases:
      - id: authorization
        title: Authorization
        steps:
          - {id: approval, title: "Approval", kind: approval, policy: default}
      - id: emergency_response
        title: "Phase 1"
        steps:
          - id: maintenance_window
            title: Wait for the maintenance window (P3)
            kind: window
            when: "incident.decision == 'Next maintenance window'"
          - id: maintenance_on
            title: Maintenance mode on
            kind: command
            idempotent: true
            run: "echo on >> maintenance.log"
      - id: stabilization
        title: "Phase 6: System Stabilization & Recovery"
        steps:
          - id: stability_checks
            title: "System stability confirmation: health checks"
            kind: stability
            checks: 3
            interval: 60
            maintenance_step: maintenance_on
          - id: maintenance_off
            title: Maintenance mode off
            kind: command
            idempotent: true
            run: "echo off >> maintenance.log"
    """)


def _config(tmp_path: Path, workdir: Path, health_url: str) -> BotConfig:
    rb = tmp_path / "runbook.yml"
    rb.write_text(RUNBOOK)
    return parse_config({
        "slack": {"channels": [CH], "update_interval_seconds": 0.05, "retry_max_seconds": 0.5},
        "roles": {"tech_lead": {"users": [LEAD, REQ]}, "product_owner": {"groups": ["S0PRODUCT"]},
                  "incident_commander": {"users": [IC]}},
        "targets": [{"name": "t1", "transport": "local", "workdir": str(workdir), "health_url": health_url}],
        "runbook": str(rb),
        "state_db": str(tmp_path / "state.db"),
        "artifacts_dir": str(tmp_path / "artifacts"),
        "records": {"audit_log": str(tmp_path / "logs" / "governance.jsonl"),
                    "evidence_root": str(tmp_path / "evidence")},
        "clock": {"maintenance_window": {"cron": "0 2 * * sat", "timezone": "Europe/Berlin"}},
    })


@pytest.fixture
async def harness(tmp_path: Path, health: HealthServer) -> AsyncIterator[Harness]:
    workdir = tmp_path / "app"
    workdir.mkdir()
    fake = SlackFake(users={u: u.lower() for u in (REQ, LEAD, PO, IC, NOBODY)}, usergroups={"S0PRODUCT": [PO]})
    fake.add_channel(CH, "incident-response")
    await fake.start()
    config = _config(tmp_path, workdir, health.url)
    secrets = SlackSecrets(slack_bot_token=fake.bot_token, slack_signing_secret=fake.signing_secret,
                           slack_api_url=fake.base_url)
    services = await build_services(config, make_client(secrets), clock=ManualClock(T0))
    app = create_app(secrets, services)
    await services.resume()
    h = Harness(fake, SlackDriver(fake, bolt_sender(app), default_user_id=REQ), services, workdir, config, secrets)
    yield h
    await h.services.close()
    await fake.stop()


async def _fire(h: Harness, seconds: float = 0) -> list[str]:
    assert h.services.clock is not None
    clock = h.services.clock.jobs.clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)
    ran = await h.services.clock.jobs.run_due()
    await h.idle()
    return ran


def _series_messages(h: Harness) -> list[Any]:
    return [m for m in h.thread() if "System stability confirmation" in str(m.blocks) and "checks ·" in str(m.blocks)]


async def test_checks_update_one_message_and_a_failure_holds_and_asks(harness: Harness,
                                                                       health: HealthServer) -> None:
    h = harness
    await _open_incident(h)
    for user in (LEAD, PO):
        await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), user)
        await h.idle()
    inc = await h.incident()
    assert (await h.services.engine.waiting_for(inc.id)).kind == "stability"  # type: ignore[union-attr]
    await _fire(h)
    [series] = _series_messages(h)
    assert "1/3 checks" in str(series.blocks)
    health.mode = "failing"
    await _fire(h, 60)
    [series] = _series_messages(h)  # still one message, edited in place
    assert "2/3 checks" in str(series.blocks) and series.edits
    assert "HTTP 503" in str(series.blocks) and "latency" in str(series.blocks)
    # The failure is a new post that mentions the incident commander, with the three choices.
    ask = next(m for m in h.thread() if "failed — the next phase is held" in str(m.blocks))
    assert f"<@{IC}>" in str(ask.blocks)
    labels = [b.text for b in h.fake.buttons(CH, h.thread_ts()) if b.action_id.startswith("rb_answer_")]
    assert labels == ["Extend monitoring", "Re-enable maintenance", "Continue anyway"]
    assert not (h.workdir / "maintenance.log").read_text().count("off")
    # Only approvers and incident commanders may answer.
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), text="Continue anyway"), NOBODY)
    await h.idle()
    assert "Only approvers and incident commanders" in _ephemerals_to(h, NOBODY)[-1]
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), text="Continue anyway"), IC)
    await h.idle()
    inc = await h.incident()
    assert inc.status is Status.COMPLETED
    assert (h.workdir / "maintenance.log").read_text().split() == ["on", "off"]
    _assert_thread_matches_state(h, await _state_messages(h))


async def test_reenable_maintenance_and_extend_from_slack(harness: Harness, health: HealthServer) -> None:
    h = harness
    await _open_incident(h)
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), IC)
    await h.idle()
    health.mode = "failing"
    await _fire(h)
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), text="Re-enable maintenance"), LEAD)
    await h.idle()
    assert (h.workdir / "maintenance.log").read_text().split() == ["on", "on"]
    health.mode = "ok"
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), text="Extend monitoring"), IC)
    await h.idle()
    for step in (0, 60, 60):
        await _fire(h, step)
    assert (await h.incident()).status is Status.COMPLETED
    assert len(_series_messages(h)) == 2  # the failed series and the extended one
    assert "availability 100%" in str(_series_messages(h)[-1].blocks)
    _assert_thread_matches_state(h, await _state_messages(h))


async def test_p3_scheduled_shown_and_cancelled_by_an_approver(harness: Harness) -> None:
    h = harness
    await _open_incident(h, severity="P3", impact="Low", risk="Medium")
    inc = await h.incident()
    assert inc.decision == "Next maintenance window"
    assert "Scheduled:* maintenance window Sat 2026-11-28 02:00 Europe/Berlin" in str(h.thread()[0].blocks)
    cancel = h.fake.find_button(CH, h.thread_ts(), text="Cancel the scheduled rollback")
    await h.driver.press(cancel, NOBODY)
    await h.idle()
    assert "Only an approver may cancel" in _ephemerals_to(h, NOBODY)[-1]
    # Approvals are collected before the window; the run then waits for it.
    for user in (LEAD, PO):
        await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), user)
        await h.idle()
    assert (await h.services.engine.waiting_for(inc.id)).kind == "window"  # type: ignore[union-attr]
    assert not (h.workdir / "maintenance.log").exists()
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), text="Cancel the scheduled rollback"), LEAD)
    await h.idle()
    inc = await h.incident()
    assert inc.status is Status.ABORTED
    assert h.services.clock is not None and h.services.clock.jobs.jobs(inc.id) == []
    await _fire(h, (dt.datetime(2026, 11, 28, 1, 0, tzinfo=dt.UTC) - T0).total_seconds())
    assert not (h.workdir / "maintenance.log").exists()
    assert "Cancelled by" in str(h.thread())
    _assert_thread_matches_state(h, await _state_messages(h))
