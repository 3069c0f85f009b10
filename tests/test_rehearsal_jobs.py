"""Scheduled rehearsals: a stable cron job in the bot's persistent scheduler, run as a child
process and reported to the channel; a failure mentions the incident commanders."""

from __future__ import annotations

import pickle
from pathlib import Path

import yaml

from bot.core.config import SlackSecrets, load_config
from bot.plan.rehearsal_jobs import scheduled_rehearsal
from bot.slack.client import make_client
from bot.slack.services import build_services
from tests.slack_fake import SlackFake, bot_scopes_from_manifest

CH = "C0REHEARSE"


async def test_a_scheduled_rehearsal_is_one_stable_job_and_a_failure_mentions_the_commanders(
        tmp_path: Path) -> None:
    config_path = tmp_path / "bot.yml"
    config_path.write_text(yaml.safe_dump({
        "slack": {"channels": ["C0INCIDENT1"]},
        "roles": {"incident_commander": {"users": ["U0IC"]}, "tech_lead": {"users": ["U0LEAD"]}},
        # A staging target whose app folder is gone: the rehearsal fails at its first command.
        "targets": [{"name": "staging", "transport": "local", "workdir": str(tmp_path / "gone"),
                     "rehearsal": "allowed"}],
        "rehearsals": [{"target": "staging", "cron": "30 3 * * mon", "timezone": "Europe/Berlin",
                        "channel": CH, "time_scale": 0.002}],
        "state_db": str(tmp_path / "state.db"),
    }))
    config = load_config(config_path)
    fake = SlackFake(users={"U0IC": "ic"}, scopes=bot_scopes_from_manifest())
    fake.add_channel(CH, "rehearsals")
    await fake.start()
    try:
        client = make_client(SlackSecrets(slack_bot_token=fake.bot_token, slack_signing_secret=fake.signing_secret,
                                          slack_api_url=fake.base_url))
        for _ in range(2):  # a restart keeps one job under the same id
            services = await build_services(config, client, config_path=str(config_path))
            try:
                assert services.clock is not None
                await services.clock.start()
                jobs = [j for j in services.clock.jobs.jobs() if j.id.startswith("rehearsal:")]
                assert [j.id for j in jobs] == ["rehearsal:staging:0"]
                assert jobs[0].next_run is not None and jobs[0].next_run.weekday() == 0
                assert jobs[0].func == "bot.plan.rehearsal_jobs:scheduled_rehearsal"
                pickle.dumps(jobs[0].kwargs)
            finally:
                await services.close()
        services = await build_services(config, client, config_path=str(config_path))
        try:
            await scheduled_rehearsal(**jobs[0].kwargs)
        finally:
            await services.close()
        [post] = fake.messages(CH)
        assert "Scheduled rehearsal on `staging` FAILED" in post.text and "<@U0IC>" in post.text, post.text
    finally:
        await fake.stop()
