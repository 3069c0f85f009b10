"""The queue of control requests in the store (``control_requests``): submitting one, reading
them, moving one from status to status with a conditional UPDATE (so exactly one process
claims it), and the liveness notes of the processes that serve them (``control_pollers``)."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from bot.state.store import Store, control_pollers, control_requests, utcnow

#: How long a liveness note counts as alive.
ALIVE_SECONDS = 5.0


@dataclass
class ControlRequest:
    """One row of ``control_requests``."""

    id: int
    incident_id: str
    action: str
    step_id: str | None
    value: str | None
    reason: str | None
    actor: str
    operator: str
    status: str
    claimed_by: str | None
    result: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None



def _request(row: sa.Row[Any]) -> ControlRequest:
    d = dict(row._mapping)
    for key in ("created_at", "finished_at"):
        if isinstance(d[key], dt.datetime) and d[key].tzinfo is None:
            d[key] = d[key].replace(tzinfo=dt.UTC)  # SQLite hands datetimes back naive (stored as UTC)
    return ControlRequest(**d)


async def submit(store: Store, *, incident_id: str, action: str, actor: str, operator: str,
                 step_id: str | None = None, value: str | None = None, reason: str | None = None) -> int:
    """Queue a request; returns its id."""
    async with store.engine.begin() as conn:
        res = await conn.execute(control_requests.insert().values(
            incident_id=incident_id, action=action, step_id=step_id, value=value, reason=reason,
            actor=actor, operator=operator, status="pending", created_at=utcnow()))
        return int(res.inserted_primary_key[0]) if res.inserted_primary_key else 0


async def get(store: Store, request_id: int) -> ControlRequest:
    """One request by id."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(sa.select(control_requests).where(control_requests.c.id == request_id))).one()
    return _request(row)


async def list_requests(store: Store, *, incident_id: str | None = None,
                   statuses: tuple[str, ...] | None = None) -> list[ControlRequest]:
    """Requests, oldest first (of one incident, in some statuses)."""
    q = sa.select(control_requests).order_by(control_requests.c.id)
    if incident_id is not None:
        q = q.where(control_requests.c.incident_id == incident_id)
    if statuses is not None:
        q = q.where(control_requests.c.status.in_(statuses))
    async with store.engine.connect() as conn:
        return [_request(r) for r in (await conn.execute(q)).all()]



async def move(store: Store, request_id: int, old: str, new: str, **values: Any) -> bool:
    """Move a request from ``old`` to ``new``; False when another process moved it first."""
    async with store.engine.begin() as conn:
        res = await conn.execute(control_requests.update().where(
            control_requests.c.id == request_id, control_requests.c.status == old).values(status=new, **values))
    return bool(res.rowcount == 1)



async def claim(store: Store, request_id: int, *, by: str) -> bool:
    """Take a pending request; exactly one process succeeds."""
    return await move(store, request_id, "pending", "claimed", claimed_by=by)


async def settled(store: Store, request_id: int, seconds: float) -> ControlRequest | None:
    """The request once it is no longer pending or claimed, looked at for up to ``seconds``; else None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        req = await get(store, request_id)
        if req.status not in ("pending", "claimed"):
            return req
        await asyncio.sleep(0.05)
    return None


async def alive(store: Store, *, within: float = ALIVE_SECONDS) -> list[str]:
    """Names of the processes that polled for requests lately."""
    since = utcnow() - dt.timedelta(seconds=within)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(control_pollers.c.name).where(control_pollers.c.beat_at >= since))).all()
    return [r.name for r in rows]


async def beat(store: Store, name: str) -> None:
    """Note that ``name`` polls for requests now."""
    now = utcnow()
    async with store.engine.begin() as conn:
        res = await conn.execute(control_pollers.update().where(control_pollers.c.name == name).values(beat_at=now))
        if res.rowcount == 0:
            try:
                async with conn.begin_nested():
                    await conn.execute(control_pollers.insert().values(name=name, beat_at=now))
            except IntegrityError:
                pass


async def gone(store: Store, name: str) -> None:
    """Forget ``name``'s liveness note (a clean stop)."""
    async with store.engine.begin() as conn:
        await conn.execute(control_pollers.delete().where(control_pollers.c.name == name))
