"""Incident state and journal, in SQLite by default through SQLAlchemy 2 async.

Everything the thread or the terminal shows is rendered from here. A step's start is
committed before its side effect begins, so a crash leaves a ``running`` row that the
engine finds on restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.core.lifecycle import Event, Status, StepStatus, is_active, transition
from bot.state.schema import FENCE, SchemaTooNew, check_fence, db_now, dedup, prepare

metadata = sa.MetaData()

incidents = sa.Table(
    "incidents", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("target", sa.String(128), nullable=False),
    # Equal to target while the incident is active, NULL after: a unique index then
    # allows one active incident per target, enforced by the database itself.
    sa.Column("active_target", sa.String(128), unique=True),
    sa.Column("runbook", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(4)),
    sa.Column("decision", sa.String(32)),
    sa.Column("inputs", sa.JSON, nullable=False, default=dict),
    sa.Column("requester", sa.String(64)),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("stamp", sa.String(15), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("abort_reason", sa.Text),
    sa.Column("channel", sa.String(32)),
    sa.Column("thread_ts", sa.String(32)),
    sa.Column("view", sa.JSON, nullable=False, default=dict),
)

approvals = sa.Table(
    "approvals", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.ForeignKey("incidents.id"), nullable=False, index=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("roles", sa.JSON, nullable=False),
    sa.Column("decision", sa.String(8), nullable=False),  # approve | reject
    sa.Column("counted", sa.Boolean, nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("plan_hash", sa.String(64)),  # the rendered plan the click approved
)

step_runs = sa.Table(
    "step_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.ForeignKey("incidents.id"), nullable=False, index=True),
    sa.Column("step_id", sa.String(64), nullable=False),
    sa.Column("phase_id", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("duration", sa.Float),
    sa.Column("exit_status", sa.Integer),
    sa.Column("output_tail", sa.Text, nullable=False, default=""),
    sa.Column("output_digest", sa.String(64)),
    sa.Column("output_bytes", sa.Integer),
    sa.Column("captures", sa.JSON, nullable=False, default=dict),
    sa.Column("error", sa.Text),
    sa.Column("waiting", sa.JSON),  # what a person is asked: kind, options
    sa.Column("answer", sa.JSON),   # what the person answered
    sa.UniqueConstraint("incident_id", "step_id", "attempt"),
)

journal = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.ForeignKey("incidents.id"), nullable=False, index=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(64)),
    sa.Column("step_id", sa.String(64)),
    sa.Column("data", sa.JSON, nullable=False, default=dict),
)

# One row per stability check of a series (a step run of kind ``stability``): the unique
# (run, index) pair means a check is recorded once, whether it ran or was missed.
stability_checks = sa.Table(
    "stability_checks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.ForeignKey("incidents.id"), nullable=False, index=True),
    sa.Column("run_id", sa.ForeignKey("step_runs.id"), nullable=False),
    sa.Column("step_id", sa.String(64), nullable=False),
    sa.Column("index", sa.Integer, nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("outcome", sa.String(8), nullable=False),  # ok | failed | missed
    sa.Column("status_code", sa.Integer),
    sa.Column("body_status", sa.String(64)),
    sa.Column("latency_ms", sa.Float),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.UniqueConstraint("run_id", "index"),
)

artifacts_table = artifacts = sa.Table(
    "artifacts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.ForeignKey("incidents.id"), nullable=False, index=True),
    sa.Column("step_id", sa.String(64)),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# The control plane outside Slack (``rollback-bot incident answer|abort``): a request is
# claimed by exactly one process (a conditional UPDATE of ``status``), executed with the
# same rules as a click, and finished with its result.
control_requests = sa.Table(
    "control_requests", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.ForeignKey("incidents.id"), nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),  # answer | abort
    sa.Column("step_id", sa.String(64)),
    sa.Column("value", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("actor", sa.String(64), nullable=False),   # the Slack user id acted as
    sa.Column("operator", sa.String(200), nullable=False),  # the local identity: account@host
    # pending -> claimed -> done | refused; or pending -> applied (no bot ran: applied to the
    # store by the command itself) -> resumed by the bot at its next start.
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("result", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)

# Processes that serve control requests, with the time each last looked (a liveness hint
# for the command line, never a lock).
control_pollers = sa.Table(
    "control_pollers", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
)


#: Each rehearsal of a runbook on a target and its verdict ("Last tested").
rehearsals = sa.Table(
    "rehearsals", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(128), nullable=False, index=True),
    sa.Column("runbook_sha256", sa.String(64), nullable=False),
    sa.Column("plan_hash", sa.String(64)),
    sa.Column("incident_id", sa.String(32)),
    sa.Column("strategy", sa.String(8)),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("recovery_seconds", sa.Float),
    sa.Column("data_loss_records", sa.Integer),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False, default=dict),
)

#: Columns added after a table was first created: (table, column, SQL type).
_ADDED_COLUMNS = (("approvals", "plan_hash", "VARCHAR(64)"),)


def _add_missing_columns(conn: Any) -> None:
    """Bring a state database made by an earlier version up to this schema (new nullable columns)."""
    inspector = sa.inspect(conn)
    for table, column, sql_type in _ADDED_COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


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


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands datetimes back naive; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class StoreUnavailable(RuntimeError):
    """The state database cannot be opened; the message says why, without the password."""


class AlreadyAnswered(RuntimeError):
    """A question was answered meanwhile (by another click, possibly on another replica)."""


class TargetBusy(RuntimeError):
    """The target already has an active incident."""

    def __init__(self, target: str, incident_id: str) -> None:
        super().__init__(f"target {target!r} already has an active incident {incident_id}")
        self.target = target
        self.incident_id = incident_id


@dataclass
class Incident:
    """An incident row."""

    id: str
    target: str
    runbook: str
    status: Status
    severity: str | None
    decision: str | None
    inputs: dict[str, Any]
    requester: str | None
    reason: str
    stamp: str
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    abort_reason: str | None
    channel: str | None
    thread_ts: str | None
    view: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepRun:
    """One execution attempt of a step."""

    id: int
    incident_id: str
    step_id: str
    phase_id: str
    attempt: int
    status: StepStatus
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    duration: float | None
    exit_status: int | None
    output_tail: str
    output_digest: str | None
    output_bytes: int | None
    captures: dict[str, Any]
    error: str | None
    waiting: dict[str, Any] | None
    answer: dict[str, Any] | None


@dataclass
class Approval:
    """One approve/reject click."""

    id: int
    incident_id: str
    user_id: str
    roles: list[str]
    decision: str
    counted: bool
    note: str
    at: dt.datetime
    plan_hash: str | None = None


@dataclass
class JournalEvent:
    """One entry of the incident's event log."""

    id: int
    incident_id: str
    at: dt.datetime
    kind: str
    actor: str | None
    step_id: str | None
    data: dict[str, Any]


