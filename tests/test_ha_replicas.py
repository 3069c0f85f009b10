"""Several ``serve`` replicas as separate processes on one real PostgreSQL, the Slack fake and the sshd target.

Clicks go to whichever replica the test's "load balancer" picks; replicas are killed
(SIGKILL), paused past their lease (SIGSTOP/SIGCONT), and PostgreSQL is restarted under
them. The target keeps a command log (each step appends its line on the target), so a
step that ran twice shows there, whatever the journal says.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.drill.sshd import SshdTarget
from bot.state.replicas import INCIDENT, SCHEDULER
from bot.state.store import Store, incidents
from tests import ha_incident as ha
from tests.ha_cluster import CH, IC, Cluster, until
from tests.health_server import HealthServer
from tests.pg import PgCluster, wait_ready
from tests.slack_fake import SlackFake

pytestmark = pytest.mark.sshd

STABILITY_RUNBOOK = ha.runbook("ha-stability", """\
    - id: stabilization
      title: Stabilization
      steps:
        - {id: before, title: Before, kind: command, idempotent: false, run: "echo before >> cmdlog"}
        - {id: checks, title: Stability checks, kind: stability, checks: 15, interval: 60}
        - {id: maint_off, title: Maintenance off, kind: command, idempotent: false, run: "echo off >> cmdlog"}
    """)


@pytest.fixture
async def fake() -> AsyncIterator[SlackFake]:
    async with ha.cluster_fake() as f:
        yield f


async def _open_incident(cluster: Cluster, *, reason: str = "bad deploy") -> tuple[str, str]:
    """/rollback start, the form and the IC's approval, each on another replica; (incident id, root ts)."""
    iid, root_ts, button = await ha.open_incident(cluster, reason=reason)
    driver = cluster.driver()
    approve = await driver.press(button, IC)
    assert approve.status == 200
    # Slack retries the click at another replica: the retry is dropped there.
    retry = await driver.replay(approve.request, retry_num=1)
    assert retry.status == 200
    return iid, root_ts


async def _status(cluster: Cluster, iid: str) -> str:
    async with cluster.db.connect() as conn:
        return str((await conn.execute(sa.select(incidents.c.status).where(incidents.c.id == iid))).scalar())


async def test_a_whole_incident_with_clicks_spread_over_three_replicas_and_postgresql_restarted(
        tmp_path: Path, fake: SlackFake, pg_cluster: PgCluster, pg_url: str, sshd_target: SshdTarget) -> None:
    workdir, target = ha.ssh_target(sshd_target, tmp_path)
    cluster = Cluster.make(tmp_path, fake, pg_url, pg_cluster.password, runbook=ha.incident_runbook(0.2, 2),
                           workdir=workdir, target=target, n=3)
    try:
        await cluster.start()
        iid, root_ts = await _open_incident(cluster)
        # PostgreSQL restarts under the replicas while a step runs on the target.
        await until(lambda: ha.cmd_log(workdir)["idem-start"] >= 1, "idem started", cluster=cluster)
        await cluster.db.dispose()
        pg_cluster.restart()
        wait_ready(pg_cluster)
        clicked = await ha.press(cluster, root_ts, "Way B")
        runner = await cluster.holder(INCIDENT + iid)

        def answered() -> bool:
            return any("Answered *Way B*" in str(m.blocks) for m in fake.thread(CH, root_ts))

        await until(answered, "the answer reached the thread", cluster=cluster, every=0.01)
        latency = time.monotonic() - clicked
        await ha.press(cluster, root_ts, "Done")
        await until(lambda: ha.completed(fake, root_ts), "the incident completed", timeout=90, cluster=cluster)
        for i in range(3):
            await cluster.wait_healthy(i)  # every replica reconnected
        events = await ha.journal(cluster, iid)
        approvals = [e for e in events if e[0] == "approval_approve"]
        keys = ha.thread_keys(fake, root_ts)
        log = ha.cmd_log(workdir)
        print(f"clicks over 3 replicas: runner replica {runner}, click-to-thread {latency * 1000:.0f} ms, "
              f"{len(approvals)} approval recorded of 2 deliveries, {len(keys)} thread messages; "
              f"PostgreSQL restarted mid-step: idem ran {log['idem-start']}x")
        assert len(approvals) == 1
        assert len(keys) == len(set(keys)), f"a thread message was posted twice: {keys}"
        assert log["first"] == 1 and log["slow-start"] == 1 and log["after"] == 1
        assert 1 <= log["idem-start"] <= 2  # idempotent: re-run only if the restart cut it off
        # The finished incident's lease was given back.
        await until(lambda: _released(cluster, INCIDENT + iid), "the lease was released", cluster=cluster)
    finally:
        await cluster.stop_all()


