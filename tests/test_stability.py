"""Stability checks against a real local health server, fired by an injected clock.

Every series runs through the job store (``JobScheduler.run_due`` fires what is due at the
manual clock's time), so nothing depends on how fast this machine is.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock.scheduler import JobScheduler, jobs_url
from bot.clock.stability import SeriesPlan, check_line, judge, percentile, sparkline, summary
from bot.core.lifecycle import Status, StepStatus
from bot.state.store import StabilityCheck
from tests.clock_env import T0, ClockEnv
from tests.health_server import HealthServer

RUNBOOK = textwrap.dedent("""\
    name: t
    phases:
      - id: before
        title: Before
        steps:
          - id: maintenance_on
            title: Maintenance mode on
            kind: command
            idempotent: true
            run: "echo on >> maintenance.log"
          - id: health_before
            title: Health before
            kind: http
            url: "{{ target.health_url }}"
            captures:
              latency_ms: latency_ms
      - id: stabilization
        title: "Phase 6: Stabilization"
        steps:
          - id: stability_checks
            title: Stability checks
            kind: stability
            checks: 5
            interval: 60
            headers: {X-User-ID: emergency_admin}
            baseline: "{{ captures.health_before.latency_ms }}"
            maintenance_step: maintenance_on
          - id: maintenance_off
            title: Maintenance mode off
            kind: command
            idempotent: true
            run: "echo off >> maintenance.log"
    """)


@pytest.fixture
async def env(tmp_path: Path, health: HealthServer) -> AsyncIterator[ClockEnv]:
    e = await ClockEnv.open(tmp_path, RUNBOOK, health_url=health.url,
                            mention=lambda roles: "<@U0COMMANDER>" if "incident_commander" in roles else "")
    yield e
    await e.close()


async def _to_series(env: ClockEnv) -> str:
    inc = await env.incident()
    await env.approve(inc.id)  # no approval step in this runbook: harmless
    inc = await env.engine.run(inc.id)
    w = await env.engine.waiting_for(inc.id)
    assert w is not None and w.kind == "stability"
    assert env.runtime.jobs.job(inc.id, "stability") is not None
    return inc.id


async def _failed_series(env: ClockEnv, health: HealthServer) -> str:
    """A series whose first check fails (the health endpoint answers 503); returns the incident's id."""
    iid = await _to_series(env)
    health.mode = "failing"
    await env.tick()
    return iid


def _maintenance_log(env: ClockEnv) -> list[str]:
    p = env.workdir / "maintenance.log"
    return p.read_text().split() if p.exists() else []


async def test_a_passing_series_settles_the_step_and_goes_on(env: ClockEnv, health: HealthServer) -> None:
    iid = await _to_series(env)
    assert await env.tick() == [f"{iid}:stability"]  # check 1 is due at once
    for _ in range(4):
        await env.tick(60)
    checks = await env.store.stability_checks(iid)
    assert [(c.index, c.outcome) for c in checks] == [(i, "ok") for i in range(5)]
    assert [c.due_at for c in checks] == [T0.replace(minute=i) for i in range(5)]
    assert all(h.get("X-User-ID") == "emergency_admin" for h in health.requests[1:])
    inc = await env.store.incident(iid)
    assert inc.status is Status.COMPLETED
    run = (await env.store.latest_runs(iid))["stability_checks"]
    assert run.status is StepStatus.DONE
    c = run.captures
    assert c["availability"] == 100.0 and c["error_rate"] == 0.0 and c["checks_count"] == 5
    assert c["p50_ms"] is not None and c["p95_ms"] >= c["p50_ms"] and c["passed"] is True
    assert _maintenance_log(env) == ["on", "off"]
    assert env.runtime.jobs.jobs(iid) == []


