"""``rollback-bot check``: config, runbook, SSH to every target, and the Slack token.

Every problem is printed with the key it is about; the exit status is 0 only when
there are none.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from actions.errors import ActionError
from bot.config import ConfigError, Settings, load_settings
from bot.runbook import ApprovalStep, Runbook, RunbookError, default_runbook, load_runbook
from bot.targets import open_transport


async def _check_target(index: int, settings: Settings) -> str | None:
    target = settings.config.targets[index]
    key = f"targets[{index}] ({target.name})"
    transport = open_transport(target)
    try:
        res = await transport.run(f"test -d {_quote(target.workdir)} && echo ok", timeout=target.connect_timeout + 10)
    except ActionError as exc:
        return f"{key}: {target.transport} to {target.user}@{target.host}:{target.port} failed: " \
               f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        return f"{key}: cannot reach {target.host}:{target.port}: {exc}"
    finally:
        await transport.close()
    if res.exit_status != 0:
        return f"{key}.workdir: {target.workdir!r} is not a directory on the target"
    return None


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


async def run_checks(settings: Settings, *, slack: bool = True) -> list[str]:
    """Every problem found, one ``key: reason`` line each."""
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
    results = await asyncio.gather(*(_check_target(i, settings) for i in range(len(cfg.targets))))
    problems += [r for r in results if r]
    if slack:
        from bot.slack_client import make_client, verify_token

        client = make_client(settings.secrets)
        problem = await verify_token(client)
        if problem:
            problems.append(problem)
        else:
            from bot.roles import RoleDirectory

            # User groups (by id or handle) must resolve, or their members could never approve.
            problems += await RoleDirectory(cfg.roles, client).warm()
        problems += settings.secrets.problems()
    return sorted(set(problems), key=problems.index)


async def last_tested_line(settings: Settings) -> str | None:
    """The "Last tested" line of the configured runbook, from the state store (never created here)."""
    from pathlib import Path

    from bot.last_tested import last_tested
    from bot.plan import runbook_sha256
    from bot.store import Store

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
    problems = asyncio.run(run_checks(settings))
    for p in problems:
        print(p, file=out)
    tested = asyncio.run(last_tested_line(settings))
    if tested:
        print(tested, file=out)
    print("check: OK" if not problems else f"check: {len(problems)} problem(s)", file=out)
    return 0 if not problems else 1
