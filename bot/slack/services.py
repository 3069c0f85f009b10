"""What the Slack flows work with, built once per process from the settings."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.clock.flows import ClockRuntime, fan_out, mentions_for
from bot.clock.scheduler import Clock, JobScheduler, jobs_url
from bot.core.approvals import ApprovalPolicy
from bot.core.config import INCIDENT_COMMANDER, BotConfig
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status
from bot.core.redaction import SECRET_ENV, Redactor, env_secrets, redact_logs
from bot.core.roles import RoleDirectory
from bot.core.runbook import NotifyStep, Runbook, default_runbook, load_runbook
from bot.plan.rehearsal_channel import ChannelRehearsals
from bot.plan.rehearsal_jobs import Reporter, schedule_rehearsals
from bot.plan.rehearsal_jobs import install as install_reporter
from bot.record.records import Records
from bot.slack.people import PeopleDirectory
from bot.slack.publisher import ThreadPublisher
from bot.state.control import ControlPoller, Executor
from bot.state.replicas import Coordinator
from bot.state.runtime import ReplicaRuntime
from bot.state.store import DEDUP_SECONDS, Store, state_url

log = logging.getLogger(__name__)

#: How long a Slack request id is remembered to drop Slack's retries of it.
DEDUPE_SECONDS = 600.0
#: Longest wait for running work, and for SSH connections to close, when the bot stops.
CLOSE_SECONDS = 3.0


@dataclass
class Services:
    """The store, engine, runbook, roles and thread publisher of one bot process."""

    config: BotConfig
    store: Store
    engine: Engine
    runbook: Runbook
    policy: ApprovalPolicy
    roles: RoleDirectory
    publisher: ThreadPublisher
    client: AsyncWebClient
    targets: dict[str, Target]
    clock: ClockRuntime | None = None
    #: Carries out ``rollback-bot incident answer|abort`` requests from the store.
    control: ControlPoller | None = None
    _control_task: asyncio.Task[None] | None = None
    #: Set on PostgreSQL, where this process is one replica of several.
    replicas: ReplicaRuntime | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _seen: OrderedDict[str, float] = field(default_factory=OrderedDict)

    async def first_time(self, key: str | None) -> bool:
        """False for a request id seen in the last ten minutes (a Slack retry); remembers it.

        Several replicas remember ids in the database (a retry may reach another replica);
        one replica keeps them in memory, off the SQLite writer's path.
        """
        if not key:
            return True
        if self.store.replicated:
            return await self.store.first_time(key)
        now = time.monotonic()
        while self._seen and next(iter(self._seen.values())) < now - DEDUP_SECONDS:
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    async def forget(self, key: str) -> None:
        """Let a request id through again (a form sent back with errors)."""
        if self.store.replicated:
            await self.store.forget(key)
        self._seen.pop(key, None)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run work in the background, keeping a reference and logging a failure with an id."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            ref = uuid.uuid4().hex[:8]
            log.error("background task %s failed [error id %s]", task.get_name(), ref, exc_info=exc)

    def run_incident(self, incident_id: str) -> asyncio.Task[Any]:
        """Let the engine go on with an incident in the background (on its lease's holder)."""
        if self.replicas is not None:
            return self.replicas.kick(incident_id)
        return self.spawn(self.engine.run(incident_id), name=f"run-{incident_id}")

    async def idle(self, timeout: float = 60.0) -> None:
        """Wait for background work and thread syncs to finish (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("background work did not finish")
            await asyncio.wait(list(self._tasks), timeout=left)
        for inc in await self.store.incidents():
            await self.publisher.settled(inc.id, timeout=max(0.1, deadline - time.monotonic()))

    async def may_act(self, user_id: str) -> list[str]:
        """The user's roles if they may answer or abort (approvers, incident commanders), else []."""
        roles = await self.roles.roles_of(user_id)
        allowed = self.policy.roles | {INCIDENT_COMMANDER}
        return roles if set(roles) & allowed else []

    async def resume(self) -> None:
        """After a start: catch every thread up and let running incidents go on."""
        for problem in await self.roles.warm():
            log.warning("%s", problem)
        if self.replicas is not None:
            # One replica of several: the leases decide what this one runs, writes and fires.
            await self.engine.audit.flush()
            if self.clock is not None:
                await self.clock.start(reconcile=False)
            await self.replicas.start()
            return
        await self.publisher.catch_up()
        await self.engine.audit.flush()  # events journaled while the bot was down
        for inc in await self.store.incidents(active_only=True):
            if inc.status in (Status.RUNNING, Status.COMPENSATING):
                self.run_incident(inc.id)
        if self.clock is not None:
            await self.clock.start()  # jobs that fell while the bot was down run now
        if self.control is not None and self._control_task is None:
            # Requests made from the command line while the bot was down are carried out first.
            await self.control.once()
            self._control_task = asyncio.create_task(self.control.run(), name="control-requests")

    async def open_incident(self, incident_id: str) -> None:
        """A new incident: set its clock (deadline, window, expiry), post its thread and run it."""
        if self.clock is not None:
            await self.clock.incident_opened(incident_id)
        self.publisher.request(incident_id)
        self.run_incident(incident_id)

    async def kick(self, incident_id: str) -> None:
        """Let the engine go on with an incident (scheduled jobs call this)."""
        self.run_incident(incident_id)

    async def close(self, why: str = "bot stopped") -> None:
        """Stop background work (no new step starts; a running one is journaled as interrupted and
        resumes as after a crash), close SSH connections and the store, in a few seconds at most."""
        self.engine.stopping = True
        await self.engine.settle()  # the thread and the jobs catch up while both still run
        if self._control_task is not None:
            self._control_task.cancel()
            await asyncio.wait([self._control_task], timeout=5)
        if self.replicas is not None:
            await self.replicas.close()
        if self.clock is not None:
            await self.clock.close()
        install_reporter(None)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_SECONDS)
        stopped = await self.engine.stop(why)
        if stopped:
            log.info("interrupted by the stop, resumed at the next start: %s", ", ".join(stopped))
        await self.publisher.close()
        closing = [asyncio.create_task(t.close()) for t in self.targets.values()]
        if closing:
            _, late = await asyncio.wait(closing, timeout=CLOSE_SECONDS)
            for task in late:
                task.cancel()
        await self.engine.aclose()
        await self.engine.audit.flush()
        await self.store.close()