@dataclass
class StabilityCheck:
    """One stability check of a series: ok, failed, or missed while the bot was down."""

    id: int
    incident_id: str
    run_id: int
    step_id: str
    index: int
    due_at: dt.datetime
    at: dt.datetime
    outcome: str
    status_code: int | None
    body_status: str | None
    latency_ms: float | None
    reason: str


@dataclass
class ArtifactFile:
    """A file a step made: where, its sha256 and size, when."""

    step_id: str | None
    name: str
    path: str
    sha256: str
    bytes: int
    at: dt.datetime


@dataclass
class Artifact(ArtifactFile):
    """A file an incident produced, tracked as it was made."""

    id: int
    incident_id: str


def _row(cls: type, row: sa.Row[Any]) -> Any:
    d = dict(row._mapping)
    for k, v in d.items():
        if isinstance(v, dt.datetime):
            d[k] = _aware(v)
    if cls is Incident:
        d.pop("active_target", None)
        d["status"] = Status(d["status"])
    if cls is StepRun:
        d["status"] = StepStatus(d["status"])
    return cls(**d)


class Store:
    """Async access to the incident state. One instance per process."""

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
                   idle_in_transaction: float = 5.0) -> Store:
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
                cur.execute("PRAGMA busy_timeout=10000")
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
        return _aware(value) or utcnow()

    async def close(self) -> None:
        """Dispose of the connection pool."""
        await self.engine.dispose()

    # ------------------------------------------------------------ incidents

    async def create_incident(
        self,
        *,
        target: str,
        runbook: str,
        severity: str | None = None,
        decision: str | None = None,
        inputs: dict[str, Any] | None = None,
        requester: str | None = None,
        reason: str = "",
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
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.select(incidents).where(incidents.c.id == incident_id)
            )).first()
        if row is None:
            raise KeyError(incident_id)
        return _row(Incident, row)

    async def active_incident(self, target: str) -> Incident | None:
        """The active incident on a target, if any."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.select(incidents).where(incidents.c.active_target == target)
            )).first()
        return _row(Incident, row) if row else None

    async def incidents(self, *, active_only: bool = False) -> list[Incident]:
        """All incidents, newest first."""
        q = sa.select(incidents).order_by(incidents.c.created_at.desc())
        if active_only:
            q = q.where(incidents.c.active_target.is_not(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_row(Incident, r) for r in rows]

    async def apply(
        self, incident_id: str, ev: Event, *, actor: str | None = None, data: dict[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> Incident:
        """Move the incident through the lifecycle table and journal the event."""
        now = now or utcnow()
        async with self.engine.begin() as conn:
            await check_fence(conn, incident_id)
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
        async with self.engine.begin() as conn:
            await check_fence(conn, incident_id)
            await conn.execute(incidents.update().where(incidents.c.id == incident_id).values(**values))

    # ------------------------------------------------------------ steps

    async def step_runs(self, incident_id: str) -> list[StepRun]:
        """Every attempt of every step, oldest first."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(step_runs).where(step_runs.c.incident_id == incident_id)
                .order_by(step_runs.c.id)
            )).all()
        return [_row(StepRun, r) for r in rows]

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
        async with self.engine.begin() as conn:
            await check_fence(conn, incident_id)
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
        return _row(StepRun, row)

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
                    values.setdefault("duration", (now - _aware(row.started_at)).total_seconds())  # type: ignore[operator]
            await conn.execute(step_runs.update().where(step_runs.c.id == run_id).values(
                status=status.value, **values))
            data = {k: v for k, v in values.items()
                    if k in ("exit_status", "error", "duration", "captures", "answer", "waiting")}
            data["attempt"] = row.attempt
            await conn.execute(journal.insert().values(
                incident_id=row.incident_id, at=now, kind=f"step_{status.value}",
                step_id=row.step_id, actor=actor, data=_jsonable(data),
            ))
            if artifacts:
                await conn.execute(artifacts_table.insert(), [
                    {"incident_id": row.incident_id, "step_id": a.step_id, "name": a.name, "path": a.path,
                     "sha256": a.sha256, "bytes": a.bytes, "at": a.at} for a in artifacts])
        run = _row(StepRun, row)
        for key, value in values.items():
            setattr(run, key, _aware(value) if isinstance(value, dt.datetime) else value)
        run.status = status
        return run

    # ------------------------------------------------------------ approvals

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
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(approvals).where(approvals.c.incident_id == incident_id).order_by(approvals.c.id)
            )).all()
        return [_row(Approval, r) for r in rows]

    # ------------------------------------------------------------ journal, artifacts

    async def log(
        self, incident_id: str, kind: str, *, actor: str | None = None, step_id: str | None = None,
        data: dict[str, Any] | None = None, now: dt.datetime | None = None,
    ) -> None:
        """Append to the incident's event log."""
        async with self.engine.begin() as conn:
            await check_fence(conn, incident_id)
            await conn.execute(journal.insert().values(
                incident_id=incident_id, at=now or utcnow(), kind=kind, actor=actor,
                step_id=step_id, data=_jsonable(data or {}),
            ))

    async def events(self, incident_id: str) -> list[JournalEvent]:
        """The event log, oldest first."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(journal).where(journal.c.incident_id == incident_id).order_by(journal.c.id)
            )).all()
        return [_row(JournalEvent, r) for r in rows]

    async def add_stability_check(self, check: StabilityCheck) -> bool:
        """Record a check once (journaled too); False when that check was already recorded."""
        values = {k: v for k, v in check.__dict__.items() if k != "id"}
        try:
            async with self.engine.begin() as conn:
                await check_fence(conn, check.incident_id)
                await conn.execute(stability_checks.insert().values(**values))
                await conn.execute(journal.insert().values(
                    incident_id=check.incident_id, at=check.at, kind="stability_check", step_id=check.step_id,
                    data=_jsonable({k: v for k, v in values.items() if k not in ("incident_id", "step_id")}),
                ))
        except IntegrityError:
            return False
        return True

    async def stability_checks(self, incident_id: str, run_id: int | None = None) -> list[StabilityCheck]:
        """The recorded checks of an incident (or of one series), in series order."""
        q = sa.select(stability_checks).where(stability_checks.c.incident_id == incident_id)
        if run_id is not None:
            q = q.where(stability_checks.c.run_id == run_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(stability_checks.c.run_id, stability_checks.c.index))).all()
        return [_row(StabilityCheck, r) for r in rows]

    async def add_artifact(
        self, incident_id: str, *, step_id: str | None, name: str, path: str, sha256: str, size: int,
    ) -> None:
        """Track a file the incident produced, at the moment it is made."""
        async with self.engine.begin() as conn:
            await check_fence(conn, incident_id)
            await conn.execute(artifacts.insert().values(
                incident_id=incident_id, step_id=step_id, name=name, path=path, sha256=sha256,
                bytes=size, at=utcnow(),
            ))

    async def artifacts(self, incident_id: str) -> list[Artifact]:
        """Files the incident produced, in the order they were made."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(artifacts).where(artifacts.c.incident_id == incident_id).order_by(artifacts.c.id)
            )).all()
        return [_row(Artifact, r) for r in rows]


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # no WAL yet (or just checkpointed away): nothing is pending
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value
