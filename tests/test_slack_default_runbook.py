"""The whole default runbook from Slack: ``/rollback start`` to completion against the drill sandbox.

Real Bolt stack, the Slack fake, a real SQLite database in WAL mode behind a real app under a
process manager; the target is reached through the local transport, then through a real sshd.
Only buttons the bot posted are pressed: the approvals (the product owner holds the role through
a user-group handle), the strategy, the backup (behind a confirm dialog). The outcome is checked
on the target itself, as the drill does (``bot.drill.verdict``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.config import BotConfig, SlackSecrets, parse_config
from bot.core.lifecycle import Status
from bot.core.runbook import default_runbook
from bot.drill.sandbox import Sandbox, build_sandbox
from bot.drill.verdict import check_verdict
from bot.slack.client import make_client
from bot.slack.services import build_services
from bot.slack.thread import desired_messages
from bot.slack.view import load_state
from handlers.app import create_app
from tests.slack_driver import SlackDriver, bolt_sender
from tests.slack_fake import SlackFake, bot_scopes_from_manifest
from tests.slack_player import Cast, Played, default_answers, play_incident
from tests.sshd import SshdTarget

CH = "C0INCIDENT1"
REQ, LEAD, PO, IC = "U0REQUESTER", "U0LEAD", "U0PRODOWNER", "U0COMMANDER"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """The drill's throwaway production target, stopped after the test."""
    box = await asyncio.to_thread(build_sandbox, tmp_path / "target")
    try:
        yield box
    finally:
        await asyncio.to_thread(box.stop)


def _config(tmp_path: Path, target: dict[str, Any]) -> BotConfig:
    return parse_config({
        "slack": {"channels": ["#incident-response"], "update_interval_seconds": 0.2, "retry_max_seconds": 1},
        "roles": {"tech_lead": {"users": [LEAD]}, "product_owner": {"groups": ["@product-owners"]},
                  "incident_commander": {"users": [IC]}},
        "targets": [{"name": "sandbox", **target}],
        "state_db": str(tmp_path / "state.db"),
        "artifacts_dir": str(tmp_path / "artifacts"),
        "time_scale": 0.002,  # the plan's waits, compressed
        # a short extended watch; a second of latency floor for a busy machine
        "stability": {"watch_seconds": 300, "watch_interval_seconds": 60, "baseline_floor_ms": 1000},
    })


async def _play(tmp_path: Path, sandbox: Sandbox, target: dict[str, Any], strategy: str) -> None:
    # The token holds exactly the manifest's scopes: a call needing any other one fails.
    fake = SlackFake(users={u: u.lower() for u in (REQ, LEAD, PO, IC)}, scopes=bot_scopes_from_manifest(),
                     usergroups={"S0PRODUCT": {"handle": "product-owners", "users": [PO]}})
    fake.add_channel(CH, "incident-response")
    await fake.start()
    config = _config(tmp_path, {**target, **sandbox.settings()})
    secrets = SlackSecrets.model_validate({
        "slack_bot_token": fake.bot_token, "slack_signing_secret": fake.signing_secret,
        "slack_api_url": fake.base_url})
    services = await build_services(config, make_client(secrets))
    try:
        app = create_app(secrets, services)
        await services.resume()
        driver = SlackDriver(fake, bolt_sender(app), default_user_id=REQ)
        played = await play_incident(
            fake=fake, driver=driver, services=services, channel=CH, target="sandbox",
            cast=Cast(requester=REQ, approvers=[LEAD, PO], answerer=IC),
            answers=default_answers(strategy=strategy, backup=sandbox.backup_path.name))
        inc = played.incident
        assert inc.status is Status.COMPLETED, inc.status
        _check_presses(played, sandbox, strategy)
        await _check_thread(fake, services, inc.id, strategy)
        t = services.targets["sandbox"]
        verdict = await check_verdict(store=services.store, incident=inc, transport=t.transport,
                                      settings=t.settings, sandbox=sandbox, strategy=strategy)
        assert verdict.passed, [(c.name, c.detail) for c in verdict.checks if not c.ok]
        assert verdict.data_loss_records == {"A": 1, "B": 0, "C": 16}[strategy], verdict.data_loss_detail
    finally:
        await services.close()
        await fake.stop()