async def test_a_failed_check_holds_the_next_phase_and_asks(env: ClockEnv, health: HealthServer) -> None:
    iid = await _to_series(env)
    await env.tick()
    await env.tick(60)
    health.mode = "failing"
    kicks = len(env.kicks)
    await env.tick(60)
    w = await env.engine.waiting_for(iid)
    assert w is not None and w.kind == "stability_failed"
    assert env.kicks[kicks:] == [iid]  # whoever waits for the series is woken to see it failed
    assert [o["value"] for o in w.options] == ["extend", "maintenance", "continue"]
    assert "HTTP 503" in (w.error or "") and "'error'" in (w.error or "")
    run = (await env.store.latest_runs(iid))["stability_checks"]
    assert run.waiting is not None and run.waiting["mention"] == "<@U0COMMANDER>"
    assert run.waiting["figures"]["checks_failed"] == 1
    # Held: no further check, maintenance mode stays on.
    assert env.runtime.jobs.job(iid, "stability") is None
    await env.tick(600)
    assert len(await env.store.stability_checks(iid)) == 3
    assert _maintenance_log(env) == ["on"]
    assert (await env.engine.run(iid)).status is Status.WAITING


async def test_continue_anyway_goes_on_with_the_figures(env: ClockEnv, health: HealthServer) -> None:
    iid = await _failed_series(env, health)
    await env.engine.answer(iid, "stability_checks", "continue", user="U0COMMANDER")
    inc = await env.engine.run(iid)
    assert inc.status is Status.COMPLETED
    run = (await env.store.latest_runs(iid))["stability_checks"]
    assert run.status is StepStatus.DONE and run.captures["passed"] is False
    assert run.captures["continued_by"] == "U0COMMANDER" and run.captures["error_rate"] == 100.0
    assert _maintenance_log(env) == ["on", "off"]


async def test_extend_monitoring_starts_a_new_series(env: ClockEnv, health: HealthServer) -> None:
    iid = await _failed_series(env, health)
    health.mode = "ok"
    await env.engine.answer(iid, "stability_checks", "extend", user="U0COMMANDER")
    await env.engine.run(iid)
    runs = [r for r in await env.store.step_runs(iid) if r.step_id == "stability_checks"]
    assert [r.attempt for r in runs] == [1, 2] and runs[1].status is StepStatus.WAITING
    await env.tick()
    for _ in range(4):
        await env.tick(60)
    assert (await env.store.incident(iid)).status is Status.COMPLETED
    assert len(await env.store.stability_checks(iid, runs[1].id)) == 5


async def test_reenable_maintenance_runs_the_maintenance_step_and_keeps_the_hold(
        env: ClockEnv, health: HealthServer) -> None:
    iid = await _failed_series(env, health)
    await env.engine.answer(iid, "stability_checks", "maintenance", user="U0COMMANDER")
    inc = await env.engine.run(iid)
    assert inc.status is Status.WAITING
    assert _maintenance_log(env) == ["on", "on"]
    w = await env.engine.waiting_for(iid)
    assert w is not None and w.kind == "stability_failed" and "Maintenance mode is on again" in w.prompt
    assert [o["value"] for o in w.options] == ["extend", "continue", "abort"]
    assert any(e.kind == "maintenance_reenabled" for e in await env.store.events(iid))
    await env.engine.answer(iid, "stability_checks", "abort", user="U0COMMANDER")
    assert (await env.engine.run(iid)).status is Status.ABORTED


async def test_slow_answers_fail_against_the_baseline(tmp_path: Path, health: HealthServer) -> None:
    env = await ClockEnv.open(tmp_path, RUNBOOK, health_url=health.url,
                              stability={"baseline_floor_ms": 50, "failures_allowed": 1})
    try:
        iid = await _to_series(env)
        await env.tick()
        # Slower than the limit the bot derives from the baseline it measured (on a busy machine
        # the baseline is slower too): 5x the baseline, at least the 50 ms floor, at most 2 s.
        baseline = float((await env.store.latest_runs(iid))["health_before"].captures["latency_ms"])
        limit_s = min(2000.0, max(baseline * 5, 50.0)) / 1000
        health.delay = limit_s * 1.5 + 0.1
        await env.tick(60)
        assert (await env.engine.waiting_for(iid)).kind == "stability"  # type: ignore[union-attr]
        await env.tick(60)  # the second failure in a row is one more than allowed
        w = await env.engine.waiting_for(iid)
        assert w is not None and w.kind == "stability_failed" and "baseline" in (w.error or "")
    finally:
        await env.close()