async def build_services(config: BotConfig, client: AsyncWebClient, *, clock: Clock | None = None,
                         config_path: str | None = None) -> Services:
    """Open the store and transports and wire the engine to the thread publisher and the scheduler
    (with the configured rehearsals when the config file's path is known)."""
    runbook = load_runbook(config.runbook) if config.runbook else default_runbook()
    policy = config.policy.policy()
    store = await Store.open(config.state_db, idle_in_transaction=config.replicas.lease_seconds)
    targets = {t.name: Target.open(t) for t in config.targets}
    publisher = ThreadPublisher(client=client, store=store, runbook=runbook, policy=policy,
                                update_interval=config.slack.update_interval_seconds,
                                retry_max=config.slack.retry_max_seconds,
                                upload_over=config.slack.upload_over_bytes)
    config.artifacts_dir.mkdir(parents=True, exist_ok=True)
    # Relative record paths were taken from the config file's folder; without one, beside the artifacts.
    records = Records.open(config.records.resolved(config.artifacts_dir.parent))
    # Webhook URLs are credentials too: every notify step's variable, beside the bot's own secrets.
    hooks = [s.url_env for _, s in runbook.steps() if isinstance(s, NotifyStep)]
    secrets = env_secrets([*SECRET_ENV, *(t.github_token_env for t in config.targets), *hooks])
    engine = Engine(store, runbook, targets, artifacts_dir=config.artifacts_dir, time_scale=config.time_scale,
                    policies={"default": policy}, on_change=publisher.on_change, records=records,
                    redact=Redactor(config.redact, secrets), names=PeopleDirectory(client).names)
    redact_logs(engine.redact)
    roles = RoleDirectory(config.roles, client, refresh_seconds=config.slack.usergroup_refresh_seconds)
    services = Services(config=config, store=store, engine=engine, runbook=runbook, policy=policy, roles=roles,
                        publisher=publisher, client=client, targets=targets)
    replicated = store.replicated
    jobs = JobScheduler(jobs_store_url(config), clock=clock, time_scale=config.time_scale, standby=replicated,
                        idle_in_transaction=config.replicas.lease_seconds)
    services.clock = ClockRuntime(engine=engine, jobs=jobs, settings=config.clock, stability=config.stability,
                                  policy=policy, kick=services.kick, mention=mentions_for(config.roles),
                                  holders=roles.holders)
    engine.clock_host = services.clock
    rehearsals = ChannelRehearsals(config, store, engine, services.open_incident, services.run_incident)
    executor = Executor(store, engine, policy, roles.roles_of, online=True, kick=services.run_incident,
                        actions=rehearsals.actions())
    services.control = ControlPoller(executor, name=f"serve:{socket.gethostname()}:{os.getpid()}")
    if config_path is not None:
        schedule_rehearsals(jobs, config, config_path)

        async def post(channel: str, text: str) -> None:
            try:
                await client.chat_postMessage(channel=channel, text=text)
            except SlackApiError as exc:
                log.error("rehearsal report to %s failed: %s", channel, exc.response.get("error"))

        install_reporter(Reporter(post=post, mention=mentions_for(config.roles)))
    engine.on_change = fan_out(publisher.on_change, services.clock.on_change)
    if replicated:
        coordinator = Coordinator(store, ttl=config.replicas.lease_seconds, poll=config.replicas.poll_seconds)
        services.replicas = ReplicaRuntime(coordinator, engine, publisher, services.clock, services.spawn)
    return services


def jobs_store_url(config: BotConfig) -> str | sa.URL:
    """Where the scheduled jobs live: beside a SQLite state file, or in the same PostgreSQL database
    through a synchronous driver (APScheduler 3's job store is synchronous), its password from the
    environment like the store's."""
    url = config.jobs_db or config.state_db
    if "://" not in url or not url.split("://", 1)[0].startswith("postgres"):
        return config.jobs_db or jobs_url(config.state_db)
    return state_url(url).set(drivername="postgresql+psycopg2")