def _check_presses(played: Played, sandbox: Sandbox, strategy: str) -> None:
    texts = [c.text for c in played.pressed]
    assert texts[:2] == ["Approve", "Approve"]
    strategy_press = next(c for c in played.pressed if c.text.startswith(f"{strategy}:"))
    assert strategy_press.confirm  # it leads on to a destructive step
    if strategy in ("A", "C"):
        backup = next(c for c in played.pressed if c.text == sandbox.backup_path.name)
        assert backup.confirm, "the restore is destructive: its button asks for a confirmation"
        # The decoy (older) backup was offered too, with its size and time.
        assert texts.index(sandbox.backup_path.name) > texts.index(strategy_press.text)
    assert not [t for t in texts if t in ("Retry", "Skip", "Abort", "Re-run", "Mark done")]


async def _check_thread(fake: SlackFake, services: Any, incident_id: str, strategy: str) -> None:
    roots = [m for m in fake.messages(CH) if not m.is_reply]
    assert len(roots) == 1
    root = roots[0]
    assert incident_id in root.text and "completed" in root.text and root.edits
    thread = fake.thread(CH, root.ts)[1:]
    # One message per phase, edited in place, each showing the phase done.
    for phase in default_runbook().phases:
        if phase.id == "authorization":
            continue
        shown = [m for m in thread if m.text.startswith(f"{phase.title}: ")]
        assert len(shown) == 1, (phase.title, len(shown))
        assert shown[0].text == f"{phase.title}: done", shown[0].text
    edited = [m for m in thread if m.edits and "Phase" in m.text]
    assert len(edited) >= 3, "phase checklists are edited in place as steps run"
    restoration = next(m for m in thread if "*Phase 3: Database Restoration*" in str(m.blocks))
    facts = {"A": "restored: ", "C": "restored_from: "}[strategy]
    assert facts in str(restoration.blocks), str(restoration.blocks)[:500]
    backup_phase = next(m for m in thread if "*Phase 2: Database State Assessment" in str(m.blocks))
    assert "file_sha256" in str(backup_phase.blocks)
    # Milestones broadcast to the channel.
    broadcast = " ".join(str(m.blocks) for m in thread if m.reply_broadcast)
    for words in ("approved by", "database restoration done", "completed"):
        assert words in broadcast, words
    # Long output went into files in the thread; no message holds a wall of text.
    files = [f for f in fake.files if f.completed]
    assert files and all(f.thread_ts == root.ts and f.channel == CH for f in files)
    assert len({f.filename for f in files}) == len(files), "no file uploaded twice"
    assert all(len(m.text) < 3000 for m in thread)
    # Nothing doubled: the thread holds exactly what the state calls for.
    state = await load_state(services.store, services.runbook, incident_id)
    want = desired_messages(state, services.runbook, services.policy,
                            upload_over=services.config.slack.upload_over_bytes)
    assert len([m for m in thread if not m.files]) == len([w for w in want if w.file is None]) - 1
    assert len([m for m in thread if m.files]) == len([w for w in want if w.file is not None]) == len(files)
    # Nothing left to press but the tracked Phase 7 reminders (root cause, lessons learned).
    left = fake.buttons(CH, root.ts) + fake.choices(CH, root.ts)
    assert all(c.text.startswith("Done: ") and "phase7" in c.block_id for c in left), [c.describe() for c in left]


async def test_default_runbook_from_slack_local_target(tmp_path: Path, sandbox: Sandbox) -> None:
    await _play(tmp_path, sandbox, {"transport": "local"}, strategy="C")


async def test_default_runbook_from_slack_selective_rollback(tmp_path: Path, sandbox: Sandbox) -> None:
    await _play(tmp_path, sandbox, {"transport": "local"}, strategy="A")


async def test_default_runbook_from_slack_over_sshd(tmp_path: Path, sandbox: Sandbox,
                                                    sshd_target: SshdTarget) -> None:
    await _play(tmp_path, sandbox, {
        "transport": "ssh", "host": sshd_target.host, "port": sshd_target.port, "user": sshd_target.username,
        "key_file": str(sshd_target.client_key_path), "known_hosts": str(sshd_target.known_hosts_path),
    }, strategy="C")
