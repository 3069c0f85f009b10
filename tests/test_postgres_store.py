"""The state store on a real PostgreSQL: schema version, password handling, shared dedup, leases and fences."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio

from bot.clock.scheduler import JobScheduler
from bot.core.config import ConfigError, Settings, SlackSecrets, parse_config
from bot.core.lifecycle import StepStatus
from bot.slack.services import jobs_store_url
from bot.state.replicas import INCIDENT, SCHEDULER, Coordinator
from bot.state.schema import SCHEMA_VERSION, LeaseLost, SchemaTooNew, fenced, schema_version
from bot.state.store import AlreadyAnswered, StateUrlError, Store, TargetBusy, state_url
from handlers.app import serve
from tests.pg import PgCluster, free_port
from tests.slack_fake import SlackFake


async def test_the_store_works_the_same_on_postgresql(pg_url: str) -> None:
    store = await Store.open(pg_url)
    try:
        assert store.replicated
        inc = await store.create_incident(target="db1", runbook="rb", severity="P1", requester="U1", reason="r")
        with pytest.raises(TargetBusy):
            await store.create_incident(target="db1", runbook="rb")
        other = await store.create_incident(target="db2", runbook="rb")
        assert other.id.endswith("0002")
        run = await store.begin_step(inc.id, "backup", "p1")
        done = await store.end_step(run.id, StepStatus.DONE, captures={"path": "/x"}, exit_status=0)
        assert done.status is StepStatus.DONE and done.duration is not None and done.captures == {"path": "/x"}
        assert [e.kind for e in await store.events(inc.id)] == ["incident_opened", "step_running", "step_done"]
        assert (await store.incident(inc.id)).created_at.tzinfo is not None
    finally:
        await store.close()


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two replicas' stores on one PostgreSQL database, closed after the test."""
    a, b = await Store.open(pg_url), await Store.open(pg_url)
    yield a, b
    await a.close()
    await b.close()


async def test_two_replicas_creating_at_once_get_one_incident_per_target(replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    results = await asyncio.gather(*(s.create_incident(target="db1", runbook="rb") for s in (a, b, a, b)),
                                   return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    busy = [r for r in results if isinstance(r, TargetBusy)]
    print(f"concurrent starts: {len(made)} created, {len(busy)} refused as busy")
    assert len(made) == 1 and len(busy) == 3


async def test_a_slack_retry_reaching_another_replica_is_dropped(replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    assert await a.first_time("act:U1:123.4")
    assert not await b.first_time("act:U1:123.4")  # the retry, answered by another replica
    await b.forget("act:U1:123.4")
    assert await a.first_time("act:U1:123.4")


async def test_a_newer_schema_refuses_the_start_and_changes_nothing(pg_url: str) -> None:
    store = await Store.open(pg_url)
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION + 1))
    await store.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}, newer than this bot's"):
        await Store.open(pg_url)
    engine = sa.ext.asyncio.create_async_engine(state_url(pg_url))
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(schema_version.c.version))).scalar_one() == SCHEMA_VERSION + 1
    await engine.dispose()


