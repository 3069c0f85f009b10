"""Several replicas on one PostgreSQL: a lease per incident, one for the scheduler, and nudges.

Every replica answers any Slack request: the answer is written to the shared store.
Running an incident, writing its thread and firing scheduled jobs happen on one replica
only, the holder of a lease row (see ``bot.state.schema.leases``):

- ``incident:<id>``: the replica that runs the incident's steps and writes its thread.
  Its task acts under a ``Fence`` (the lease's fencing token): every write of that
  incident checks, in its own transaction, that the lease is still held; the engine
  also checks before each side effect. A replica that lost the lease (paused past its
  expiry, cut off) stops before its next step and never acts on that incident again.
- ``scheduler``: the replica whose APScheduler fires jobs; the others keep theirs paused
  and only add jobs to the shared job store. Each job run is also claimed once in
  ``job_claims`` under that lease, so a job fires once across the cluster.

Expiry is judged by the database's clock, never a replica's. A replica that answers a
click for an incident another replica holds raises the lease's ``nudge``; the holder
sees it at its next poll and runs the incident and syncs its thread. A standby takes an
incident over once its lease expired, and resumes it as after a crash.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from bot.state.schema import Fence, db_now, job_claims, leases
from bot.state.store import Store, incidents

log = logging.getLogger(__name__)

SCHEDULER = "scheduler"
INCIDENT = "incident:"
#: PostgreSQL channel a nudge is announced on, so the holder acts at once rather than at its next poll.
CHANNEL = "rollback_bot_nudge"


def replica_name() -> str:
    """A name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Hooks:
    """What the coordinator calls as leases come and go (set by the services)."""

    acquired: Callable[[str, Fence], Awaitable[None]]
    nudged: Callable[[str, Fence], Awaitable[None]]
    lost: Callable[[str], Awaitable[None]]
    scheduler: Callable[[bool], Awaitable[None]]
    releasable: Callable[[str], Awaitable[bool]]
    poll: Callable[[], None] = lambda: None


