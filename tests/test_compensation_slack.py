"""Abort at several phases of the default runbook, from Slack, against the drill sandbox
reached through a real sshd: the compensation leaves production as the person chose and
the thread's last message says what state it is in.

Each case checks on the target itself: maintenance mode (the env file), access levels
(against the sandbox's originals), the app (GET /health), and the governance row
(``success`` 0, with the outcome in its details).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from actions.sqlite import sqlite_op
from bot.core.config import SlackSecrets, parse_config
from bot.core.lifecycle import Status, StepStatus
from bot.drill.sandbox import Sandbox, build_sandbox
from bot.slack.client import make_client
from bot.slack.services import Services, build_services
from handlers.app import create_app
from tests.slack_driver import SlackDriver, bolt_sender
from tests.slack_fake import SlackFake, bot_scopes_from_manifest
from tests.slack_player import start_incident
from tests.sshd import SshdTarget

CH = "C0INCIDENT1"
REQ, LEAD, PO, IC = "U0REQUESTER", "U0LEAD", "U0PRODOWNER", "U0COMMANDER"
#: Cases that really stopped a run half-way and were checked on the target (printed at the end).
EXERCISED: list[str] = []


@dataclass
class Bot:
    fake: SlackFake
    driver: SlackDriver
    services: Services
    sandbox: Sandbox
    incident_id: str = ""

    async def idle(self) -> None:
        await self.services.idle(timeout=180)

    async def press(self, text: str, user: str = IC) -> None:
        inc = await self.services.store.incident(self.incident_id)
        await self.driver.press(self.fake.find_button(CH, inc.thread_ts, text=text), user)
        await self.idle()

    async def query(self, sql: str) -> list[list[Any]]:
        t = self.services.targets["sandbox"]
        res = await sqlite_op(t.transport, "query", {"db": t.settings.db_path, "sql": sql, "params": [],
                                                     "max_rows": 100000},
                              timeout=60, python=t.settings.python, cwd=t.settings.workdir)
        return list(res["rows"])


@pytest.fixture
async def bot(tmp_path: Path, sshd_target: SshdTarget) -> AsyncIterator[Bot]:
    box = await asyncio.to_thread(build_sandbox, tmp_path / "target")
    fake = SlackFake(users={u: u.lower() for u in (REQ, LEAD, PO, IC)}, scopes=bot_scopes_from_manifest(),
                     usergroups={"S0PRODUCT": {"handle": "product-owners", "users": [PO]}})
    fake.add_channel(CH, "incident-response")
    await fake.start()
    config = parse_config({
        "slack": {"channels": ["#incident-response"], "update_interval_seconds": 0.2, "retry_max_seconds": 1},
        "roles": {"tech_lead": {"users": [LEAD]}, "product_owner": {"groups": ["@product-owners"]},
                  "incident_commander": {"users": [IC]}},
        "targets": [{"name": "sandbox", "transport": "ssh", "host": sshd_target.host, "port": sshd_target.port,
                     "user": sshd_target.username, "key_file": str(sshd_target.client_key_path),
                     "known_hosts": str(sshd_target.known_hosts_path), **box.settings()}],
        "state_db": str(tmp_path / "state.db"),
        "artifacts_dir": str(tmp_path / "artifacts"),
        "time_scale": 0.002,
    })
    secrets = SlackSecrets.model_validate({"slack_bot_token": fake.bot_token,
                                           "slack_signing_secret": fake.signing_secret,
                                           "slack_api_url": fake.base_url})
    services = await build_services(config, make_client(secrets))
    try:
        app = create_app(secrets, services)
        await services.resume()
        yield Bot(fake, SlackDriver(fake, bolt_sender(app), default_user_id=REQ), services, box)
    finally:
        await services.close()
        await fake.stop()
        await asyncio.to_thread(box.stop)


async def _open_and_approve(bot: Bot) -> None:
    inc = await start_incident(fake=bot.fake, driver=bot.driver, services=bot.services, channel=CH,
                               target="sandbox", requester=REQ, idle_timeout=180)
    bot.incident_id = inc.id
    for user in (LEAD, PO):
        await bot.press("Approve", user)


async def _abort_from_slack(bot: Bot, reason: str) -> None:
    r = await bot.driver.slash_command(text=f"abort {bot.incident_id} {reason}", user_id=IC, channel_id=CH)
    assert r.status == 200


def _abort_when_started(bot: Bot, step_id: str, reason: str) -> Callable[[], bool]:
    """Type ``/rollback abort`` the moment ``step_id`` starts (while it runs); True once it did."""
    engine = bot.services.engine
    inner = engine.on_change
    assert inner is not None
    fired: list[bool] = []

    async def hooked(incident_id: str) -> None:
        await inner(incident_id)
        if fired:
            return
        run = (await engine.store.latest_runs(incident_id)).get(step_id)
        if run is not None and run.status is StepStatus.RUNNING:
            fired.append(True)
            await _abort_from_slack(bot, reason)
            for _ in range(6000):  # the slash command's flow runs after Bolt's ack
                if (await engine.store.incident(incident_id)).abort_reason:
                    break
                await asyncio.sleep(0.02)

    engine.on_change = hooked
    return lambda: bool(fired)


async def _target_state(bot: Bot) -> dict[str, Any]:
    t = bot.services.targets["sandbox"]
    env = await t.transport.run(f"cat -- {shlex.quote(t.settings.env_file)}", timeout=10, cwd=t.settings.workdir)
    levels = {str(u): lvl for u, lvl in await bot.query("SELECT user_id, access_level FROM user_permissions")}
    async with httpx.AsyncClient() as client:
        health = await client.get(bot.sandbox.health_url, timeout=10)
    rows = await bot.query("SELECT success, details FROM governance_logs WHERE event_type = 'emergency_rollback' "
                           f"AND json_extract(runtime_context, '$.incident_id') = '{bot.incident_id}'")
    return {
        "maintenance": any(ln.startswith("MAINTENANCE_MODE=true") for ln in env.stdout.splitlines()),
        "access_restored": levels == bot.sandbox.original_access_levels,
        "levels": levels,
        "health": health.status_code,
        "governance": [(r[0], json.loads(r[1])) for r in rows],
    }


async def _final_statement(bot: Bot) -> str:
    inc = await bot.services.store.incident(bot.incident_id)
    assert inc.status is Status.ABORTED, inc.status
    thread = bot.fake.thread(CH, inc.thread_ts)
    end = [m for m in thread if m.reply_broadcast and "aborted" in m.text]
    assert len(end) == 1, [m.text[:80] for m in thread]
    assert not bot.fake.buttons(CH, inc.thread_ts) or all(
        "phase7" in b.block_id for b in bot.fake.buttons(CH, inc.thread_ts))
    return str(end[0].blocks)


async def _run_case(bot: Bot, name: str, body: Callable[[], Awaitable[None]]) -> None:
    await body()
    EXERCISED.append(name)


async def test_abort_before_maintenance(bot: Bot) -> None:
    async def body() -> None:
        fired = _abort_when_started(bot, "health_before", "wrong target after all")
        await _open_and_approve(bot)
        assert fired()
        state = await _target_state(bot)
        assert state["maintenance"] is False and state["access_restored"] and state["health"] == 200
        assert [s for s, _ in state["governance"]] == [0]
        outcome = state["governance"][0][1]["outcome"]
        assert outcome["status"] == "aborted" and outcome["reason"] == "wrong target after all"
        runs = await bot.services.store.latest_runs(bot.incident_id)
        assert "maintenance_on" not in runs and runs["maintenance_choice"].status is StepStatus.SKIPPED
        text = await _final_statement(bot)
        assert "Production is now:* maintenance mode off; access levels (level users): " in text
        assert "application /health answers HTTP 200" in text

    await _run_case(bot, "before maintenance", body)


async def test_abort_after_restriction_turns_maintenance_off(bot: Bot) -> None:
    async def body() -> None:
        await _open_and_approve(bot)
        w = await bot.services.engine.waiting_for(bot.incident_id)
        assert w is not None and w.step_id == "strategy"
        before = await _target_state(bot)
        assert before["maintenance"] and not before["access_restored"] and before["health"] == 503
        await _abort_from_slack(bot, "the deploy was fine")
        await bot.idle()
        assert (await bot.services.store.incident(bot.incident_id)).status is Status.COMPENSATING
        await bot.press("Turn maintenance off")
        state = await _target_state(bot)
        assert state["maintenance"] is False and state["access_restored"] and state["health"] == 200
        assert [s for s, _ in state["governance"]] == [0]
        text = await _final_statement(bot)
        assert "maintenance mode off" in text and "*Undone:*" in text
        assert "Restrict database access to superusers — Put access levels back from the snapshot" in text
        assert "Enable maintenance mode and restart the app — Disable maintenance mode" in text
        assert "Emergency backup of the current state — left as it is" in text

    await _run_case(bot, "after restriction", body)


async def test_abort_after_restore_keeps_maintenance_on(bot: Bot) -> None:
    async def body() -> None:
        fired = _abort_when_started(bot, "verify_restored", "restored the wrong backup")
        await _open_and_approve(bot)
        await bot.press("C: Full database restore")
        await bot.press(bot.sandbox.backup_path.name)
        inc = await bot.services.store.incident(bot.incident_id)
        point = next(b.text for b in bot.fake.buttons(CH, inc.thread_ts) if b.text.startswith("configured boundary"))
        await bot.press(point)  # the deployment the data-loss figures are about
        assert fired()
        runs = await bot.services.store.latest_runs(bot.incident_id)
        assert runs["full_restore"].status is StepStatus.DONE and "start_app" not in runs
        await bot.press("Keep maintenance on")
        state = await _target_state(bot)
        # Maintenance kept on by choice; access put back as the restored database had it (the
        # chosen point's levels, not the bad deployment's); the stopped app started (503).
        with sqlite3.connect(bot.sandbox.backup_path) as conn:
            chosen = {str(u): lvl for u, lvl in conn.execute("SELECT user_id, access_level FROM user_permissions")}
        assert state["maintenance"] is True and state["levels"] == chosen and state["health"] == 503
        assert [s for s, _ in state["governance"]] == [0]
        runs = await bot.services.store.latest_runs(bot.incident_id)
        assert runs["start_app_after_stop"].status is StepStatus.DONE
        text = await _final_statement(bot)
        assert "maintenance mode ON" in text and "application /health answers HTTP 503" in text
        assert "kept by choice: Keep maintenance on by U0COMMANDER" in text
        assert "Full restore from the chosen backup — left as it is" in text
        assert "Stop the application to prevent writes during restoration — Start the application" in text

    await _run_case(bot, "after restore", body)


def test_zz_compensation_cases_exercised(proof_report: Callable[[str], None]) -> None:
    proof_report(f"compensation: {len(EXERCISED)} aborts checked on the target ({', '.join(EXERCISED)})")
