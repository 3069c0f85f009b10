"""Scheduled jobs that survive a restart: APScheduler 3.11 with a SQLAlchemy job store.

Every job is keyed ``<incident id>:<purpose>`` and added with ``replace_existing``, so a
job is replaced, never doubled. Job functions are module-level coroutines (see
``bot.clock.jobs``) whose arguments are ids only: they pickle, and the job finds the
live bot through ``current_runtime()``.

Two settings are deliberate: ``misfire_grace_time=None`` (a job that fell while the
bot was down still runs when it comes back; the job itself records what was missed
from the journal, it is never silently dropped) and ``coalesce=True`` (several missed
runs of one job become one run, which catches up on all of them).

Several replicas share one job store on PostgreSQL. APScheduler 3 does not coordinate
schedulers on one store, so only one replica's scheduler fires jobs (the holder of the
scheduler lease, see ``bot.state.replicas``); the others start theirs paused (``standby``) and
only add and remove jobs. Each job is stored wrapped in ``run_claimed``, which claims
that one run (job id and run time) before it runs it: a job fires once across the
cluster even when two schedulers overlap for a moment.

Time comes from a ``Clock``. In production that is the system clock and APScheduler
fires jobs; tests use a ``ManualClock`` and ``JobScheduler.run_due`` to fire exactly the
jobs that are due at the clock's time, with nothing left to timing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.util import obj_to_ref, ref_to_obj

log = logging.getLogger(__name__)

JobFunc = Callable[..., Awaitable[None]]
Claim = Callable[[str], Awaitable[bool]]

#: Claims a job run before it runs (set on a replica of several; None: every run runs).
_claimer: Claim | None = None


def install_claimer(claimer: Claim | None) -> None:
    """Make ``claimer`` decide, for every job run of this process, whether it runs here."""
    global _claimer
    _claimer = claimer


async def run_claimed(ref: str, claim: str, kwargs: dict[str, Any]) -> None:
    """The stored job: claim this run (``claim``: job id and run time), then call ``ref(**kwargs)``."""
    claimer = _claimer
    if claimer is not None and not await claimer(claim):
        return
    func = ref_to_obj(ref)
    await func(**kwargs)


class Clock(Protocol):
    """Where the bot's flows read the time."""

    def now(self) -> dt.datetime:
        """Now, timezone-aware."""
        ...


class SystemClock:
    """The real time, UTC."""

    def now(self) -> dt.datetime:
        """Now, timezone-aware UTC."""
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that moves only when told (tests, rehearsals)."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)

    def now(self) -> dt.datetime:
        """The clock's current time."""
        return self._now

    def advance(self, seconds: float) -> dt.datetime:
        """Move the clock forward; returns the new time."""
        self._now += dt.timedelta(seconds=seconds)
        return self._now

    def set(self, when: dt.datetime) -> None:
        """Put the clock at a time."""
        self._now = when


def job_id(incident_id: str, purpose: str) -> str:
    """The stable id of an incident's job for one purpose."""
    return f"{incident_id}:{purpose}"


def jobs_url(state_db: str) -> str:
    """The job store's SQLAlchemy URL beside the incident state.

    A SQLite state file ``state.db`` keeps its jobs in ``state.jobs.db`` (APScheduler's job
    store is synchronous: its own file keeps its locks away from the async store); a
    database URL keeps them in the same database with a synchronous driver.
    """
    if "://" not in state_db:
        p = Path(state_db)
        return f"sqlite:///{p.with_name(p.stem + '.jobs' + (p.suffix or '.db'))}"
    scheme, rest = state_db.split("://", 1)
    dialect = scheme.split("+", 1)[0]
    if dialect == "sqlite":
        path = rest.lstrip("/") if rest.startswith("///") else rest
        return jobs_url("/" + path if rest.startswith("////") else path)
    return f"{dialect}://{rest}"


def _engine_options(url: str | sa.URL, idle_in_transaction: float) -> dict[str, Any]:
    """Pre-ping pooled connections; on PostgreSQL, end a session left idle in a transaction."""
    options: dict[str, Any] = {"pool_pre_ping": True}
    if sa.make_url(url).get_backend_name() == "postgresql":
        ms = int(idle_in_transaction * 1000)
        options["connect_args"] = {"options": f"-c idle_in_transaction_session_timeout={ms}"}
    return options


@dataclass(frozen=True)
class ScheduledJob:
    """A job as the scheduler holds it."""

    id: str
    func: str
    next_run: dt.datetime | None
    kwargs: dict[str, Any]


