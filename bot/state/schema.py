"""The state database's schema version, and the tables replicas coordinate through.

``prepare`` runs at every start: it creates what is missing (under an advisory lock on
PostgreSQL, so replicas starting together do not race), adds columns a newer bot
defines to tables an older one made, and records the schema version. A database whose
version is newer than this bot's refuses the start with a message: an old replica must
never write rows it does not understand.

The coordination tables: ``leases`` (one row per lease: an incident's runner, the
scheduler; a holder, a fencing token raised at each acquisition, an expiry in the
database's clock), ``dedup`` (Slack request ids seen by any replica) and ``job_claims``
(one row per scheduled job run: whoever inserts it runs the job).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

#: The version this bot writes; raise it (and add a step to ``_MIGRATIONS``) when tables change.
SCHEMA_VERSION = 1
#: Key of the advisory lock that serialises schema changes on PostgreSQL.
SCHEMA_LOCK = 0x726F6C6C  # "roll"

coordination = sa.MetaData()

schema_version = sa.Table(
    "schema_version", coordination,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

leases = sa.Table(
    "leases", coordination,
    sa.Column("name", sa.String(80), primary_key=True),  # incident:<id> | scheduler
    sa.Column("holder", sa.String(80)),                  # NULL: released
    sa.Column("token", sa.BigInteger, nullable=False),   # fencing token: +1 at every acquisition
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    # Changes made by other replicas for the holder to act on (clicks, scheduled jobs).
    sa.Column("nudge", sa.BigInteger, nullable=False, default=0),
    sa.Column("handled", sa.BigInteger, nullable=False, default=0),
)

dedup = sa.Table(
    "dedup", coordination,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
)

job_claims = sa.Table(
    "job_claims", coordination,
    sa.Column("claim", sa.String(200), primary_key=True),  # <job id>@<run time>
    sa.Column("holder", sa.String(80), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
)


class SchemaTooNew(RuntimeError):
    """The state database was written by a newer bot."""


class LeaseLost(RuntimeError):
    """This replica no longer holds the lease it acts under: it stops before the next effect."""


@dataclass(frozen=True)
class Fence:
    """The lease an incident's runner acts under: every write of that incident checks it."""

    incident_id: str
    name: str
    holder: str
    token: int


#: The fence of the task that runs an incident (unset everywhere else: clicks are not fenced).
FENCE: ContextVar[Fence | None] = ContextVar("rollback_bot_fence", default=None)


@contextlib.contextmanager
def fenced(fence: Fence) -> Iterator[None]:
    """Run the block (and the tasks it starts) under ``fence``."""
    token = FENCE.set(fence)
    try:
        yield
    finally:
        FENCE.reset(token)


def db_now(conn: AsyncConnection | AsyncEngine) -> Any:
    """The database's own clock (PostgreSQL), or this process's for SQLite (one replica)."""
    if conn.dialect.name == "postgresql":
        return sa.func.clock_timestamp()
    return sa.literal(dt.datetime.now(dt.UTC), sa.DateTime(timezone=True))


async def check_fence(conn: AsyncConnection, incident_id: str) -> None:
    """Inside a write transaction: ``LeaseLost`` unless the current task's lease still holds.

    The row is locked (FOR SHARE) until the transaction ends, so a standby's takeover
    waits for this write to commit rather than slipping in between check and write.
    """
    fence = FENCE.get()
    if fence is None or fence.incident_id != incident_id:
        return
    q = sa.select(leases.c.token).where(
        leases.c.name == fence.name, leases.c.holder == fence.holder, leases.c.token == fence.token,
        leases.c.expires_at > db_now(conn))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(read=True)
    if (await conn.execute(q)).first() is None:
        raise LeaseLost(f"lease {fence.name} (token {fence.token}) is no longer held by this replica")


async def prepare(engine: AsyncEngine, metadata: sa.MetaData) -> int:
    """Create or migrate the schema; returns the version found before. ``SchemaTooNew`` if newer."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK)))
        existed = await conn.run_sync(lambda c: sa.inspect(c).has_table("incidents"))
        await conn.run_sync(coordination.create_all)
        row = (await conn.execute(sa.select(schema_version.c.version).where(schema_version.c.id == 1))).first()
        found = int(row.version) if row else (0 if existed else SCHEMA_VERSION)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the state database has schema version {found}, newer than this bot's {SCHEMA_VERSION}: "
                "upgrade this replica to the version the others run (nothing was changed)")
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(_add_missing_columns, metadata)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            step = _MIGRATIONS.get(version)
            if step is not None:
                await conn.run_sync(step)
        now = dt.datetime.now(dt.UTC)
        if row is None:
            await conn.execute(schema_version.insert().values(id=1, version=SCHEMA_VERSION, at=now))
        elif found != SCHEMA_VERSION:
            await conn.execute(schema_version.update().where(schema_version.c.id == 1)
                               .values(version=SCHEMA_VERSION, at=now))
    return found


def _add_missing_columns(conn: sa.Connection, metadata: sa.MetaData) -> None:
    """Columns a newer bot added to an existing table (nullable or with a default) are added in place."""
    insp = sa.inspect(conn)
    for table in metadata.sorted_tables:
        if not insp.has_table(table.name):
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name in have:
                continue
            ddl = f"ALTER TABLE {conn.dialect.identifier_preparer.format_table(table)} ADD COLUMN " \
                  f"{conn.dialect.identifier_preparer.format_column(col)} {col.type.compile(conn.dialect)}"
            conn.execute(sa.text(ddl))


#: Version -> the change that brings a database from the version before to it.
_MIGRATIONS: dict[int, Any] = {}