async def test_flapping_within_the_allowance_passes(tmp_path: Path, health: HealthServer) -> None:
    env = await ClockEnv.open(tmp_path, RUNBOOK, health_url=health.url, stability={"failures_allowed": 1})
    try:
        iid = await _to_series(env)
        health.mode = "flapping"
        await env.tick()
        for _ in range(4):
            await env.tick(60)
        run = (await env.store.latest_runs(iid))["stability_checks"]
        assert run.status is StepStatus.DONE
        assert 0 < run.captures["error_rate"] < 100 and run.captures["checks_failed"] >= 2
    finally:
        await env.close()


async def test_a_restart_in_the_middle_records_missed_checks_and_repeats_none(
        tmp_path: Path, health: HealthServer) -> None:
    env = await ClockEnv.open(tmp_path, RUNBOOK, health_url=health.url)
    iid = await _to_series(env)
    await env.tick()
    await env.tick(60)
    assert len(await env.store.stability_checks(iid)) == 2
    clock = env.clock
    await env.close()  # the bot dies; its job waits in the job store

    jobs = JobScheduler(jobs_url(str(tmp_path / "state.db")), clock=clock)
    await jobs.start()
    [job] = jobs.jobs(iid)
    assert job.id == f"{iid}:stability" and job.next_run == T0.replace(minute=2)
    await jobs.shutdown()

    clock.advance(180)  # down for checks 3 and 4; check 5 is due now
    env2 = await ClockEnv.open(tmp_path, RUNBOOK, health_url=health.url, clock=clock)
    try:
        assert await env2.tick() == [f"{iid}:stability"]  # replaced, never doubled
        checks = await env2.store.stability_checks(iid)
        assert [(c.index, c.outcome) for c in checks] == [(0, "ok"), (1, "ok"), (2, "missed"), (3, "missed"),
                                                          (4, "ok")]
        assert "bot was down" in checks[2].reason
        # Shown at the time each really ran; a missed one at the slot it was due.
        assert check_line(checks[2], 15).startswith("·  3/15 09:02:00  missed")
        assert check_line(checks[4], 15).startswith("✓  5/15 09:04:00")
        assert len(health.requests) == 1 + 3  # health_before + checks 1, 2 and 5: none repeated
        inc = await env2.store.incident(iid)
        assert inc.status is Status.COMPLETED
        c = (await env2.store.latest_runs(iid))["stability_checks"].captures
        assert c["checks_missed"] == 2 and c["checks_count"] == 3 and c["availability"] == 100.0
        journal = [e for e in await env2.store.events(iid) if e.kind == "stability_check"]
        assert sorted(e.data["index"] for e in journal) == [0, 1, 2, 3, 4]
    finally:
        await env2.close()


async def test_a_late_check_while_the_bot_runs_is_shown_when_it_ran(tmp_path: Path, health: HealthServer) -> None:
    env = await ClockEnv.open(tmp_path, RUNBOOK, health_url=health.url)
    try:
        iid = await _to_series(env)
        await env.tick()
        await env.tick(90)  # the second check fires 30 s after its slot: the bot was up, so it runs
        checks = await env.store.stability_checks(iid)
        assert [(c.index, c.outcome) for c in checks] == [(0, "ok"), (1, "ok")]
        assert (checks[1].at - checks[1].due_at).total_seconds() == 30
        assert check_line(checks[1], 15).startswith("✓  2/15 09:01:30")
    finally:
        await env.close()