async def _released(cluster: Cluster, lease: str) -> bool:
    return await cluster.holder(lease) is None


async def test_a_runner_paused_past_its_lease_then_a_runner_killed_standbys_resume_nothing_runs_twice(
        tmp_path: Path, fake: SlackFake, pg_cluster: PgCluster, pg_url: str, sshd_target: SshdTarget,
        proof_report: Any) -> None:
    workdir, target = ha.ssh_target(sshd_target, tmp_path)
    cluster = Cluster.make(tmp_path, fake, pg_url, pg_cluster.password, runbook=ha.incident_runbook(3, 3),
                           workdir=workdir, target=target, n=3)
    try:
        await cluster.start()
        iid, root_ts = await _open_incident(cluster)
        lease = INCIDENT + iid

        # 1. The runner is paused (SIGSTOP) in a step that is not idempotent, past its lease.
        await until(lambda: ha.cmd_log(workdir)["slow-start"] >= 1, "slow started", cluster=cluster)
        paused = await cluster.holder(lease)
        assert paused is not None
        token = await cluster.token(lease)
        before = len(await ha.journal(cluster, iid))
        stopped = time.monotonic()
        cluster.signal(paused, signal.SIGSTOP)
        standby = await until(lambda: _other_holder(cluster, lease, paused), "a standby took the lease",
                              timeout=30, cluster=cluster)
        await until(lambda: _resumed(cluster, iid, before), "the standby resumed", timeout=30, cluster=cluster)
        takeovers = [time.monotonic() - stopped]
        await until(lambda: any(b.text == "Mark done" for b in fake.buttons(CH, root_ts)),
                    "the standby asked about the interrupted step", cluster=cluster)
        await until(lambda: ha.cmd_log(workdir)["slow-end"] >= 1, "the paused runner's command ended on the target")
        cluster.signal(paused, signal.SIGCONT)
        paused_log = cluster.replicas[paused].log
        await until(lambda: "lost lease" in paused_log.read_text() or "before its next step" in paused_log.read_text(),
                    "the woken runner noticed it lost the lease", cluster=cluster)
        refused = paused_log.read_text().count("is no longer held by this replica")
        woke_effects = ha.cmd_log(workdir)["idem-start"]
        await ha.press(cluster, root_ts, "Mark done")

        # 2. The new runner is killed (SIGKILL) in an idempotent step: the third replica re-runs it.
        await until(lambda: ha.cmd_log(workdir)["idem-start"] >= 1, "idem started", cluster=cluster)
        runner = await cluster.holder(lease)
        assert runner is not None and runner != paused
        before = len(await ha.journal(cluster, iid))
        killed = time.monotonic()
        cluster.kill(runner)
        await until(lambda: _resumed(cluster, iid, before), "a standby resumed", timeout=30, cluster=cluster)
        takeovers.append(time.monotonic() - killed)
        await ha.press(cluster, root_ts, "Way A")
        await ha.press(cluster, root_ts, "Done")
        await until(lambda: ha.completed(fake, root_ts), "the incident completed", timeout=90, cluster=cluster)

        events = await ha.journal(cluster, iid)
        started = Counter(s for k, s, _d in events if k == "step_running")
        log = ha.cmd_log(workdir)
        keys = ha.thread_keys(fake, root_ts)
        took = ", ".join(f"{t:.1f}" for t in takeovers)
        line = (f"pause and kill of the runner: standby {standby} took token {await cluster.token(lease)} "
                f"(from {token}); resumed after {took} s; woken runner's side effects: {woke_effects}, its refused "
                f"writes: {refused}; target ran slow {log['slow-start']}x, idem {log['idem-start']}x; "
                f"thread {len(keys)} messages")
        print(line)
        proof_report(line)
        assert max(takeovers) < 10
        assert woke_effects == 0  # the paused runner did nothing once it woke
        assert log["first"] == 1 and log["slow-start"] == 1 and log["after"] == 1  # never twice
        assert started["slow"] == 1 and started["first"] == 1 and started["after"] == 1
        assert log["idem-start"] == 2 and started["idem"] == 2  # idempotent: re-run by the standby
        assert len(keys) == len(set(keys)), f"a thread message was posted twice: {keys}"
    finally:
        await cluster.stop_all()


