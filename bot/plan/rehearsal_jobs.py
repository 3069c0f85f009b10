"""Scheduled rehearsals: cron jobs in the bot's scheduler, each reported to its channel.

A job runs ``rollback-bot rehearse`` as a child process (a rehearsal has its own engine and
scheduler, apart from the bot's) and posts the result; a failed rehearsal mentions the
incident commanders. The job function is module level and its arguments are plain
strings, so the persistent job store can pickle it; the live bot's Slack poster is found
through ``install``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from bot.clock.scheduler import JobScheduler
from bot.core.config import INCIDENT_COMMANDER, BotConfig

log = logging.getLogger(__name__)

JOB_PREFIX = "rehearsal:"


@dataclass
class Reporter:
    """How a scheduled rehearsal reaches people: a Slack post and the mentions of a role."""

    post: Callable[[str, str], Awaitable[None]]
    mention: Callable[[list[str]], str]


_reporter: Reporter | None = None


def install(reporter: Reporter | None) -> None:
    """Make ``reporter`` the one scheduled rehearsals post through (None: forget it)."""
    global _reporter
    _reporter = reporter


def schedule_rehearsals(jobs: JobScheduler, config: BotConfig, config_path: str) -> list[str]:
    """One cron job per configured rehearsal (stable ids); jobs no longer configured are removed."""
    ids = []
    for i, r in enumerate(config.rehearsals):
        trigger = CronTrigger.from_crontab(r.cron, timezone=ZoneInfo(r.timezone))
        ids.append(jobs.schedule_cron(f"{JOB_PREFIX}{r.target}:{i}", scheduled_rehearsal, trigger,
                                      config_path=config_path, target=r.target, channel=r.channel,
                                      strategy=r.strategy, time_scale=r.time_scale))
    jobs.remove_jobs(JOB_PREFIX, keep=set(ids))
    return ids


def report_text(target: str, result: dict[str, Any] | None, problem: str, mention: str) -> str:
    """The channel post of one scheduled rehearsal."""
    if result is not None and result.get("passed"):
        return (f"✅ Scheduled rehearsal on `{target}` passed: strategy {result['strategy']}, recovery "
                f"{result['recovery_seconds']} s, data loss {result['data_loss_records']} records, runbook "
                f"`{str(result['runbook_sha256'])[:12]}`.")
    failed = [f"{c['name']}: {c['detail']}" for c in (result or {}).get("checks", []) if not c.get("ok")]
    why = "; ".join(failed)[:1500] or problem[-1500:] or "no result"
    return f"❌ Scheduled rehearsal on `{target}` FAILED: {why}" + (f"\n{mention}" if mention else "")


async def scheduled_rehearsal(*, config_path: str, target: str, channel: str, strategy: str = "C",
                              time_scale: float = 0.01) -> None:
    """Rehearse ``target`` in a child process and post the result to ``channel``."""
    argv = [sys.executable, "-m", "bot.cli.main", "rehearse", "--config", config_path, "--target", target,
            "--strategy", strategy, "--time-scale", str(time_scale), "--json"]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    result: dict[str, Any] | None = None
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                continue
            break
    problem = err.decode("utf-8", "replace").strip() or f"rehearse exited with status {proc.returncode}"
    reporter = _reporter
    if reporter is None:
        log.warning("scheduled rehearsal of %s ended (passed: %s) with no Slack reporter installed",
                    target, bool(result and result.get("passed")))
        return
    mention = "" if result and result.get("passed") else reporter.mention([INCIDENT_COMMANDER])
    await reporter.post(channel, report_text(target, result, problem, mention))
