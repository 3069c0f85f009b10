"""``rollback-bot rehearse --channel``: the rehearsal as a real incident in a Slack channel.

The command runs as its own process; the serving bot is the real Bolt stack in-process
against the Slack Web API fake, sharing the state store; the staging target is the drill
sandbox reached through a real sshd. People's clicks are sent as Slack sends them. One
rehearsal is stopped with Ctrl-C (SIGINT), one is approved and answered to its end, one with
another runbook than the bot's is refused by the bot.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bot.core.config import SlackSecrets, load_settings
from bot.core.lifecycle import Status
from bot.core.runbook import default_runbook_text
from bot.drill.sandbox import Sandbox
from bot.record.last_tested import last_tested, rehearsal_history
from bot.slack.client import make_client
from bot.slack.services import Services, build_services
from bot.state.control import local_identity
from bot.state.store import Store
from handlers.app import create_app
from tests.slack_driver import SlackDriver, bolt_sender
from tests.slack_fake import Message, SlackFake
from tests.slack_player import Cast, default_answers, press_until_over
from tests.sshd import SshdTarget
from tests.test_rehearsal import _run
from tests.test_slack_default_runbook import sandbox  # noqa: F401  (the staging target, a fixture)

CH = "C0INCIDENT1"
LEAD, PO, IC = "U0LEAD", "U0PRODOWNER", "U0COMMANDER"
ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, sshd: SshdTarget, box: Sandbox) -> Path:
    ssh = {"transport": "ssh", "host": sshd.host, "port": sshd.port, "user": sshd.username,
           "key_file": str(sshd.client_key_path), "known_hosts": str(sshd.known_hosts_path)}
    (tmp_path / "prod").mkdir()
    (tmp_path / "runbook.yml").write_text(default_runbook_text())
    path = tmp_path / "bot.yml"
    path.write_text(yaml.safe_dump({
        "slack": {"channels": [CH], "update_interval_seconds": 0.2, "retry_max_seconds": 1},
        "roles": {"tech_lead": {"users": [LEAD]}, "product_owner": {"users": [PO]},
                  "incident_commander": {"users": [IC]}},
        "operators": {local_identity()[0]: [IC]},
        "targets": [{"name": "staging", **ssh, **box.settings(), "rehearsal": "allowed"},
                    {"name": "prod", **ssh, "workdir": str(tmp_path / "prod")}],
        "state_db": str(tmp_path / "state.db"), "artifacts_dir": str(tmp_path / "artifacts"),
        "records": {"audit_log": str(tmp_path / "logs" / "governance.jsonl"),
                    "evidence_root": str(tmp_path / "evidence")},
        "runbook": str(tmp_path / "runbook.yml"),
        "time_scale": 0.002,
        "stability": {"watch_seconds": 300, "watch_interval_seconds": 60, "baseline_floor_ms": 1000},
    }))
    return path


async def _until(predicate: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := predicate()):
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)
    return found


async def _rehearse(config: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "handlers.app", "rehearse", "--config", str(config), "--target", "staging",
        "--channel", CH, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


def _new_root(fake: SlackFake, before: set[str]) -> Message | None:
    return next((m for m in fake.messages(CH) if not m.is_reply and m.ts not in before), None)


async def _refusals(config: Path) -> None:
    """Each refused with one line and exit 2, before anything is opened."""
    for argv, why in [
        (["--target", "prod", "--channel", CH], "not marked 'rehearsal: allowed'"),
        (["--target", "staging", "--channel", "C0ELSEWHERE"], "not one of the bot's channels"),
        (["--target", "staging", "--channel", CH], "no serving bot uses the state store"),
        (["--target", "staging", "--channel", CH], f"start `rollback-bot serve --config {config}`"),
        (["--target", "staging", "--channel", CH, "--strategy", "B"], "not with --channel"),
    ]:
        code, out, err = await asyncio.to_thread(_run, "rehearse", "--config", str(config), *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and why in err, err


async def test_rehearsal_in_a_channel_with_real_people(tmp_path: Path, sshd_target: SshdTarget,
                                                      sandbox: Sandbox) -> None:  # noqa: F811
    staging = sandbox
    config_path = _config(tmp_path, sshd_target, staging)
    await _refusals(config_path)

    config = load_settings(str(config_path), require_secrets=False).config
    async with SlackFake(users={u: u.lower() for u in (LEAD, PO, IC)}) as fake:
        fake.add_channel(CH, "incident-response")
        secrets = SlackSecrets.model_validate({"slack_bot_token": fake.bot_token,
                                               "slack_signing_secret": fake.signing_secret,
                                               "slack_api_url": fake.base_url})
        services = await build_services(config, make_client(secrets))
        try:
            await services.resume()
            driver = SlackDriver(fake, bolt_sender(create_app(secrets, services)), default_user_id=IC)
            await _interrupted(fake, services, config_path)
            await _to_the_end(fake, driver, services, config_path, staging)
            await _other_runbook(fake, services, config_path, tmp_path)
        finally:
            await services.close()

    # Both stored; the one that passed is "Last tested" for this runbook.
    store = await Store.open(config.state_db)
    try:
        assert [r.passed for r in await rehearsal_history(store)] == [True, False]
        info = await last_tested(store, hashlib.sha256(default_runbook_text().encode()).hexdigest())
        assert info["this_runbook"] and info["target"] == "staging", info
    finally:
        await store.close()


async def _interrupted(fake: SlackFake, services: Services, config: Path) -> None:
    """Ctrl-C while the approval is asked: the incident is aborted, the verdict says so, exit 1."""
    proc = await _rehearse(config)
    root = await _until(lambda: _new_root(fake, set()), "the rehearsal's root message")
    assert "REHEARSAL" in root.text and "staging" in root.text, root.text
    assert "Rehearsal* on the staging target `staging`" in json.dumps(root.blocks)
    await _until(lambda: any(b.action_id == "rb_approve" for b in fake.buttons(CH, root.ts)), "approval request")
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1, (out.decode()[-2000:], err.decode()[-2000:])
    text = out.decode()
    assert "abort of RB-" in text and "REHEARSAL FAILED" in text, text[-2000:]
    inc = await services.store.incident(root.text.split(":")[0])
    assert inc.status is Status.ABORTED and "interrupted from the command line" in (inc.abort_reason or "")
    await _until(lambda: "aborted" in (fake.message(CH, root.ts) or root).text, "the root shows the abort")
    print(f"rehearsal in a channel: Ctrl-C aborted {inc.id} ({inc.abort_reason})")


async def _to_the_end(fake: SlackFake, driver: SlackDriver, services: Services, config: Path,
                      staging: Sandbox) -> None:
    """Approved by the role holders, strategy and backup chosen in the thread: it passes."""
    before = {m.ts for m in fake.messages(CH) if not m.is_reply}
    proc = await _rehearse(config)
    root = await _until(lambda: _new_root(fake, before), "the second rehearsal's root message")
    inc = await services.store.incident(root.text.split(":")[0])
    played = await press_until_over(
        fake=fake, driver=driver, services=services, channel=CH, incident=inc,
        cast=Cast(requester=IC, approvers=[LEAD, PO], answerer=IC),
        answers=default_answers(strategy="C", backup=staging.backup_path.name))
    assert played.incident.status is Status.COMPLETED, played.incident.status
    assert [c.text for c in played.pressed][:2] == ["Approve", "Approve"]
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    text = out.decode()
    print(text[-3000:])
    assert proc.returncode == 0, (text[-3000:], err.decode()[-2000:])
    for check in ("database content equals the chosen backup's", "access levels equal the originals",
                  "maintenance mode off", "app healthy", "emergency backup verified", "governance row written"):
        assert f"PASS  {check}" in text, check
    assert f"{inc.id} posted in {CH} by serve:" in text and "REHEARSAL PASSED" in text
    assert f"Incident {inc.id} on staging: completed, strategy C" in text, text[-3000:]


async def _other_runbook(fake: SlackFake, services: Services, config: Path, tmp_path: Path) -> None:
    """The bot runs the runbook it loaded: another one is refused by the bot, and nothing is posted."""
    edited = tmp_path / "edited.yml"
    edited.write_text(default_runbook_text() + "# edited\n")
    before = len(fake.messages(CH))
    code, out, err = await asyncio.to_thread(_run, "rehearse", "--config", str(config), "--target", "staging",
                                             "--channel", CH, "--runbook", str(edited))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "the serving bot refused the rehearsal" in err and "not the one given" in err, err
    assert len(fake.messages(CH)) == before
    [refused] = [i for i in await services.store.incidents() if i.status is Status.ABORTED and not i.channel]
    assert "refused by the serving bot" in (refused.abort_reason or "")