async def _resumed(cluster: Cluster, iid: str, before: int) -> bool:
    """The journal shows a step restarted or marked interrupted since entry ``before``."""
    return any(k in ("step_interrupted", "step_running") for k, _s, _d in (await ha.journal(cluster, iid))[before:])


async def _other_holder(cluster: Cluster, lease: str, not_this: int) -> int | None:
    holder = await cluster.holder(lease)
    return holder if holder is not None and holder != not_this else None


async def test_the_scheduler_holder_killed_during_the_stability_checks(
        tmp_path: Path, fake: SlackFake, pg_cluster: PgCluster, pg_url: str, sshd_target: SshdTarget,
        proof_report: Any) -> None:
    workdir, target = ha.ssh_target(sshd_target, tmp_path)
    async with HealthServer() as health:
        cluster = Cluster.make(tmp_path, fake, pg_url, pg_cluster.password, runbook=STABILITY_RUNBOOK,
                               workdir=workdir, target={**target, "health_url": health.url}, n=2,
                               extra={"stability": {"max_latency_ms": 60000}})
        try:
            await cluster.start()
            iid, root_ts = await _open_incident(cluster)

            async def checks() -> list[tuple[int, str]]:
                store = await Store.open(cluster.db_url, {"ROLLBACK_BOT_DB_PASSWORD": cluster.db_password})
                try:
                    return [(c.index, c.outcome) for c in await store.stability_checks(iid)]
                finally:
                    await store.close()

            await until(lambda: _at_least(checks, 3), "three checks recorded", cluster=cluster)
            holder = await cluster.holder(SCHEDULER)
            assert holder is not None
            cluster.kill(holder)
            await until(lambda: ha.completed(fake, root_ts), "the incident completed", timeout=90, cluster=cluster)
            recorded = await checks()
            events = [d for k, _s, d in await ha.journal(cluster, iid) if k == "stability_check"]
            missed = sum(1 for _i, o in recorded if o == "missed")
            ran = sum(1 for _i, o in recorded if o != "missed")
            line = (f"scheduler holder killed mid-series: {len(recorded)}/15 checks recorded, {ran} ran, "
                    f"{missed} missed, {len(health.requests)} health requests, {len(events)} journal entries")
            print(line)
            proof_report(line)
            assert sorted(i for i, _o in recorded) == list(range(15))  # each once: none doubled, none lost
            assert sorted(d["index"] for d in events) == list(range(15))
            # No check was sent twice, but one in flight when its replica died (sent, never recorded).
            assert ran <= len(health.requests) <= ran + 1
            assert missed >= 1  # the failover really fell on the series
            assert ha.cmd_log(workdir) == Counter({"before": 1, "off": 1})
        finally:
            await cluster.stop_all()


async def _at_least(checks: Any, n: int) -> bool:
    return len(await checks()) >= n
