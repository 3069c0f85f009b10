"""The flows the clock drives, with an injected clock: P3 window, P2 reminders, escalation and
expiry of approvals, Phase 7 reminders."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock.flows import P2_DECISION, P3_DECISION
from bot.clock.settings import MaintenanceWindow
from bot.core.approvals import DEFAULT_POLICY
from bot.core.lifecycle import Status
from bot.slack.thread import desired_messages
from bot.slack.view import load_state
from tests.clock_env import T0, ClockEnv

RUNBOOK = textwrap.dedent("""\
    name: t
    phases:
      - id: authorization
        title: Authorization
        steps:
          - {id: approval, title: Approval, kind: approval}
      - id: emergency_response
        title: "Phase 1"
        steps:
          - id: maintenance_window
            title: Wait for the maintenance window (P3)
            kind: window
            when: "incident.decision == 'Next maintenance window'"
          - id: work
            title: Work
            kind: command
            idempotent: true
            run: "echo ran >> work.log"
      - id: post_rollback
        title: "Phase 7"
        steps:
          - {id: root_cause_analysis, title: "Root cause analysis (due within 7 days)", kind: manual, blocking: false}
          - {id: lessons_learned, title: "Lessons learned documented", kind: manual, blocking: false}
    """)

SETTINGS = {
    "maintenance_window": {"cron": "0 2 * * sat", "timezone": "Europe/Berlin", "duration_minutes": 120},
    "escalation": [["cto", "vp_engineering"], ["incident_commander"]],
}


def _mention(roles: list[str]) -> str:
    return " ".join(f"<!subteam^S0{r.upper()}>" for r in roles)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ClockEnv]:
    e = await ClockEnv.open(tmp_path, RUNBOOK, settings=SETTINGS, mention=_mention)
    yield e
    await e.close()


def _ran(env: ClockEnv) -> bool:
    return (env.workdir / "work.log").exists()


async def _thread_text(env: ClockEnv, iid: str) -> str:
    state = await load_state(env.store, env.engine.runbook, iid)
    return "\n".join(str(m.payload()) for m in desired_messages(state, env.engine.runbook, DEFAULT_POLICY))


# ---------------------------------------------------------------- P3


def test_the_window_from_cron_and_time_zone() -> None:
    win = MaintenanceWindow(cron="0 2 * * sat", timezone="Europe/Berlin", duration_minutes=120)
    start, end = win.current_or_next(T0)  # Wednesday 09:00 UTC
    assert start == dt.datetime(2026, 11, 28, 1, 0, tzinfo=dt.UTC)  # Sat 02:00 CET
    assert end - start == dt.timedelta(hours=2)
    assert win.current_or_next(start + dt.timedelta(minutes=30)) == (start, end)  # open now
    assert win.current_or_next(end)[0] == start + dt.timedelta(days=7)
    assert "Sat 2026-11-28 02:00 Europe/Berlin (01:00 UTC)" == win.describe(start)
    with pytest.raises(ValueError):
        MaintenanceWindow(timezone="Mars/Olympus")
    with pytest.raises(ValueError):
        MaintenanceWindow(cron="every saturday")


async def test_p3_is_scheduled_into_the_window_with_approvals_first(env: ClockEnv) -> None:
    inc = await env.incident(decision=P3_DECISION, severity="P3")
    await env.runtime.incident_opened(inc.id)
    inc = await env.store.incident(inc.id)
    window = inc.inputs["window"]
    assert window["start"] == "2026-11-28T01:00:00+00:00" and "Europe/Berlin" in window["label"]
    assert "maintenance window Sat 2026-11-28 02:00" in await _thread_text(env, inc.id)
    await env.engine.run(inc.id)
    assert (await env.engine.waiting_for(inc.id)).kind == "approval"  # type: ignore[union-attr]
    await env.approve(inc.id)
    await env.engine.run(inc.id)
    w = await env.engine.waiting_for(inc.id)
    assert w is not None and w.kind == "window" and not _ran(env)
    job = env.runtime.jobs.job(inc.id, "window")
    assert job is not None and job.next_run == dt.datetime(2026, 11, 28, 1, 0, tzinfo=dt.UTC)
    await env.tick(3600)
    assert not _ran(env)
    env.clock.set(dt.datetime(2026, 11, 28, 1, 0, tzinfo=dt.UTC))
    await env.tick()
    assert _ran(env)
    assert (await env.store.incident(inc.id)).status is Status.COMPLETED
    assert "the rollback started" in await _thread_text(env, inc.id)


async def test_p3_cancelled_by_an_approver(env: ClockEnv) -> None:
    inc = await env.incident(decision=P3_DECISION, severity="P3")
    await env.runtime.incident_opened(inc.id)
    await env.engine.run(inc.id)
    await env.approve(inc.id)
    await env.engine.run(inc.id)
    assert "Cancel the scheduled rollback" in await _thread_text(env, inc.id)
    await env.runtime.cancel_scheduled(inc.id, user="U0LEAD")
    inc = await env.store.incident(inc.id)
    assert inc.status is Status.ABORTED and "cancelled by U0LEAD" in (inc.abort_reason or "")
    assert env.runtime.jobs.jobs(inc.id) == []
    env.clock.set(dt.datetime(2026, 11, 28, 1, 0, tzinfo=dt.UTC))
    await env.tick()
    assert not _ran(env)
    text = await _thread_text(env, inc.id)
    assert "Cancelled by <@U0LEAD>" in text and "Cancel the scheduled rollback" not in text


async def test_a_started_rollback_is_not_cancelled_as_scheduled(env: ClockEnv) -> None:
    inc = await env.incident()
    await env.runtime.incident_opened(inc.id)
    with pytest.raises(ValueError):
        await env.runtime.cancel_scheduled(inc.id, user="U0LEAD")


# ---------------------------------------------------------------- P2


async def test_p2_deadline_and_reminders_name_the_missing_approvals(env: ClockEnv) -> None:
    inc = await env.incident(decision=P2_DECISION, severity="P2")
    await env.runtime.incident_opened(inc.id)
    await env.engine.run(inc.id)
    inc = await env.store.incident(inc.id)
    assert inc.inputs["deadline"] == "2026-11-25T11:00:00+00:00"
    assert "*Deadline:* 11:00:00 UTC" in await _thread_text(env, inc.id)
    purposes = sorted(j.id.split(":", 1)[1] for j in env.runtime.jobs.jobs(inc.id))
    assert [p for p in purposes if p.startswith("p2")] == ["p2_reminder:0", "p2_reminder:10", "p2_reminder:30",
                                                         "p2_reminder:60"]
    await env.engine.approve(inc.id, user_id="U0LEAD", roles=["tech_lead"], decision="approve")
    env.clock.set(T0 + dt.timedelta(minutes=60))
    await env.tick()
    reminders = [e for e in await env.store.events(inc.id) if e.kind == "clock_reminder"]
    assert len(reminders) == 1 and reminders[0].data["minutes_left"] == 60
    assert "product_owner" in reminders[0].data["waiting_on"] and "tech_lead" not in reminders[0].data["waiting_on"]
    assert "P2 deadline in 60 min" in await _thread_text(env, inc.id)
    # Once approved and under way, the later reminders stay quiet.
    await env.engine.approve(inc.id, user_id="U0PO", roles=["product_owner"], decision="approve")
    await env.engine.run(inc.id)
    env.clock.set(T0 + dt.timedelta(minutes=121))
    await env.tick()
    assert len([e for e in await env.store.events(inc.id) if e.kind == "clock_reminder"]) == 1
    assert (await env.store.incident(inc.id)).status is Status.COMPLETED


# ---------------------------------------------------------------- escalation and expiry


async def test_unanswered_approvals_escalate_then_expire(env: ClockEnv) -> None:
    inc = await env.incident()  # P1: approvals open for p1_approval_minutes (60)
    await env.runtime.incident_opened(inc.id)
    await env.engine.run(inc.id)
    await env.tick(14 * 60)
    assert not [e for e in await env.store.events(inc.id) if e.kind == "approval_escalated"]
    await env.tick(60)
    esc = [e for e in await env.store.events(inc.id) if e.kind == "approval_escalated"]
    assert [e.data["level"] for e in esc] == [1]
    assert esc[0].data["mention"] == "<!subteam^S0CTO> <!subteam^S0VP_ENGINEERING>"
    await env.tick(15 * 60)
    esc = [e for e in await env.store.events(inc.id) if e.kind == "approval_escalated"]
    assert [e.data["level"] for e in esc] == [1, 2] and "INCIDENT_COMMANDER" in esc[1].data["mention"]
    text = await _thread_text(env, inc.id)
    assert "Approvals unanswered" in text and "escalation 2" in text
    await env.tick(15 * 60)  # no third level configured
    assert len([e for e in await env.store.events(inc.id) if e.kind == "approval_escalated"]) == 2
    await env.tick(15 * 60)  # 60 minutes: the decision window closes
    inc = await env.store.incident(inc.id)
    assert inc.status is Status.ABORTED and "approvals expired" in (inc.abort_reason or "")
    assert "Approvals expired" in await _thread_text(env, inc.id)
    assert env.runtime.jobs.jobs(inc.id) == []


async def test_escalation_never_names_the_requester(env: ClockEnv) -> None:
    async def holders(role: str) -> list[str]:
        return {"cto": ["U0REQ", "U0CTO"], "vp_engineering": ["U0VP", "U0REQ"]}.get(role, [])

    env.runtime.holders = holders
    inc = await env.incident()  # requested by U0REQ, who also holds the CTO role
    await env.runtime.incident_opened(inc.id)
    await env.engine.run(inc.id)
    await env.tick(15 * 60)
    (esc,) = [e for e in await env.store.events(inc.id) if e.kind == "approval_escalated"]
    assert esc.data["mention"] == "<@U0CTO> <@U0VP>"


async def test_approval_stops_escalation(env: ClockEnv) -> None:
    inc = await env.incident()
    await env.runtime.incident_opened(inc.id)
    await env.engine.run(inc.id)
    await env.approve(inc.id)
    await env.engine.run(inc.id)
    await env.tick(3 * 3600)
    events = await env.store.events(inc.id)
    assert not [e for e in events if e.kind in ("approval_escalated", "approvals_expired")]
    assert (await env.store.incident(inc.id)).status is Status.COMPLETED


# ---------------------------------------------------------------- Phase 7


async def test_phase7_reminders_until_marked_done(env: ClockEnv) -> None:
    inc = await env.incident()
    await env.engine.run(inc.id)
    await env.approve(inc.id)
    inc = await env.engine.run(inc.id)
    assert inc.status is Status.COMPLETED
    opened = [e for e in await env.store.events(inc.id) if e.kind == "phase7_opened"]
    assert len(opened) == 1 and opened[0].data["due"].startswith("2026-12-02")
    assert [j.id for j in env.runtime.jobs.jobs(inc.id)] == [f"{inc.id}:phase7"]
    await env.tick(24 * 3600)
    await env.runtime.mark_done(inc.id, "lessons_learned", user="U0LEAD")
    assert not await env.runtime.mark_done(inc.id, "lessons_learned", user="U0PO")  # first click wins
    await env.tick(24 * 3600)
    reminders = [e.data["open"] for e in await env.store.events(inc.id) if e.kind == "clock_reminder"]
    assert reminders == [["Root cause analysis (due within 7 days)", "Lessons learned documented"],
                         ["Root cause analysis (due within 7 days)"]]
    text = await _thread_text(env, inc.id)
    assert "done by <@U0LEAD>" in text and "rb_clock_done" in text
    await env.runtime.mark_done(inc.id, "root_cause_analysis", user="U0LEAD")
    assert env.runtime.jobs.jobs(inc.id) == []
    await env.tick(7 * 24 * 3600)
    assert len([e for e in await env.store.events(inc.id) if e.kind == "clock_reminder"]) == 2
    assert "Every Phase 7 item is done" in await _thread_text(env, inc.id)