class JobScheduler:
    """The one scheduler of a bot process, with its persistent job store."""

    def __init__(self, url: str | sa.URL, *, clock: Clock | None = None, time_scale: float = 1.0,
                 standby: bool = False, idle_in_transaction: float = 5.0) -> None:
        self.url = url
        self.clock: Clock = clock or SystemClock()
        self.time_scale = time_scale
        #: Start paused and fire nothing until ``hold`` (a replica without the scheduler lease).
        self.standby = standby
        self._holding = not standby
        self._scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=url, tablename="rollback_jobs",
                                                     engine_options=_engine_options(url, idle_in_transaction))},
            # A job may reschedule itself (same id) just before it returns: a second instance
            # must not be skipped then. Jobs that must not overlap serialise themselves.
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 3},
            timezone=dt.UTC,
        )
        self._started = False
        self.manual = isinstance(self.clock, ManualClock)

    async def start(self) -> None:
        """Start (needs a running loop); with a manual clock, jobs fire only through ``run_due``."""
        if not self._started:
            for attempt in range(3):
                try:  # replicas starting together may race to create the job table
                    self._scheduler.start(paused=self.manual or not self._holding)
                    break
                except sa.exc.DBAPIError:
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            self._started = True

    def hold(self) -> None:
        """This replica holds the scheduler lease: fire due jobs (those missed meanwhile too)."""
        self._holding = True
        if self._started and not self.manual:
            self._scheduler.resume()

    def release(self) -> None:
        """The scheduler lease is gone: fire nothing more (jobs stay in the store)."""
        self._holding = False
        if self._started and not self.manual:
            self._scheduler.pause()

    def poll(self) -> None:
        """Look at the job store again now: another replica may have added a job."""
        if self._started and self._holding and not self.manual:
            self._scheduler.wakeup()

    async def shutdown(self) -> None:
        """Stop firing jobs; the job store keeps them for the next start."""
        if self._started:
            self._scheduler.shutdown(wait=False)
            self._started = False
            await asyncio.sleep(0)

    def after(self, seconds: float) -> dt.datetime:
        """The time ``seconds`` of plan time from now, compressed by the time scale."""
        return self.clock.now() + dt.timedelta(seconds=seconds * self.time_scale)

    def scaled(self, seconds: float) -> float:
        """Plan seconds as real seconds."""
        return seconds * self.time_scale

    def schedule(self, incident_id: str, purpose: str, func: JobFunc, at: dt.datetime, /, **kwargs: Any) -> str:
        """Run ``func(**kwargs)`` at ``at``; replaces the incident's job of that purpose."""
        jid = job_id(incident_id, purpose)
        claim = f"{jid}@{at.astimezone(dt.UTC).isoformat()}"
        self._scheduler.add_job(run_claimed, DateTrigger(run_date=at, timezone=dt.UTC), id=jid, name=jid,
                                kwargs={"ref": obj_to_ref(func), "claim": claim, "kwargs": kwargs},
                                replace_existing=True, misfire_grace_time=None, coalesce=True, max_instances=3)
        return jid

    def schedule_cron(self, jid: str, func: JobFunc, trigger: Any, /, **kwargs: Any) -> str:
        """Run ``func(**kwargs)`` at every time of a cron ``trigger``; replaces the job with this id."""
        self._scheduler.add_job(func, trigger, id=jid, name=jid, kwargs=kwargs, replace_existing=True,
                                misfire_grace_time=3600, coalesce=True, max_instances=1)
        return jid

    def remove_jobs(self, prefix: str, *, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove the jobs whose id starts with ``prefix``, except those in ``keep``."""
        gone = [j.id for j in self._scheduler.get_jobs() if j.id.startswith(prefix) and j.id not in keep]
        for jid in gone:
            self._scheduler.remove_job(jid)
        return gone

    def cancel(self, incident_id: str, purpose: str) -> bool:
        """Remove one job; False when there was none."""
        jid = job_id(incident_id, purpose)
        if self._scheduler.get_job(jid) is None:
            return False
        self._scheduler.remove_job(jid)
        return True

    def cancel_incident(self, incident_id: str, *, keep: tuple[str, ...] = ()) -> list[str]:
        """Remove every job of an incident except the purposes in ``keep``; returns the ids removed."""
        gone = []
        for job in self._scheduler.get_jobs():
            inc, _, purpose = job.id.partition(":")
            if inc == incident_id and not any(purpose.startswith(k) for k in keep):
                self._scheduler.remove_job(job.id)
                gone.append(job.id)
        return gone

    def jobs(self, incident_id: str | None = None) -> list[ScheduledJob]:
        """The scheduled jobs (of one incident), soonest first."""
        out = []
        for job in self._scheduler.get_jobs():
            if incident_id is None or job.id.startswith(incident_id + ":"):
                func, kwargs = job.func_ref, dict(job.kwargs)
                if job.func is run_claimed:  # show what the job does, not the claim around it
                    func, kwargs = kwargs["ref"], dict(kwargs["kwargs"])
                out.append(ScheduledJob(job.id, func, job.next_run_time, kwargs))
        far = dt.datetime.max.replace(tzinfo=dt.UTC)
        return sorted(out, key=lambda j: j.next_run or far)

    def job(self, incident_id: str, purpose: str) -> ScheduledJob | None:
        """One job, if scheduled."""
        jid = job_id(incident_id, purpose)
        return next((j for j in self.jobs(incident_id) if j.id == jid), None)

    async def run_due(self, *, limit: int = 1000) -> list[str]:
        """Run, in time order, every job due at the clock's time (a manual clock's way of firing).

        A job is taken off (or moved to its next time) before it runs, so a job that
        schedules its own successor under the same id keeps it.
        """
        ran: list[str] = []
        for _ in range(limit):
            now = self.clock.now()
            due = [j for j in self._scheduler.get_jobs() if j.next_run_time is not None and j.next_run_time <= now]
            if not due:
                return ran
            job = min(due, key=lambda j: j.next_run_time)
            nxt = job.trigger.get_next_fire_time(job.next_run_time, now)
            if nxt is None or nxt <= job.next_run_time:
                self._scheduler.remove_job(job.id)
            else:
                job.modify(next_run_time=nxt)
            ran.append(job.id)
            await job.func(*job.args, **job.kwargs)
        raise RuntimeError(f"more than {limit} jobs due at once: {ran[-5:]}")
