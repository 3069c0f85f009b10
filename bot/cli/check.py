"""``rollback-bot check``: is everything ready before the first incident? It also prints the strategies
each target's schema supports (and for each it does not, why and which setting to add).

Sections, each a function from the settings to problem lines (``key: reason``), run in
``SECTIONS`` order: the config (runbook, roles, every path setting), each target (the
preflight the default runbook runs first, see ``bot.core.preflight``), and Slack (bot token and its
granted scopes against the manifest's, app token, the bot in each configured channel, user
groups). The exit status is 0 only when no section found a problem.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

import httpx

from bot.cli.strategy_check import target_strategy_lines
from bot.core.config import ConfigError, Settings, load_settings
from bot.core.preflight import run_preflight
from bot.core.runbook import ApprovalStep, Runbook, RunbookError, default_runbook, load_runbook
from bot.core.targets import open_transport, open_transports

Section = Callable[[Settings], Awaitable[list[str]]]


async def config_problems(settings: Settings) -> list[str]:
    """The runbook loads and fits the config, somebody holds a role, every path setting is usable."""
    problems: list[str] = []
    cfg = settings.config
    runbook: Runbook | None = None
    try:
        runbook = load_runbook(cfg.runbook) if cfg.runbook else default_runbook()
    except RunbookError as exc:
        problems += [f"runbook: {p}" for p in exc.problems]
    except OSError as exc:
        problems.append(f"runbook: {cfg.runbook}: cannot read ({exc.strerror})")
    if runbook is not None:
        for _, step in runbook.steps():
            if isinstance(step, ApprovalStep) and step.policy != "default":
                problems.append(f"runbook: step {step.id!r} uses policy {step.policy!r}; the config defines "
                                "only 'policy' (named 'default')")
            if step.target and cfg.target(step.target) is None:
                problems.append(f"runbook: step {step.id!r} names target {step.target!r}, which is not in targets")
    if not any(m.users or m.groups for m in cfg.roles.values()):
        problems.append("roles: nobody holds a role; no approval could ever count")
    problems += cfg.path_problems()
    return problems


async def target_problems(settings: Settings, notes: list[str] | None = None) -> list[str]:
    """Each target's preflight: one line per failed check, naming the target and the check; ``notes``
    gets what each ready target's schema supports (strategies, guessed change-log columns)."""
    notes = [] if notes is None else notes
    async with httpx.AsyncClient() as http:
        results = await asyncio.gather(*(_preflight(i, settings, http, notes)
                                         for i in range(len(settings.config.targets))))
    return [line for lines in results for line in lines]


async def _preflight(index: int, settings: Settings, http: httpx.AsyncClient, notes: list[str]) -> list[str]:
    target = settings.config.targets[index]
    key = f"targets[{index}] ({target.name})"
    hosts = open_transports(target) if target.is_group else {}
    transport = next(iter(hosts.values())) if hosts else open_transport(target)
    try:
        findings = await run_preflight(target, transport, http=http, hosts=hosts or None)
        failed = [f"{key}: preflight {f.check}: {f.detail}" for f in findings if f.ok is False]
        if not any(f.ok is False and f.check in ("ssh", "workdir", "python", "database") for f in findings):
            # Which strategies the target's schema supports (read-only, through the agent).
            lines, problem = await target_strategy_lines(key, transport, target)
            notes.extend(lines)
            failed += [problem] if problem else []
    finally:
        for t in {id(t): t for t in (transport, *hosts.values())}.values():
            await t.close()
    return failed


async def slack_problems(settings: Settings) -> list[str]:
    """Tokens (bot by auth.test, app by apps.connections.open), scopes, channel membership, user groups."""
    from bot.core.roles import RoleDirectory
    from bot.slack.client import channel_problems, make_client, scope_problems, verify_app_token, verify_token

    problems = list(settings.secrets.problems())
    if any(p.startswith("SLACK_BOT_TOKEN") for p in problems):
        return problems
    client = make_client(settings.secrets)
    problem = await verify_token(client)
    if problem:
        return [*problems, problem]
    problems += await scope_problems(client)
    app_token = settings.secrets.slack_app_token
    if settings.secrets.socket_mode and app_token is not None:
        problem = await verify_app_token(client, app_token.get_secret_value())
        if problem:
            problems.append(problem)
    problems += await channel_problems(client, settings.config.slack.channels)
    # User groups (by id or handle) must resolve, or their members could never approve.
    problems += await RoleDirectory(settings.config.roles, client).warm()
    return problems


#: What ``check`` looks at, in order; ``slack`` is left out by ``run_checks(slack=False)``.
SECTIONS: dict[str, Section] = {"config": config_problems, "targets": target_problems, "slack": slack_problems}


async def run_checks(settings: Settings, *, slack: bool = True, notes: list[str] | None = None) -> list[str]:
    """Every problem found, one ``key: reason`` line each; ``notes`` gets what each target supports."""
    names = [name for name in SECTIONS if slack or name != "slack"]
    results = await asyncio.gather(*(target_problems(settings, notes) if name == "targets" else SECTIONS[name](settings)
                                     for name in names))
    problems = [p for lines in results for p in lines]
    return sorted(set(problems), key=problems.index)


async def last_tested_line(settings: Settings) -> str | None:
    """The "Last tested" line of the configured runbook, from the state store (never created here)."""
    from pathlib import Path

    from bot.plan.render import runbook_sha256
    from bot.record.last_tested import last_tested
    from bot.state.store import Store

    cfg = settings.config
    exists = await asyncio.to_thread(Path(cfg.state_db).is_file)
    if "://" not in cfg.state_db and not exists:
        return "runbook: Last tested: never (no state store yet)"
    try:
        runbook = load_runbook(cfg.runbook) if cfg.runbook else default_runbook()
    except RunbookError:
        return None
    store = await Store.open(cfg.state_db)
    try:
        info = await last_tested(store, runbook_sha256(runbook))
    finally:
        await store.close()
    return f"runbook {runbook_sha256(runbook)[:12]}: {info['text']}"


def check_main(config: str | None, *, out: TextIO | None = None) -> int:
    """Entry point of ``rollback-bot check``."""
    out = out or sys.stdout
    try:
        settings = load_settings(config, require_secrets=False)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=out)
        print(f"check: {len(exc.problems)} problem(s)", file=out)
        return 1
    notes: list[str] = []
    problems = asyncio.run(run_checks(settings, notes=notes))
    for line in notes:
        print(line, file=out)
    for p in problems:
        print(p, file=out)
    tested = asyncio.run(last_tested_line(settings))
    if tested:
        print(tested, file=out)
    print("check: OK" if not problems else f"check: {len(problems)} problem(s)", file=out)
    return 0 if not problems else 1
