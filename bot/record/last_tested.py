"""Last tested: every rehearsal's result, and the line that says when the plan last passed.

A rehearsal is stored with the sha256 of the runbook file it ran and the target it ran on.
The line shown in Slack, ``check``, the report and the governance record names the last
passing rehearsal (date, runbook hash, recovery time); when the runbook changed since, it
says "not tested with this runbook".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bot.state.store import Store, rehearsals, utcnow


@dataclass
class Rehearsal:
    """One rehearsal's stored result."""

    id: int
    target: str
    runbook_sha256: str
    plan_hash: str | None
    incident_id: str | None
    strategy: str | None
    passed: bool
    recovery_seconds: float | None
    data_loss_records: int | None
    started_at: dt.datetime
    ended_at: dt.datetime
    detail: dict[str, Any] = field(default_factory=dict)


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


async def record_rehearsal(store: Store, *, target: str, runbook_sha256: str, passed: bool,
                           started_at: dt.datetime, plan_hash: str | None = None, incident_id: str | None = None,
                           strategy: str | None = None, recovery_seconds: float | None = None,
                           data_loss_records: int | None = None, detail: dict[str, Any] | None = None) -> int:
    """Store one rehearsal's result; returns its id."""
    async with store.engine.begin() as conn:
        res = await conn.execute(rehearsals.insert().values(
            target=target, runbook_sha256=runbook_sha256, plan_hash=plan_hash, incident_id=incident_id,
            strategy=strategy, passed=passed, recovery_seconds=recovery_seconds,
            data_loss_records=data_loss_records, started_at=started_at, ended_at=utcnow(), detail=detail or {}))
        return int(res.inserted_primary_key[0]) if res.inserted_primary_key else 0


async def rehearsal_history(store: Store, *, target: str | None = None, limit: int = 20) -> list[Rehearsal]:
    """The latest rehearsals (of one target), newest first."""
    query = sa.select(rehearsals).order_by(rehearsals.c.id.desc()).limit(limit)
    if target is not None:
        query = query.where(rehearsals.c.target == target)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    out = []
    for row in rows:
        d = dict(row._mapping)
        d["started_at"], d["ended_at"] = _aware(d["started_at"]), _aware(d["ended_at"])
        out.append(Rehearsal(**d))
    return out


async def last_passing(store: Store, *, runbook_sha256: str | None = None) -> Rehearsal | None:
    """The newest passing rehearsal (of this runbook, when given), on any target."""
    query = sa.select(rehearsals).where(rehearsals.c.passed.is_(True)).order_by(rehearsals.c.id.desc()).limit(1)
    if runbook_sha256 is not None:
        query = query.where(rehearsals.c.runbook_sha256 == runbook_sha256)
    async with store.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    d = dict(row._mapping)
    d["started_at"], d["ended_at"] = _aware(d["started_at"]), _aware(d["ended_at"])
    return Rehearsal(**d)


async def last_tested(store: Store, runbook_sha256: str) -> dict[str, Any]:
    """What "Last tested" says for a runbook: its last passing rehearsal, or the newest of another."""
    same = await last_passing(store, runbook_sha256=runbook_sha256)
    other = same or await last_passing(store)
    info: dict[str, Any] = {"runbook_sha256": runbook_sha256, "this_runbook": same is not None}
    if other is not None:
        info.update(at=other.ended_at.isoformat(), target=other.target, tested_runbook_sha256=other.runbook_sha256,
                    recovery_seconds=other.recovery_seconds, strategy=other.strategy)
    info["text"] = last_tested_text(info)
    return info


def last_tested_text(info: dict[str, Any]) -> str:
    """One line: 'Last tested: 2026-12-01 23:50 UTC on staging, runbook a1b2c3d4e5f6, recovery 11.2 s'."""
    if "at" not in info:
        return "Last tested: never (no passing rehearsal)"
    at = dt.datetime.fromisoformat(info["at"]).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rec = info.get("recovery_seconds")
    what = (f"{at} on {info['target']}, runbook {str(info['tested_runbook_sha256'])[:12]}"
            + (f", strategy {info['strategy']}" if info.get("strategy") else "")
            + (f", recovery {rec:.1f} s" if isinstance(rec, int | float) else ""))
    if info.get("this_runbook"):
        return f"Last tested: {what}"
    return (f"Last tested: not tested with this runbook ({str(info['runbook_sha256'])[:12]}); "
            f"last passing rehearsal {what}")
