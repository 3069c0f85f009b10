"""The incidents: opening one (one active per target, enforced by the database), reading
them, and moving them through the lifecycle table with a journal entry."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from bot.core.lifecycle import Event, Status, is_active, transition
from bot.state.store.database import Database
from bot.state.store.rows import Incident, TargetBusy, from_row, utcnow
from bot.state.store.tables import incidents, journal


class IncidentRecords(Database):
    """The incidents table, and the journal entries of each move."""

    async def create_incident(
        self, *, target: str, runbook: str, severity: str | None = None, decision: str | None = None,
        inputs: dict[str, Any] | None = None, requester: str | None = None, reason: str = "",
        now: dt.datetime | None = None,
    ) -> Incident:
        """Open an incident with the next id of the day; ``TargetBusy`` if one is active."""
        now = now or utcnow()
        prefix = f"RB-{now:%Y%m%d}-"
        for _ in range(5):
            try:
                async with self.engine.begin() as conn:
                    busy = (await conn.execute(
                        sa.select(incidents.c.id).where(incidents.c.active_target == target)
                    )).scalar()
                    if busy:
                        raise TargetBusy(target, busy)
                    last = (await conn.execute(
                        sa.select(sa.func.max(incidents.c.id)).where(incidents.c.id.like(prefix + "%"))
                    )).scalar()
                    seq = int(last.rsplit("-", 1)[1]) + 1 if last else 1
                    iid = f"{prefix}{seq:04d}"
                    await conn.execute(incidents.insert().values(
                        id=iid, target=target, active_target=target, runbook=runbook,
                        status=Status.OPEN.value, severity=severity, decision=decision,
                        inputs=inputs or {}, requester=requester, reason=reason,
                        stamp=f"{now:%Y%m%d_%H%M%S}", created_at=now, updated_at=now, view={},
                    ))
                    await conn.execute(journal.insert().values(
                        incident_id=iid, at=now, kind="incident_opened", actor=requester,
                        data={"target": target, "severity": severity, "decision": decision},
                    ))
            except IntegrityError:
                # Another replica (or request) won the race: the transaction is rolled back as a whole.
                busy2 = await self.active_incident(target)
                if busy2:
                    raise TargetBusy(target, busy2.id) from None
                continue  # id race: take the next number
            return await self.incident(iid)
        raise RuntimeError("could not allocate an incident id")

    async def incident(self, incident_id: str) -> Incident:
        """The incident; KeyError when there is none."""
        inc = await self._incident_where(incidents.c.id == incident_id)
        if inc is None:
            raise KeyError(incident_id)
        return inc

    async def active_incident(self, target: str) -> Incident | None:
        """The active incident on a target, if any."""
        return await self._incident_where(incidents.c.active_target == target)

    async def _incident_where(self, condition: sa.ColumnElement[bool]) -> Incident | None:
        rows = await self._all(sa.select(incidents).where(condition))
        return from_row(Incident, rows[0]) if rows else None

    async def incidents(self, *, active_only: bool = False) -> list[Incident]:
        """All incidents, newest first."""
        q = sa.select(incidents).order_by(incidents.c.created_at.desc())
        if active_only:
            q = q.where(incidents.c.active_target.is_not(None))
        return [from_row(Incident, r) for r in await self._all(q)]

    async def apply(
        self, incident_id: str, ev: Event, *, actor: str | None = None, data: dict[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> Incident:
        """Move the incident through the lifecycle table and journal the event."""
        now = now or utcnow()
        async with self._write(incident_id) as conn:
            row = (await conn.execute(
                sa.select(incidents.c.status, incidents.c.target).where(incidents.c.id == incident_id)
            )).first()
            if row is None:
                raise KeyError(incident_id)
            new = transition(Status(row.status), ev)
            values: dict[str, Any] = {"status": new.value, "updated_at": now}
            if not is_active(new):
                values["active_target"] = None
                values["ended_at"] = now
            if ev is Event.START:
                values["started_at"] = now
            await conn.execute(
                incidents.update().where(incidents.c.id == incident_id).values(**values)
            )
            await conn.execute(journal.insert().values(
                incident_id=incident_id, at=now, kind=f"incident_{ev.value}", actor=actor,
                data={"from": row.status, "to": new.value, **(data or {})},
            ))
        return await self.incident(incident_id)

    async def update_incident(self, incident_id: str, **values: Any) -> None:
        """Set plain fields (channel, thread_ts, view, abort_reason, decision...)."""
        values["updated_at"] = utcnow()
        async with self._write(incident_id) as conn:
            await conn.execute(incidents.update().where(incidents.c.id == incident_id).values(**values))
