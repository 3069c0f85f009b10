"""A rehearsal: the whole plan against a real staging target, checked by the drill's verdict.

Simulated approvers and answers, compressed waits, the drill's scheduler; then the verdicts
that hold on any target (database equals the chosen backup by content hash, access levels
equal the backup's, maintenance mode off, app healthy, emergency backup verified, governance
row written, audit chain, archive and report) and the measured recovery time and data loss.
Only a target marked ``rehearsal: allowed`` is rehearsed; its result is stored for "Last tested".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from actions.errors import ActionError
from actions.sqlite import sqlite_op
from actions.transport import Transport
from bot.cli.terminal import TerminalView
from bot.core.config import BotConfig
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status
from bot.core.redaction import SECRET_ENV, Redactor, env_secrets
from bot.core.runbook import Runbook
from bot.core.targets import TargetSettings
from bot.drill.clock import DrillClock
from bot.drill.person import Commander, DrillError, policy_approvers, run_simulated
from bot.drill.record_checks import record_checks
from bot.drill.verdict import Check, Verdict
from bot.drill.verdict_point import check_point_verdict
from bot.plan.render import runbook_sha256
from bot.record.last_tested import last_tested, record_rehearsal
from bot.record.records import Records
from bot.record.viewmodel import load
from bot.state.store import Incident, Store, utcnow

REHEARSAL_REQUESTER = "U0REHEARSAL"
REHEARSAL_ANSWERER = "U0REHEARSALIC"


class RehearsalRefused(ValueError):
    """The target may not be rehearsed, or the rehearsal cannot start; the message says why."""


@dataclass
class ChosenBackup:
    """The backup a rehearsal went back to, measured on the target (a ``ChosenPoint``)."""

    backup_path: Path
    backup_content_hash: dict[str, Any]
    original_access_levels: dict[str, str]
    deployment_keys: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class RehearsalResult:
    """What a rehearsal did and found."""

    target: str
    incident_id: str
    status: Status
    strategy: str
    verdict: Verdict
    recovery_seconds: float
    runbook_sha256: str
    backup: str
    root: Path
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Completed with every check passing."""
        return self.status is Status.COMPLETED and self.verdict.passed


def allowed(settings: TargetSettings) -> None:
    """Refuse a target not marked for rehearsals, with the reason."""
    if settings.rehearsal != "allowed":
        raise RehearsalRefused(
            f"target {settings.name!r} is not marked 'rehearsal: allowed' in the config: a rehearsal "
            "restores its database, puts it in maintenance mode and restarts its app, so only a staging "
            "target marked for it is rehearsed")


async def _op(transport: Transport, settings: TargetSettings, name: str, **params: Any) -> dict[str, Any]:
    return await sqlite_op(transport, name, params, timeout=600, python=settings.python, cwd=settings.workdir)


async def newest_backup(transport: Transport, settings: TargetSettings) -> str:
    """The newest backup matching the target's ``backup_pattern``."""
    res = await _op(transport, settings, "list_backups", dir=settings.databases_dir, pattern=settings.backup_pattern)
    if not res.get("backups"):
        raise RehearsalRefused(f"target {settings.name!r}: no backup matches {settings.backup_pattern!r} in "
                               f"{settings.databases_dir!r}; a rehearsal needs one to go back to")
    return str(res["backups"][0]["path"])


async def measure_point(transport: Transport, settings: TargetSettings, backup: str,
                        deployment_rows: list[Any] | None) -> ChosenBackup:
    """The chosen backup's content hash and access levels, read on the target."""
    content = await _op(transport, settings, "content_hash", db=backup, tables=None)
    rows = await _op(transport, settings, "query", db=backup, params=[], max_rows=100000,
                     sql="SELECT user_id, access_level FROM user_permissions ORDER BY user_id")
    keys: dict[str, set[str]] = {}
    for row in deployment_rows or []:
        if isinstance(row, list) and len(row) == 2:
            keys.setdefault(str(row[0]), set()).add(str(row[1]))
    return ChosenBackup(Path(backup), content, {str(r[0]): r[1] for r in rows["rows"]}, keys)