@dataclass
class Coordinator:
    """One replica's side of the leases: acquire, renew, release, nudge, claim."""

    store: Store
    hooks: Hooks | None = None
    ttl: float = 6.0
    poll: float = 0.25
    name: str = field(default_factory=replica_name)
    held: dict[str, int] = field(default_factory=dict)
    _seen: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _last_renew: float = 0.0
    _stopping: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _listener: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ queries

    def _expiry(self, conn: Any) -> Any:
        return db_now(conn) + sa.literal(dt.timedelta(seconds=self.ttl), sa.Interval())

    async def acquire(self, lease: str) -> int | None:
        """Take the lease if nobody holds it (or its holder let it expire); its new token, or None."""
        async with self.store.engine.begin() as conn:
            now = db_now(conn)
            insert = pg_insert(leases).values(name=lease, holder=self.name, token=1,
                                              expires_at=self._expiry(conn), nudge=0, handled=0)
            stmt = insert.on_conflict_do_update(
                index_elements=[leases.c.name],
                set_={"holder": self.name, "token": leases.c.token + 1, "expires_at": self._expiry(conn)},
                where=sa.or_(leases.c.holder.is_(None), leases.c.expires_at < now),
            ).returning(leases.c.token, leases.c.nudge)
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        self.held[lease] = int(row.token)
        self._seen[lease] = int(row.nudge)
        log.info("%s: took lease %s (token %d)", self.name, lease, row.token)
        return int(row.token)

    async def release(self, lease: str) -> None:
        """Give the lease up (the changes seen so far count as handled)."""
        token = self.held.pop(lease, None)
        seen = self._seen.pop(lease, 0)
        if token is None:
            return
        async with self.store.engine.begin() as conn:
            await conn.execute(sa.update(leases).where(
                leases.c.name == lease, leases.c.holder == self.name, leases.c.token == token,
            ).values(holder=None, handled=seen, expires_at=db_now(conn)))
        log.info("%s: released lease %s", self.name, lease)

    async def nudge(self, lease: str) -> None:
        """Tell the holder (whoever it is) that something changed for it to act on."""
        async with self.store.engine.begin() as conn:
            stmt = pg_insert(leases).values(name=lease, holder=None, token=0, expires_at=db_now(conn),
                                            nudge=1, handled=0)
            stmt = stmt.on_conflict_do_update(index_elements=[leases.c.name],
                                              set_={"nudge": leases.c.nudge + 1})
            await conn.execute(stmt)
            await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, lease)))  # delivered at commit

    async def _renew(self) -> dict[str, tuple[int, int]]:
        """Extend every lease this replica holds; {lease: (token, nudge)} of those still held."""
        async with self.store.engine.begin() as conn:
            rows = (await conn.execute(
                sa.update(leases).where(leases.c.holder == self.name, leases.c.expires_at > db_now(conn))
                .values(expires_at=self._expiry(conn)).returning(leases.c.name, leases.c.token, leases.c.nudge)
            )).all()
        return {r.name: (int(r.token), int(r.nudge)) for r in rows}

    async def _mine(self) -> dict[str, tuple[int, int]]:
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(sa.select(leases.c.name, leases.c.token, leases.c.nudge).where(
                leases.c.holder == self.name))).all()
        return {r.name: (int(r.token), int(r.nudge)) for r in rows}

    async def _candidates(self) -> list[str]:
        """Leases free for the taking: active incidents nobody runs, unhandled nudges, dead holders."""
        async with self.store.engine.connect() as conn:
            now = db_now(conn)
            lease_name = sa.literal(INCIDENT) + incidents.c.id
            free = sa.or_(leases.c.name.is_(None), leases.c.holder.is_(None), leases.c.expires_at < now)
            active = (await conn.execute(
                sa.select(incidents.c.id).select_from(incidents.outerjoin(leases, leases.c.name == lease_name))
                .where(incidents.c.active_target.is_not(None), free).order_by(incidents.c.created_at)
            )).scalars().all()
            other = (await conn.execute(sa.select(leases.c.name).where(sa.or_(
                sa.and_(leases.c.holder.is_(None), leases.c.nudge > leases.c.handled),
                sa.and_(leases.c.holder.is_not(None), leases.c.expires_at < now),
            )))).scalars().all()
        names = [INCIDENT + i for i in active]
        return names + [n for n in other if n not in names]

    async def claim(self, claim: str) -> bool:
        """Claim one run of a scheduled job under the scheduler lease; False if claimed already or not held."""
        token = self.held.get(SCHEDULER)
        if token is None:
            return False
        try:
            async with self.store.engine.begin() as conn:
                holds = sa.select(leases.c.name).where(
                    leases.c.name == SCHEDULER, leases.c.holder == self.name, leases.c.token == token,
                    leases.c.expires_at > db_now(conn)).with_for_update(read=True)
                if (await conn.execute(holds)).first() is None:
                    log.warning("%s: job run %s not claimed: the scheduler lease is no longer held", self.name, claim)
                    return False
                await conn.execute(job_claims.insert().values(claim=claim[:200], holder=self.name,
                                                              at=dt.datetime.now(dt.UTC)))
        except IntegrityError:
            log.info("%s: job run %s was claimed already", self.name, claim)
            return False
        return True

    def fence(self, incident_id: str) -> Fence | None:
        """The fence this replica acts under for an incident, if it holds its lease."""
        token = self.held.get(INCIDENT + incident_id)
        return None if token is None else Fence(incident_id, INCIDENT + incident_id, self.name, token)

    def holds(self, incident_id: str) -> bool:
        """True while this replica holds the incident's lease."""
        return INCIDENT + incident_id in self.held

    # ------------------------------------------------------------ the loop

    async def start(self) -> None:
        """Take what is free now, then keep polling in the background."""
        await self._tick()
        self._task = asyncio.create_task(self._loop(), name=f"replica-{self.name}")
        self._listener = asyncio.create_task(self._listen(), name=f"replica-listen-{self.name}")

    async def _listen(self) -> None:
        """Wake the loop when a lease this replica holds is nudged (polling stays the fallback)."""
        def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            if payload in self.held:
                self._wake.set()

        while not self._stopping:
            try:
                async with self.store.engine.connect() as conn:
                    raw = (await conn.get_raw_connection()).driver_connection
                    assert raw is not None
                    await raw.add_listener(CHANNEL, heard)
                    try:
                        while not self._stopping:
                            await asyncio.sleep(2.0)
                            await raw.execute("SELECT 1")  # notice a lost connection, then listen again
                    finally:
                        if not raw.is_closed():
                            await raw.remove_listener(CHANNEL, heard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: poll until it is back
                log.info("%s: not listening for nudges (%s); polling", self.name, type(exc).__name__)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Stop polling and give every lease up, so a standby takes over at once."""
        self._stopping = True
        for task in (self._task, self._listener):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for lease in list(self.held):
            try:
                await self.release(lease)
            except Exception as exc:  # the lease then expires by itself
                log.warning("%s: could not release %s: %s", self.name, lease, type(exc).__name__)

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(),
                                       self.poll if not failures else min(2.0, self.poll * 2 ** failures))
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._tick()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: keep trying; the leases expire meanwhile
                failures += 1
                log.warning("%s: coordination round failed (%s: %s)", self.name, type(exc).__name__,
                            str(exc).splitlines()[0][:200] if str(exc) else "")

    async def _tick(self) -> None:
        hooks = self.hooks
        assert hooks is not None
        loop = asyncio.get_running_loop()
        if self.held and loop.time() - self._last_renew >= self.ttl / 4:
            mine = await self._renew()
            self._last_renew = loop.time()
        elif self.held:
            mine = await self._mine()
        else:
            mine = {}
        for lease, token in list(self.held.items()):
            if mine.get(lease, (None, 0))[0] != token:
                self.held.pop(lease, None)
                self._seen.pop(lease, None)
                log.warning("%s: lost lease %s (token %d); acting on it no more", self.name, lease, token)
                await (hooks.scheduler(False) if lease == SCHEDULER else hooks.lost(lease[len(INCIDENT):]))
        for lease, (_token, nudge) in mine.items():
            if lease in self.held and nudge > self._seen.get(lease, 0):
                self._seen[lease] = nudge
                if lease.startswith(INCIDENT):
                    fence = self.fence(lease[len(INCIDENT):])
                    if fence is not None:
                        await hooks.nudged(fence.incident_id, fence)
        if SCHEDULER not in self.held and await self.acquire(SCHEDULER) is not None:
            await hooks.scheduler(True)
        for lease in await self._candidates():
            if lease == SCHEDULER or lease in self.held or not lease.startswith(INCIDENT):
                continue
            if await self.acquire(lease) is not None:
                fence = self.fence(lease[len(INCIDENT):])
                assert fence is not None
                await hooks.acquired(fence.incident_id, fence)
        for lease in [n for n in self.held if n.startswith(INCIDENT)]:
            iid = lease[len(INCIDENT):]
            if await hooks.releasable(iid):
                await self.release(lease)
        hooks.poll()

    async def take(self, incident_id: str) -> Fence | None:
        """Take an incident's lease now if it is free (a click or a new incident); its fence, or None."""
        if self.holds(incident_id):
            return self.fence(incident_id)
        if await self.acquire(INCIDENT + incident_id) is None:
            return None
        return self.fence(incident_id)


async def notify_holder(store: Store, incident_id: str) -> None:
    """After a change made outside ``serve`` (the command line): the incident's runner acts on it.

    On PostgreSQL the replica holding the incident's lease (or, if none, the first to take
    it) runs the incident and syncs its thread at its next poll; with SQLite nothing is needed.
    """
    if store.replicated:
        await Coordinator(store).nudge(INCIDENT + incident_id)
