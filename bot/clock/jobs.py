"""The alarm clock's jobs: module-level functions whose arguments are ids only, so the job
store can pickle them and a restarted bot runs them against its new runtime, found with
``current_runtime()``. Each job reads the store and records what it did in the journal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bot.clock.base import BOT_ACTOR, ClockBase, iso
from bot.clock.stability import SeriesPlan, check_once, consecutive_failures, summary
from bot.clock.steps import failed_waiting
from bot.core.lifecycle import FINAL, StepStatus
from bot.state.store import Incident, StabilityCheck, StepRun

log = logging.getLogger(__name__)

_runtime: ClockBase | None = None


def install(runtime: ClockBase) -> None:
    """Make ``runtime`` the one the job functions use."""
    global _runtime
    _runtime = runtime


def uninstall(runtime: ClockBase) -> None:
    """Forget ``runtime`` if it is the installed one."""
    global _runtime
    if _runtime is runtime:
        _runtime = None




def current_runtime() -> ClockBase | None:
    """The installed runtime, if any."""
    return _runtime



def _rt(job: str) -> ClockBase | None:
    rt = _runtime
    if rt is None:
        log.warning("job %s fired with no clock runtime installed; it will be rescheduled at the next start", job)
    return rt


async def _unsettled(job: str, incident_id: str, *, unapproved: bool = False) -> tuple[ClockBase, Incident] | None:
    """The runtime and the incident a job acts on; None when there is no runtime, the incident is
    over, or (``unapproved``) its approvals were given meanwhile."""
    rt = _rt(job)
    if rt is None:
        return None
    inc = await rt.store.incident(incident_id)
    if inc.status in FINAL or (unapproved and await rt.approved(inc)):
        return None
    return rt, inc


# ---------------------------------------------------------------- job functions (module level: they pickle)


async def stability_tick(incident_id: str, run_id: int) -> None:
    """Record the checks of a series that are due, then schedule the next or settle the series."""
    rt = _rt("stability_tick")
    if rt is not None:
        await series_tick(rt, incident_id, run_id)


async def window_open(incident_id: str, run_id: int) -> None:
    """The maintenance window opened: the scheduled rollback starts."""
    rt = _rt("window_open")
    if rt is None:
        return
    async with rt.engine.lock(incident_id):
        run: StepRun = await rt.store.step_run(run_id)
        inc = await rt.store.incident(incident_id)
        if inc.status in FINAL or run.status is not StepStatus.WAITING:
            return
        await rt.store.end_step(run_id, StepStatus.DONE, actor=BOT_ACTOR,
                                captures={"window_start": iso(rt.now())})
    await rt.kick(incident_id)


async def p2_reminder(incident_id: str, minutes_left: float) -> None:
    """A P2 deadline nears (or passed): remind in the thread, naming what is still missing."""
    found = await _unsettled("p2_reminder", incident_id)
    if found is None:
        return
    rt, inc = found
    if not await rt.approved(inc):
        waiting_on = "approvals — still needed: " + await rt.missing(inc)
    else:
        w = await rt.engine.waiting_for(incident_id)
        if w is None or w.kind in ("stability", "window"):
            return  # the rollback is under way: nothing to remind of
        waiting_on = f"{w.kind}: {w.prompt}"
    await rt.store.log(incident_id, "clock_reminder", actor=BOT_ACTOR, now=rt.now(), data={
        "kind": "p2", "minutes_left": minutes_left, "deadline": (inc.inputs or {}).get("deadline"),
        "waiting_on": waiting_on})
    await rt.changed(incident_id)


async def approval_escalation(incident_id: str, level: int) -> None:
    """Approvals unanswered for too long: mention the next group."""
    found = await _unsettled("approval_escalation", incident_id, unapproved=True)
    if found is None:
        return
    rt, inc = found
    events = await rt.store.events(incident_id)
    if any(e.kind == "approval_escalated" and e.data.get("level") == level for e in events):
        return  # a coalesced second run of the same level
    roles = rt.settings.escalation[level - 1] if level <= len(rt.settings.escalation) else []
    await rt.store.log(incident_id, "approval_escalated", actor=BOT_ACTOR, now=rt.now(), data={
        "level": level, "roles": roles, "mention": await rt.mention_except(roles, exclude=inc.requester),
        "missing": await rt.missing(inc)})
    await rt.changed(incident_id)  # reconcile schedules the next level


async def approval_expiry(incident_id: str) -> None:
    """The decision window closed with approvals still missing: the request expires."""
    found = await _unsettled("approval_expiry", incident_id, unapproved=True)
    if found is None:
        return
    rt, inc = found
    missing = await rt.missing(inc)
    await rt.store.log(incident_id, "approvals_expired", actor=BOT_ACTOR, now=rt.now(),
                       data={"missing": missing})
    await rt.engine.request_abort(incident_id, user=BOT_ACTOR,
                                  reason=f"approvals expired with the decision window (still needed: {missing})")
    await rt.kick(incident_id)


async def phase7_reminder(incident_id: str) -> None:
    """Remind of the Phase 7 items not yet marked done; again later until they are."""
    rt = _rt("phase7_reminder")
    if rt is None:
        return
    items, due = await rt.phase7_status(incident_id)
    open_items = [i["title"] for i in items if not i["done_by"]]
    if not open_items:
        return
    await rt.store.log(incident_id, "clock_reminder", actor=BOT_ACTOR, now=rt.now(), data={
        "kind": "phase7", "open": open_items, "due": due})
    rt.phase7_opened.discard(incident_id)
    await rt.changed(incident_id)  # reconcile schedules the next reminder


# ---------------------------------------------------------------- the stability series


async def series_tick(rt: ClockBase, incident_id: str, run_id: int) -> None:
    """Run (or record as missed) every check of the series that is due; then schedule, finish or fail.

    A check whose slot passed (the next one was already due) while the bot was down is
    recorded as missed; each check is recorded once (the store refuses a second record).
    """
    # One tick of a series at a time: a tick rescheduled while the last one returns waits for it.
    async with rt.series_locks.setdefault(run_id, asyncio.Lock()):
        await _series_tick(rt, incident_id, run_id)


async def _series_tick(rt: ClockBase, incident_id: str, run_id: int) -> None:
    store = rt.store
    inc = await store.incident(incident_id)
    run: StepRun = await store.step_run(run_id)
    if inc.status in FINAL or run.status is not StepStatus.WAITING or (run.waiting or {}).get("kind") != "stability":
        return
    if inc.abort_reason:
        await rt.kick(incident_id)  # the engine applies the abort, through the compensation if any
        return
    assert run.waiting is not None
    plan = SeriesPlan.from_dict(run.waiting["plan"])
    while True:
        checks: list[StabilityCheck] = await store.stability_checks(incident_id, run_id)
        done = {c.index for c in checks}
        nxt = next((i for i in range(plan.checks) if i not in done), None)
        if nxt is None:
            await _finish(rt, incident_id, run_id, plan, checks)
            return
        due = plan.due(nxt)
        now = rt.now()
        if due > now:
            rt.jobs.schedule(incident_id, "stability", stability_tick, due, incident_id=incident_id, run_id=run_id)
            return
        if (now - due).total_seconds() >= plan.interval:
            check = StabilityCheck(0, incident_id, run_id, run.step_id, nxt, due, now, "missed", None, None, None,
                                   "not run: the bot was down (or stalled) when it fell due")
            await store.add_stability_check(check)
            continue
        result = await check_once(plan, rt.http)
        check = StabilityCheck(0, incident_id, run_id, run.step_id, nxt, due, rt.now(),
                               "ok" if result.ok else "failed", result.status_code, result.body_status,
                               result.latency_ms, result.reason)
        if not await store.add_stability_check(check):
            continue  # recorded meanwhile by another run of this job
        checks.append(check)
        if not result.ok and consecutive_failures(checks) > plan.failures_allowed:
            await _fail(rt, incident_id, run_id, plan, checks, nxt, result.reason)
            return
        await rt.changed(incident_id)  # the watch's message stays quiet until it ends (see bot.clock.view)




async def _settle(rt: ClockBase, incident_id: str, run_id: int, status: StepStatus, **values: Any) -> None:
    """End a series still waiting (done or failed), drop its job, and let the views and the engine know."""
    async with rt.engine.lock(incident_id):
        run: StepRun = await rt.store.step_run(run_id)
        if run.status is not StepStatus.WAITING:
            return
        await rt.store.end_step(run_id, status, actor=BOT_ACTOR, **values)
    rt.jobs.cancel(incident_id, "stability")
    await rt.changed(incident_id)
    await rt.kick(incident_id)  # whoever waits for the series (the drill's loop) must see it settled


async def _finish(rt: ClockBase, incident_id: str, run_id: int, plan: SeriesPlan,
                  checks: list[StabilityCheck]) -> None:
    if not any(c.outcome != "missed" for c in checks):
        await _fail(rt, incident_id, run_id, plan, checks, plan.checks - 1,
                    "no check ran: every one fell while the bot was down")
        return
    await _settle(rt, incident_id, run_id, StepStatus.DONE, captures={**summary(checks, plan), "passed": True})


async def _fail(rt: ClockBase, incident_id: str, run_id: int, plan: SeriesPlan, checks: list[StabilityCheck],
                index: int, reason: str) -> None:
    waiting = failed_waiting(plan, checks, index=index, reason=reason, mention=rt.mention(["incident_commander"]))
    await _settle(rt, incident_id, run_id, StepStatus.FAILED, error=reason, waiting=waiting)

