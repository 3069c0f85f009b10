"""Step runs: every attempt of every step, begun on disk before its side effect starts and
ended with what it did (journaled in the same transaction, with the files it made)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from bot.core.lifecycle import StepStatus
from bot.state.schema import check_fence
from bot.state.store.database import Database
from bot.state.store.rows import AlreadyAnswered, ArtifactFile, StepRun, aware, from_row, jsonable, utcnow
from bot.state.store.tables import artifacts_table, journal, step_runs


class StepRecords(Database):
    """The step_runs table: attempts, their status, captures, questions and answers."""

    async def step_runs(self, incident_id: str) -> list[StepRun]:
        """Every attempt of every step, oldest first."""
        return await self._of_incident(step_runs, StepRun, incident_id)

    async def latest_runs(self, incident_id: str) -> dict[str, StepRun]:
        """The latest attempt of each step."""
        latest: dict[str, StepRun] = {}
        for run in await self.step_runs(incident_id):
            latest[run.step_id] = run
        return latest

    async def begin_step(
        self, incident_id: str, step_id: str, phase_id: str, *, status: StepStatus = StepStatus.RUNNING,
        waiting: dict[str, Any] | None = None, now: dt.datetime | None = None,
    ) -> StepRun:
        """Record a new attempt; a running one is on disk before its side effect starts."""
        now = now or utcnow()
        async with self._write(incident_id) as conn:
            last = (await conn.execute(
                sa.select(sa.func.max(step_runs.c.attempt)).where(
                    step_runs.c.incident_id == incident_id, step_runs.c.step_id == step_id)
            )).scalar()
            attempt = (last or 0) + 1
            res = await conn.execute(step_runs.insert().values(
                incident_id=incident_id, step_id=step_id, phase_id=phase_id,
                attempt=attempt, status=status.value, started_at=now, captures={},
                output_tail="", waiting=waiting,
            ))
            ev = await conn.execute(journal.insert().values(
                incident_id=incident_id, at=now, kind=f"step_{status.value}", step_id=step_id,
                data={"attempt": attempt, **({"waiting": waiting} if waiting else {})},
            ))
            run_id = int(res.inserted_primary_key[0])  # type: ignore[index]
            event_id = int(ev.inserted_primary_key[0])  # type: ignore[index]
        if status is StepStatus.RUNNING:
            await self.sync(upto=event_id)
        return StepRun(id=run_id, incident_id=incident_id, step_id=step_id, phase_id=phase_id, attempt=attempt,
                       status=status, started_at=now, ended_at=None, duration=None, exit_status=None,
                       output_tail="", output_digest=None, output_bytes=None, captures={}, error=None,
                       waiting=waiting, answer=None)

    async def step_run(self, run_id: int) -> StepRun:
        """One attempt by its id."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(step_runs).where(step_runs.c.id == run_id))).one()
        return from_row(StepRun, row)

    async def end_step(
        self, run_id: int, status: StepStatus, *, actor: str | None = None,
        now: dt.datetime | None = None, artifacts: list[ArtifactFile] | None = None, **values: Any,
    ) -> StepRun:
        """Finish (or re-state) an attempt: done, failed, skipped, waiting, interrupted.

        ``artifacts``: files the attempt made, tracked in the same transaction.
        """
        now = now or utcnow()
        async with self.engine.begin() as conn:
            q = sa.select(step_runs).where(step_runs.c.id == run_id)
            if values.get("answer") is not None and conn.dialect.name == "postgresql":
                q = q.with_for_update()  # two replicas answering at once: the first one wins
            row = (await conn.execute(q)).one()
            if values.get("answer") is not None and row.answer is not None:
                raise AlreadyAnswered(f"step {row.step_id!r} was already answered by {row.answer.get('user')}")
            await check_fence(conn, row.incident_id)
            if status in (StepStatus.DONE, StepStatus.FAILED, StepStatus.SKIPPED):
                values.setdefault("ended_at", now)
                if row.started_at is not None:
                    values.setdefault("duration", (now - aware(row.started_at)).total_seconds())  # type: ignore[operator]
            await conn.execute(step_runs.update().where(step_runs.c.id == run_id).values(
                status=status.value, **values))
            data = {k: v for k, v in values.items()
                    if k in ("exit_status", "error", "duration", "captures", "answer", "waiting")}
            data["attempt"] = row.attempt
            await conn.execute(journal.insert().values(
                incident_id=row.incident_id, at=now, kind=f"step_{status.value}",
                step_id=row.step_id, actor=actor, data=jsonable(data),
            ))
            if artifacts:
                await conn.execute(artifacts_table.insert(), [
                    {"incident_id": row.incident_id, "step_id": a.step_id, "name": a.name, "path": a.path,
                     "sha256": a.sha256, "bytes": a.bytes, "at": a.at} for a in artifacts])
        run = from_row(StepRun, row)
        for key, value in values.items():
            setattr(run, key, aware(value) if isinstance(value, dt.datetime) else value)
        run.status = status
        return run
