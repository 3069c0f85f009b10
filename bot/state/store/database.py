"""The state database: its URL, opening it (SQLite or PostgreSQL), durability of SQLite
commits, Slack request ids seen by any replica, and the lease check of a write."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.state.schema import FENCE, SchemaTooNew, check_fence, db_now, dedup, prepare
from bot.state.store.rows import aware, from_row, utcnow
from bot.state.store.tables import journal, metadata

#: How long a SQLite writer waits for the write lock before the statement fails.
SQLITE_BUSY_MS = 60_000

T = TypeVar("T")

#: Where the state database's password comes from (never the config file), first found wins.
PASSWORD_ENV = ("ROLLBACK_BOT_DB_PASSWORD", "PGPASSWORD")
#: How long a Slack request id is remembered in the database to drop Slack's retries of it.
DEDUP_SECONDS = 600.0


class StateUrlError(ValueError):
    """A ``state_db`` URL the bot cannot use; the message names what is wrong."""


def state_url(url: str, environ: Mapping[str, str] | None = None) -> sa.URL:
    """The SQLAlchemy URL of the state store: a SQLite path, or PostgreSQL through asyncpg.

    A PostgreSQL password comes from ``ROLLBACK_BOT_DB_PASSWORD`` (or ``PGPASSWORD``); one
    written in the URL itself is refused, so it never sits in a config file.
    """
    if "://" not in url:
        return sa.make_url(f"sqlite+aiosqlite:///{url}")
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise StateUrlError("state_db: not a database URL (postgresql+asyncpg://user@host:5432/db)") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.password:
            raise StateUrlError("state_db: the URL holds a password; put it in ROLLBACK_BOT_DB_PASSWORD instead")
        if parsed.get_driver_name() not in ("asyncpg", "psycopg2", "psycopg"):
            raise StateUrlError(f"state_db: driver {parsed.get_driver_name()!r} is not supported; "
                                "use postgresql+asyncpg://")
        parsed = parsed.set(drivername="postgresql+asyncpg")
        env = os.environ if environ is None else environ
        password = next((env[k] for k in PASSWORD_ENV if env.get(k)), None)
        return parsed.set(password=password) if password else parsed
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    raise StateUrlError(f"state_db: {backend!r} is not supported (a SQLite file or postgresql+asyncpg://)")

class StoreUnavailable(RuntimeError):
    """The state database cannot be opened; the message says why, without the password."""


class Database:
    """The store's connection to its database: opening it, durability, Slack request ids, leases.

    ``Store`` adds the incident state's parts (``incidents``, ``steps``, ``journal``) to it.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # A SQLite file commits with synchronous=NORMAL in WAL mode: a commit survives the
        # process dying at once, and reaches the disk with the next fsync of the WAL. That
        # fsync is done where it matters (``sync``): before a step's side effect starts, and
        # before journal events are copied out to the audit log. A power loss can then only
        # undo what came after the last step start, which a restart treats as a crash
        # during that step; it never undoes an event the audit log already holds.
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self._wal = f"{database}-wal" if database and database != ":memory:" else None
        self._durable_id = 0

    @classmethod
    async def open(cls, url: str | sa.URL, environ: Mapping[str, str] | None = None, *,
                   idle_in_transaction: float = 5.0) -> Self:
        """Open the store at a SQLite file path or URL, or PostgreSQL; create or migrate its schema.

        ``SchemaTooNew`` when the database was written by a newer bot. On PostgreSQL a
        session that sits in a transaction for ``idle_in_transaction`` seconds is ended by
        the server: a replica frozen mid-transaction (paused, cut off) releases its row
        locks, so the standby that takes its leases is not blocked behind them.
        """
        parsed = url if isinstance(url, sa.URL) else state_url(url, environ)
        if parsed.get_backend_name() == "postgresql":
            # Pre-ping: after a server restart a pooled connection is found dead and replaced.
            settings = {"idle_in_transaction_session_timeout": str(int(idle_in_transaction * 1000))}
            engine = create_async_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20,
                                         connect_args={"server_settings": settings})
        else:
            engine = create_async_engine(parsed)
        if engine.dialect.name == "sqlite":
            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                # Every incident's task writes through its own pooled connection: with dozens running on a
                # busy machine, a transaction can hold the write lock across many turns of the event loop,
                # so a writer waits for its turn (60 s) rather than failing mid-incident.
                cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        try:
            await prepare(engine, metadata)
        except SchemaTooNew:
            await engine.dispose()
            raise
        except Exception as exc:  # unreachable, refused login, unwritable file: one line, no traceback
            await engine.dispose()
            reason = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0][:300]
            raise StoreUnavailable(f"state_db: cannot open the state database ({type(exc).__name__}: "
                                   f"{reason})") from exc
        return cls(engine)

    @property
    def durable_event_id(self) -> int | None:
        """Journal events up to this id are on disk; None when every commit is (not a SQLite file)."""
        return None if self._wal is None else self._durable_id

    async def sync(self, upto: int | None = None) -> int | None:
        """Put every commit so far on disk (one fsync of the WAL); returns ``durable_event_id``.

        ``upto``: the newest journal id committed before the call, when the caller knows it.
        """
        if self._wal is None:
            return None
        if upto is None:
            async with self.engine.connect() as conn:
                upto = int((await conn.execute(sa.select(sa.func.max(journal.c.id)))).scalar() or 0)
        await asyncio.to_thread(_fsync, self._wal)
        self._durable_id = max(self._durable_id, upto)
        return self._durable_id

    @property
    def replicated(self) -> bool:
        """True on PostgreSQL, where several replicas share this store."""
        return self.engine.dialect.name == "postgresql"

    # ------------------------------------------------------------ Slack request ids

    async def first_time(self, key: str) -> bool:
        """Remember a request id; False when any replica saw it in the last ten minutes (a retry)."""
        now = utcnow()
        try:
            async with self.engine.begin() as conn:
                await conn.execute(dedup.insert().values(key=key[:200], at=now))
        except IntegrityError:
            async with self.engine.begin() as conn:
                old = (await conn.execute(sa.update(dedup).where(
                    dedup.c.key == key[:200], dedup.c.at < now - dt.timedelta(seconds=DEDUP_SECONDS))
                    .values(at=now))).rowcount
            return bool(old)
        if now.second % 10 == 0:  # now and then, forget ids older than the window
            async with self.engine.begin() as conn:
                await conn.execute(sa.delete(dedup).where(dedup.c.at < now - dt.timedelta(seconds=DEDUP_SECONDS)))
        return True

    async def forget(self, key: str) -> None:
        """Let a request id through again (a form sent back with errors)."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(dedup).where(dedup.c.key == key[:200]))

    async def check_lease(self, incident_id: str) -> None:
        """``LeaseLost`` unless the current task may still act on the incident (see ``bot.state.replicas``)."""
        fence = FENCE.get()
        if fence is None or fence.incident_id != incident_id:
            return
        async with self.engine.begin() as conn:
            await check_fence(conn, incident_id)

    async def db_time(self) -> dt.datetime:
        """The database's clock (PostgreSQL), or this process's."""
        async with self.engine.connect() as conn:
            value = (await conn.execute(sa.select(db_now(conn)))).scalar_one()
        return aware(value) or utcnow()

    async def close(self) -> None:
        """Dispose of the connection pool."""
        await self.engine.dispose()

    # ------------------------------------------------------------ helpers of the parts

    @contextlib.asynccontextmanager
    async def _write(self, incident_id: str) -> AsyncIterator[AsyncConnection]:
        """A write transaction on one incident; ``LeaseLost`` first when this task's lease is gone."""
        async with self.engine.begin() as conn:
            await check_fence(conn, incident_id)
            yield conn

    async def _all(self, q: sa.Select[Any]) -> list[sa.Row[Any]]:
        """The rows of a query."""
        async with self.engine.connect() as conn:
            return list((await conn.execute(q)).all())

    async def _of_incident(self, table: sa.Table, cls: type[T], incident_id: str) -> list[T]:
        """One incident's rows of ``table``, oldest first, as ``cls``."""
        q = sa.select(table).where(table.c.incident_id == incident_id).order_by(table.c.id)
        return [from_row(cls, r) for r in await self._all(q)]


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # no WAL yet (or just checkpointed away): nothing is pending
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
