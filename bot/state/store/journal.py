"""What the incident gathers beside its steps: approval clicks, the journal, stability
checks and the files it produced."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from bot.state.store.database import Database
from bot.state.store.rows import Approval, Artifact, JournalEvent, StabilityCheck, from_row, jsonable, utcnow
from bot.state.store.tables import approvals, artifacts, journal, stability_checks


class JournalRecords(Database):
    """Approvals, the event log, stability checks and artifacts of an incident."""

    async def add_approval(
        self, incident_id: str, *, user_id: str, roles: list[str], decision: str, counted: bool,
        note: str = "", now: dt.datetime | None = None, plan_hash: str | None = None,
    ) -> Approval:
        """Record a click on Approve or Reject, counted or not, with the plan hash it answered."""
        now = now or utcnow()
        async with self.engine.begin() as conn:
            res = await conn.execute(approvals.insert().values(
                incident_id=incident_id, user_id=user_id, roles=roles, decision=decision,
                counted=counted, note=note, at=now, plan_hash=plan_hash,
            ))
            await conn.execute(journal.insert().values(
                incident_id=incident_id, at=now, kind=f"approval_{decision}", actor=user_id,
                data={"roles": roles, "counted": counted, "note": note, "plan_hash": plan_hash},
            ))
            aid = res.inserted_primary_key[0] if res.inserted_primary_key else 0
        return Approval(int(aid), incident_id, user_id, roles, decision, counted, note, now, plan_hash)

    async def void_approvals(self, incident_id: str, *, reason: str, keep_hash: str) -> int:
        """Stop counting every click that approved another plan than ``keep_hash``; how many."""
        now = utcnow()
        async with self.engine.begin() as conn:
            stale = sa.or_(approvals.c.plan_hash.is_(None), approvals.c.plan_hash != keep_hash)
            res = await conn.execute(approvals.update().where(
                approvals.c.incident_id == incident_id, approvals.c.counted.is_(True), stale,
            ).values(counted=False, note=reason))
            await conn.execute(journal.insert().values(
                incident_id=incident_id, at=now, kind="approvals_void",
                data={"count": res.rowcount, "reason": reason, "plan_hash": keep_hash},
            ))
        return int(res.rowcount or 0)

    async def approvals(self, incident_id: str) -> list[Approval]:
        """Every click, oldest first."""
        return await self._of_incident(approvals, Approval, incident_id)

    # ------------------------------------------------------------ journal, artifacts

    async def log(
        self, incident_id: str, kind: str, *, actor: str | None = None, step_id: str | None = None,
        data: dict[str, Any] | None = None, now: dt.datetime | None = None,
    ) -> None:
        """Append to the incident's event log."""
        async with self._write(incident_id) as conn:
            await conn.execute(journal.insert().values(
                incident_id=incident_id, at=now or utcnow(), kind=kind, actor=actor,
                step_id=step_id, data=jsonable(data or {}),
            ))

    async def events(self, incident_id: str) -> list[JournalEvent]:
        """The event log, oldest first."""
        return await self._of_incident(journal, JournalEvent, incident_id)

    async def add_stability_check(self, check: StabilityCheck) -> bool:
        """Record a check once (journaled too); False when that check was already recorded."""
        values = {k: v for k, v in check.__dict__.items() if k != "id"}
        try:
            async with self._write(check.incident_id) as conn:
                await conn.execute(stability_checks.insert().values(**values))
                await conn.execute(journal.insert().values(
                    incident_id=check.incident_id, at=check.at, kind="stability_check", step_id=check.step_id,
                    data=jsonable({k: v for k, v in values.items() if k not in ("incident_id", "step_id")}),
                ))
        except IntegrityError:
            return False
        return True

    async def stability_checks(self, incident_id: str, run_id: int | None = None) -> list[StabilityCheck]:
        """The recorded checks of an incident (or of one series), in series order."""
        q = sa.select(stability_checks).where(stability_checks.c.incident_id == incident_id)
        if run_id is not None:
            q = q.where(stability_checks.c.run_id == run_id)
        rows = await self._all(q.order_by(stability_checks.c.run_id, stability_checks.c.index))
        return [from_row(StabilityCheck, r) for r in rows]

    async def add_artifact(
        self, incident_id: str, *, step_id: str | None, name: str, path: str, sha256: str, size: int,
    ) -> None:
        """Track a file the incident produced, at the moment it is made."""
        async with self._write(incident_id) as conn:
            await conn.execute(artifacts.insert().values(
                incident_id=incident_id, step_id=step_id, name=name, path=path, sha256=sha256,
                bytes=size, at=utcnow(),
            ))

    async def artifacts(self, incident_id: str) -> list[Artifact]:
        """Files the incident produced, in the order they were made."""
        return await self._of_incident(artifacts, Artifact, incident_id)