async def test_the_password_comes_from_the_environment_never_the_url(
        pg_cluster: PgCluster, pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(StateUrlError, match="ROLLBACK_BOT_DB_PASSWORD"):
        state_url(pg_url.replace("rollback@", "rollback:hunter2@"))
    problems = []
    try:
        parse_config({"slack": {"channels": ["C1"]}, "targets": [{"name": "t", "transport": "local", "workdir": "/"}],
                      "state_db": pg_url.replace("rollback@", "rollback:hunter2@")})
    except ConfigError as exc:
        problems = exc.problems
    assert problems == ["state_db: the URL holds a password; put it in ROLLBACK_BOT_DB_PASSWORD instead"]
    caplog.set_level(logging.DEBUG)
    url = state_url(pg_url)
    assert url.password == pg_cluster.password and pg_cluster.password not in str(url)
    store = await Store.open(pg_url)
    await store.close()
    assert pg_cluster.password not in caplog.text
    # The job store reaches the same database through the synchronous driver, with the same password.
    cfg = parse_config({"slack": {"channels": ["C1"]}, "state_db": pg_url,
                        "targets": [{"name": "t", "transport": "local", "workdir": "/"}]})
    jobs_url = jobs_store_url(cfg)
    assert isinstance(jobs_url, sa.URL) and jobs_url.drivername == "postgresql+psycopg2"
    jobs = JobScheduler(jobs_url, standby=True)
    await jobs.start()
    assert jobs.jobs() == []
    await jobs.shutdown()
    monkeypatch.delenv("ROLLBACK_BOT_DB_PASSWORD")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(Exception, match="password"):
        await Store.open(pg_url)


async def test_one_lease_holder_and_a_stale_runner_is_fenced_off(replicas: tuple[Store, Store]) -> None:
    a_store, b_store = replicas
    a = Coordinator(a_store, ttl=1.0, poll=0.1, name="replica-a")
    b = Coordinator(b_store, ttl=1.0, poll=0.1, name="replica-b")
    inc = await a_store.create_incident(target="db1", runbook="rb")
    lease = INCIDENT + inc.id
    assert await a.acquire(lease) == 1
    assert await b.acquire(lease) is None  # held and not expired
    fence_a = a.fence(inc.id)
    assert fence_a is not None
    with fenced(fence_a):
        run = await a_store.begin_step(inc.id, "s1", "p")
        await a_store.check_lease(inc.id)
    await asyncio.sleep(1.3)  # a stops renewing (paused) past its lease
    assert await b.acquire(lease) == 2  # a standby takes over with a higher token
    with fenced(fence_a), pytest.raises(LeaseLost):
        await a_store.check_lease(inc.id)
    with fenced(fence_a), pytest.raises(LeaseLost):
        await a_store.end_step(run.id, StepStatus.DONE)  # the stale runner's write is refused
    assert (await b_store.step_run(run.id)).status is StepStatus.RUNNING
    fence_b = b.fence(inc.id)
    assert fence_b is not None
    with fenced(fence_b):
        await b_store.end_step(run.id, StepStatus.INTERRUPTED)
    # A click answered by a replica that runs nothing is not fenced.
    await a_store.log(inc.id, "note", actor="U1")
    await a.nudge(lease)
    assert (await b._renew())[lease] == (2, 1)
    await b.release(lease)
    assert await a.acquire(lease) == 3


async def test_a_job_run_is_claimed_once_and_only_under_the_scheduler_lease(replicas: tuple[Store, Store]) -> None:
    a_store, b_store = replicas
    a = Coordinator(a_store, ttl=1.0, name="replica-a")
    b = Coordinator(b_store, ttl=1.0, name="replica-b")
    assert not await a.claim("RB-1:stability@t1")  # no scheduler lease: no claim
    assert await a.acquire(SCHEDULER) is not None
    assert await a.claim("RB-1:stability@t1")
    assert not await a.claim("RB-1:stability@t1")  # the same run again
    await asyncio.sleep(1.3)
    assert await b.acquire(SCHEDULER) is not None
    assert not await a.claim("RB-1:stability@t2")  # a resumed ex-holder claims nothing
    assert await b.claim("RB-1:stability@t2")


async def test_two_replicas_answering_one_question_at_once_the_first_wins(replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    inc = await a.create_incident(target="db1", runbook="rb")
    run = await a.begin_step(inc.id, "pick", "p", status=StepStatus.WAITING,
                             waiting={"kind": "choice", "options": []})
    results = await asyncio.gather(
        a.end_step(run.id, StepStatus.WAITING, actor="U1", answer={"value": "A", "user": "U1"}),
        b.end_step(run.id, StepStatus.WAITING, actor="U2", answer={"value": "B", "user": "U2"}),
        return_exceptions=True)
    refused = [r for r in results if isinstance(r, AlreadyAnswered)]
    assert len(refused) == 1
    winner = (await a.step_run(run.id)).answer
    assert winner is not None and winner["user"] in ("U1", "U2")


async def test_serve_refuses_a_newer_schema_and_a_wrong_password_with_one_line(
        pg_cluster: PgCluster, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await Store.open(pg_url)
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION + 1))
    await store.close()
    config = parse_config({"slack": {"channels": ["C1"], "http_port": free_port()}, "state_db": pg_url,
                           "targets": [{"name": "t", "transport": "local", "workdir": "/"}]})
    async with SlackFake() as fake:
        secrets = SlackSecrets.model_validate({"slack_bot_token": fake.bot_token, "slack_api_url": fake.base_url,
                                               "slack_signing_secret": fake.signing_secret})
        err = io.StringIO()
        assert await serve(Settings(config, secrets), err=err) == 1
        assert err.getvalue().count("\n") == 1 and "newer than this bot's" in err.getvalue()
        monkeypatch.setenv("ROLLBACK_BOT_DB_PASSWORD", "not-the-password")
        err = io.StringIO()
        assert await serve(Settings(config, secrets), err=err) == 1
        assert "cannot open the state database" in err.getvalue() and "password" in err.getvalue()
        assert "not-the-password" not in err.getvalue() and pg_cluster.password not in err.getvalue()