async def test_a_lost_job_is_put_back_at_start(tmp_path: Path, health: HealthServer) -> None:
    env = await ClockEnv.open(tmp_path, RUNBOOK, health_url=health.url)
    iid = await _to_series(env)
    await env.tick()
    env.runtime.jobs.cancel(iid, "stability")  # as if the job store were lost
    clock = env.clock
    await env.close()
    clock.advance(60)
    env2 = await ClockEnv.open(tmp_path, RUNBOOK, health_url=health.url, clock=clock)
    try:
        assert env2.runtime.jobs.job(iid, "stability") is not None
        await env2.tick()
        assert [c.outcome for c in await env2.store.stability_checks(iid)] == ["ok", "ok"]
    finally:
        await env2.close()


async def test_abort_while_the_checks_run(env: ClockEnv) -> None:
    iid = await _to_series(env)
    await env.tick()
    inc = await env.engine.request_abort(iid, user="U0COMMANDER", reason="enough")
    assert inc.status is Status.ABORTED
    await env.tick(60)
    assert len(await env.store.stability_checks(iid)) == 1
    assert env.runtime.jobs.jobs(iid) == []


# ---------------------------------------------------------------- the pure parts


def _plan(**kw: object) -> SeriesPlan:
    base = dict(url="http://x/health", headers={}, mode="gate", checks=3, interval=60.0,
                started_at=T0.isoformat(), timeout=5.0, max_latency_ms=2000.0, baseline_ms=10.0,
                baseline_multiple=5.0, baseline_floor_ms=100.0, failures_allowed=0)
    base.update(kw)
    return SeriesPlan(**base)  # type: ignore[arg-type]


def test_judge_reads_code_body_status_and_latency() -> None:
    plan = _plan()
    assert judge(plan, 200, '{"status": "ok"}', 20).ok
    assert "HTTP 500" in judge(plan, 500, '{"status": "ok"}', 20).reason
    assert "'degraded'" in judge(plan, 200, '{"status": "degraded"}', 20).reason
    assert "None" in judge(plan, 200, "not json", 20).reason
    slow = judge(plan, 200, '{"status": "ok"}', 150)
    assert not slow.ok and "5x baseline" in slow.reason  # 5 x 10 ms is below the 100 ms floor
    assert judge(_plan(baseline_ms=1000.0), 200, '{"status": "ok"}', 2500).reason.endswith("(maximum)")
    assert judge(_plan(baseline_ms=None), 200, '{"status": "ok"}', 1500).ok


def test_summary_percentiles_and_sparkline() -> None:
    plan = _plan(checks=4)
    mk = [StabilityCheck(0, "RB", 1, "s", i, T0, T0, o, 200, "ok", lat, "")
          for i, (o, lat) in enumerate([("ok", 10.0), ("failed", 40.0), ("missed", None), ("ok", 20.0)])]
    fig = summary(mk, plan)
    assert fig["availability"] == 66.67 and fig["error_rate"] == 33.33 and fig["checks_missed"] == 1
    assert fig["p50_ms"] == 20.0 and fig["p95_ms"] == 40.0
    assert percentile([], 50) is None
    assert sparkline([10.0, 40.0, None, 20.0]) == "▁█·▃"


def test_runbook_checks_the_stability_step() -> None:
    from bot.core.runbook import RunbookError, StabilityStep, default_runbook, parse_runbook

    rb = default_runbook()
    gate = rb.step("stability_checks")
    watch = rb.step("extended_watch")
    assert isinstance(gate, StabilityStep) and gate.mode == "gate" and gate.maintenance_step == "maintenance_on"
    assert isinstance(watch, StabilityStep) and watch.mode == "watch"
    phase6 = [s.id for s in rb.phase_of("stability_checks").steps]
    assert phase6.index("stability_checks") < phase6.index("maintenance_off") < phase6.index("extended_watch")
    bad = RUNBOOK.replace("maintenance_step: maintenance_on", "maintenance_step: maintenance_off")
    with pytest.raises(RunbookError) as exc:
        parse_runbook(bad, "rb.yml")
    assert "maintenance_step 'maintenance_off' is not an earlier step" in str(exc.value)
    with pytest.raises(RunbookError) as exc:
        parse_runbook(RUNBOOK.replace("checks: 5", "checks: 0"), "rb.yml")
    assert "rb.yml:" in str(exc.value) and "checks" in str(exc.value)