async def rehearse(*, config: BotConfig, target: str, runbook: Runbook, strategy: str = "C",
                   backup: str | None = None, out: TextIO | None = None, time_scale: float = 0.01,
                   root: Path | None = None, state: Store | None = None) -> RehearsalResult:
    """Run the whole plan against the staging target, check the verdict, store the result."""
    settings = config.target(target)
    if settings is None:
        raise RehearsalRefused(f"no target {target[:64]!r} in the config "
                               f"(targets: {', '.join(t.name for t in config.targets)})")
    allowed(settings)
    out = out or io.StringIO()
    started_at = utcnow()
    root = root or config.artifacts_dir / "rehearsals" / f"{settings.name}-{started_at:%Y%m%d_%H%M%S}"
    root.mkdir(parents=True, exist_ok=True)
    rb_sha = runbook_sha256(runbook)
    policy = config.policy.policy()
    records = Records.open(config.records.model_copy(update={
        "audit_log": root / "logs" / "governance.jsonl", "evidence_root": root / "evidence",
        "environment": "staging-rehearsal"}))
    view = TerminalView(out)
    target_obj = Target.open(settings)
    store = await Store.open(str(root / "state.db"))
    closers = contextlib.AsyncExitStack()
    try:
        try:
            chosen = backup if strategy == "B" and backup else None
            if strategy == "B" and chosen is None:
                chosen = await newest_backup(target_obj.transport, settings)
        except ActionError as exc:
            raise RehearsalRefused(f"target {settings.name!r}: cannot list backups: {exc}") from None

        async def show(incident_id: str) -> None:
            view.show(await load(store, runbook, incident_id))

        names = [*SECRET_ENV, *(t.github_token_env for t in config.targets)]
        engine = Engine(store, runbook, {settings.name: target_obj}, artifacts_dir=root / "artifacts",
                        time_scale=time_scale, policies={"default": policy}, on_change=show, records=records,
                        redact=Redactor(config.redact, env_secrets(names)))
        closers.push_async_callback(engine.aclose)
        tested = await last_tested(state, rb_sha) if state is not None else None
        inc = await store.create_incident(
            target=settings.name, runbook=runbook.name, severity="P1", decision="IMMEDIATE",
            inputs={"triggers": ["data_corruption"], "impact": "High", "business_risk": "Critical",
                    "description": "Rehearsal of the rollback plan on staging", "rehearsal": True,
                    **({"last_tested": tested} if tested else {})},
            requester=REHEARSAL_REQUESTER, reason=f"Rehearsal of strategy {strategy} on {settings.name}")
        clock = await DrillClock.start(engine, root, time_scale=time_scale, out=out)
        closers.push_async_callback(clock.close)
        person = Commander(strategy, backup, runbook)
        began = time.monotonic()
        inc = await run_simulated(engine, clock, inc.id, approvers=policy_approvers(policy, "U0REHEARSE"),
                                  answer=person, answerer=REHEARSAL_ANSWERER, time_scale=time_scale)
        recovery = time.monotonic() - began
        notes = await clock.summary(inc.id)
        chosen = person.chosen_backup or chosen or await newest_backup(target_obj.transport, settings)
        verdict = await judge(store=store, incident=inc, transport=target_obj.transport, settings=settings,
                              records=records, strategy=strategy, backup=chosen)
        result = RehearsalResult(settings.name, inc.id, inc.status, strategy, verdict, recovery, rb_sha, chosen,
                                 root, notes)
    except (ActionError, DrillError) as exc:
        verdict = Verdict([Check("rehearsal ran to its end", False, f"{type(exc).__name__}: {exc}")])
        result = RehearsalResult(settings.name, "", Status.FAILED, strategy, verdict, 0.0, rb_sha, backup or "",
                                 root)
    finally:
        await closers.aclose()
        await target_obj.close()
        await store.close()
    if state is not None:
        await store_result(state, result, started_at=started_at)
    return result


async def judge(*, store: Store, incident: Incident, transport: Transport, settings: TargetSettings,
                records: Records, strategy: str, backup: str) -> Verdict:
    """The verdicts of an ended rehearsal: the target against the chosen backup, then the records."""
    runs = await store.latest_runs(incident.id)
    rows = runs["deployment_rows"].captures.get("rows") if "deployment_rows" in runs else None
    point = await measure_point(transport, settings, backup, rows)
    verdict = await check_point_verdict(store=store, incident=incident, transport=transport, settings=settings,
                                        sandbox=point, strategy=strategy)
    verdict.checks += await record_checks(store=store, incident=incident, transport=transport, settings=settings,
                                          records=records, data_loss_records=verdict.data_loss_records)
    return verdict


async def store_result(state: Store, result: RehearsalResult, *, started_at: dt.datetime,
                       **detail: Any) -> None:
    """Keep a rehearsal's result for "Last tested" (``detail``: more to keep beside the checks)."""
    await record_rehearsal(state, target=result.target, runbook_sha256=result.runbook_sha256,
                           passed=result.passed, started_at=started_at, incident_id=result.incident_id or None,
                           strategy=result.strategy, recovery_seconds=round(result.recovery_seconds, 2),
                           data_loss_records=result.verdict.data_loss_records,
                           detail={"checks": [c.__dict__ for c in result.verdict.checks],
                                   "backup": result.backup, "root": str(result.root), **detail})


def result_lines(result: RehearsalResult) -> list[str]:
    """The closing lines of a rehearsal: each check, recovery time, data loss, the outcome."""
    v = result.verdict
    lines = [f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in v.checks]
    lines += [f"Incident {result.incident_id or '—'} on {result.target}: {result.status.value}, strategy "
              f"{result.strategy}, backup {result.backup or '—'}",
              f"Recovery time: {result.recovery_seconds:.2f} s (start of run to its end)",
              f"Data loss: {v.data_loss_records} records ({v.data_loss_detail or 'not assessed'})",
              f"Runbook sha256: {result.runbook_sha256}",
              f"REHEARSAL {'PASSED' if result.passed else 'FAILED'}"]
    return lines
