"""``rollback-bot check``: a ready setup is OK; an unready target, a bot outside its channel,
missing scopes and a refused app token are each named."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from bot.cli.check import SECTIONS, run_checks
from bot.core.config import Settings, SlackSecrets, parse_config
from bot.slack.client import MANIFEST_BOT_SCOPES
from tests.health_server import HealthServer
from tests.slack_fake import SlackFake
from tests.test_preflight import make_ready

CH, CH2 = "C0INCIDENT1", "C0OTHER0001"


def _config(tmp_path: Path, targets: list[dict[str, Any]], channels: list[str]) -> Any:
    return parse_config({
        "slack": {"channels": channels},
        "roles": {"tech_lead": {"users": ["U0LEAD"]}, "incident_commander": {"users": ["U0IC"]}},
        "targets": targets,
        "state_db": str(tmp_path / "state" / "state.db"),
    })


async def test_a_ready_setup_passes(tmp_path: Path) -> None:
    async with HealthServer() as hs, SlackFake(scopes=MANIFEST_BOT_SCOPES) as fake:
        fake.add_channel(CH, "incident-response")
        config = _config(tmp_path, [make_ready(tmp_path, hs.url)], [CH, "#incident-response"])
        secrets = SlackSecrets(slack_bot_token=fake.bot_token, slack_app_token=fake.app_token,
                               slack_api_url=fake.base_url)
        assert await run_checks(Settings(config, secrets)) == []
        assert fake.calls_to("apps.connections.open") and fake.calls_to("conversations.history")
    assert list(SECTIONS) == ["config", "targets", "slack"]


async def test_every_unready_part_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    async with HealthServer() as hs, SlackFake(scopes=[s for s in MANIFEST_BOT_SCOPES if s != "files:write"]) as fake:
        fake.add_channel(CH, "incident-response")
        fake.add_channel(CH2, "other", is_member=False)
        targets = [make_ready(tmp_path, hs.url),
                   {"name": "empty", "transport": "local", "workdir": str(empty), "health_url": hs.url,
                    "pm_status": "printf '[]'"}]
        config = _config(tmp_path, targets, [CH, CH2])
        secrets = SlackSecrets(slack_bot_token=fake.bot_token, slack_app_token="xapp-1-revoked",
                               slack_api_url=fake.base_url)
        problems = await run_checks(Settings(config, secrets))
    print("check found:", *problems, sep="\n  ")
    assert problems == [
        "targets[1] (empty): preflight env_file: .env.production does not exist",
        "targets[1] (empty): preflight disk: databases/production.db does not exist",
        problems[2],
        problems[3],
        "targets[1] (empty): preflight app: orbis-forge-admin is not listed by `printf '[]'`",
        "SLACK_BOT_TOKEN: the app lacks the manifest's scope(s) files:write; "
        "update the app from manifest.yml and reinstall it",
        "SLACK_APP_TOKEN: apps.connections.open refused it (invalid_auth)",
        f"slack.channels[1]: the bot is not in {CH2}; invite it: /invite @rollback-bot",
    ]
    assert problems[2].startswith("targets[1] (empty): preflight database: databases/production.db does not open")
    assert problems[3].startswith("targets[1] (empty): preflight backups: cannot list production_backup_*.db")


def test_check_command_prints_each_problem_and_exits_1(tmp_path: Path, monkeypatch: Any) -> None:
    from bot.cli.check import check_main

    (tmp_path / "bot.yml").write_text(
        "slack: {channels: [C0INCIDENT1]}\nroles: {tech_lead: {users: [U0LEAD]}}\n"
        f"state_db: {tmp_path / 'a-file' / 'state.db'}\n"
        f"targets: [{{name: t1, workdir: {tmp_path}, key_file: {tmp_path / 'id_ed25519'}, "
        f"known_hosts: {tmp_path / 'known_hosts'}}}]\n")
    (tmp_path / "a-file").write_text("")
    for var in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        monkeypatch.delenv(var, raising=False)
    out = io.StringIO()
    assert check_main(str(tmp_path / "bot.yml"), out=out) == 1
    lines = out.getvalue().splitlines()
    assert f"targets[0] (t1).key_file: {tmp_path / 'id_ed25519'} does not exist" in lines
    assert any(line.startswith("state_db: ") and "is not a folder" in line for line in lines)
    assert any(line.startswith("targets[0] (t1): preflight ssh: ") for line in lines)
    assert "SLACK_BOT_TOKEN: not set (the bot token, xoxb-…)" in lines
    problems = [line for line in lines[:-1] if "Last tested" not in line]  # an information line
    assert lines[-1] == f"check: {len(problems)} problem(s)"
