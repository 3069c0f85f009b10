"""Everything the clock drives: stability series, the P2 deadline, the P3 window,
approval escalation and expiry, Phase 7 reminders.

``ClockRuntime`` is the live side (store, engine, job scheduler, settings); one is
installed per process, and the module-level job functions below find it with
``current_runtime()`` — their arguments are ids only, so the job store can pickle them
and a restarted bot runs them against its new runtime.

State lives in the store: stability checks in their table, every clock event in the
incident journal (``clock_reminder``, ``approval_escalated``, ``phase7_done`` ...). Jobs are
only the alarm clock: ``reconcile`` re-derives from the store which jobs an incident
should have and adds any that is missing (a lost job store loses nothing).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bot.clock.scheduler import JobScheduler
from bot.clock.settings import ClockSettings
from bot.clock.stability import SeriesPlan, StabilitySettings, check_once, consecutive_failures, summary
from bot.clock.steps import failed_waiting
from bot.core.approvals import ApprovalPolicy, Vote, describe_missing, evaluate
from bot.core.lifecycle import FINAL, Status, StepStatus
from bot.core.roles import RoleLookupFailed
from bot.core.runbook import ApprovalStep, ManualStep
from bot.state.store import Incident, StabilityCheck, StepRun

log = logging.getLogger(__name__)

BOT_ACTOR = "rollback-bot"
P2_DECISION = "Within 2 hours"
P3_DECISION = "Next maintenance window"
P1_DECISION = "IMMEDIATE"

Kick = Callable[[str], Awaitable[None]]
Mention = Callable[[list[str]], str]


def _no_mentions(roles: list[str]) -> str:
    return ""


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat()


def _parse(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass
class ClockRuntime:
    """The live side of the clock flows in one bot process (also the engine's ``ClockHost``)."""

    engine: Any  # bot.core.engine.Engine (not imported: the engine imports this package's steps)
    jobs: JobScheduler
    settings: ClockSettings
    stability: StabilitySettings
    policy: ApprovalPolicy
    kick: Kick
    mention: Mention = _no_mentions
    http: httpx.AsyncClient | None = None
    #: The holders of a role (user groups resolved), to mention people one by one.
    holders: Callable[[str], Awaitable[list[str]]] | None = None
    _phase7_opened: set[str] = field(default_factory=set)
    _series_locks: dict[int, asyncio.Lock] = field(default_factory=dict)

    @property
    def store(self) -> Any:
        """The engine's store."""
        return self.engine.store

    # ------------------------------------------------------------ ClockHost

    def now(self) -> dt.datetime:
        """The clock's time."""
        return self.jobs.clock.now()

    def scaled(self, seconds: float) -> float:
        """Plan seconds as real seconds."""
        return self.jobs.scaled(seconds)

    async def series_started(self, incident_id: str, run_id: int, first_at: dt.datetime) -> None:
        """Schedule the first check of a new series (replacing any older series' job)."""
        self.jobs.schedule(incident_id, "stability", stability_tick, first_at, incident_id=incident_id,
                           run_id=run_id)

    async def window_start(self, inc: Incident) -> dt.datetime | None:
        """The window chosen when the incident opened if still ahead or open, else the next one."""
        now = self.now()
        win = (inc.inputs or {}).get("window") or {}
        if win.get("start") and win.get("end") and _parse(win["end"]) > now:
            start = _parse(win["start"])
        else:
            start, _end = self.settings.maintenance_window.current_or_next(now)
        return None if start <= now else start

    async def window_waiting(self, incident_id: str, run_id: int, at: dt.datetime) -> None:
        """Start the rollback when the window opens."""
        self.jobs.schedule(incident_id, "window", window_open, at, incident_id=incident_id, run_id=run_id)

    # ------------------------------------------------------------ life

    async def start(self, *, reconcile: bool = True) -> None:
        """Install as the process's runtime, start the scheduler, reconcile every active incident.

        A replica of several starts with ``reconcile=False`` and a standby scheduler: the
        scheduler lease's holder reconciles when it takes the lease (``scheduler_held``).
        """
        install(self)
        await self.jobs.start()
        if reconcile:
            await self.reconcile_all()

    async def reconcile_all(self) -> None:
        """Give every incident that may still need one the jobs its state calls for."""
        for inc in await self.store.incidents():
            if inc.status not in FINAL or inc.status is Status.COMPLETED:
                await self.reconcile(inc.id)

    async def scheduler_held(self, held: bool) -> None:
        """This replica took (True) or lost (False) the scheduler lease."""
        if not held:
            self.jobs.release()
            return
        self.jobs.hold()
        await self.reconcile_all()  # jobs lost with a dead holder are re-derived from the store

    async def close(self) -> None:
        """Stop firing jobs (they stay in the job store for the next start)."""
        await self.jobs.shutdown()
        uninstall(self)

    async def changed(self, incident_id: str) -> None:
        """Tell the views (and ``reconcile``, through the engine's callback) that state moved."""
        await self.engine._changed(incident_id)

    async def on_change(self, incident_id: str) -> None:
        """The engine's change callback: keep the incident's jobs in line with its state."""
        try:
            await self.reconcile(incident_id)
        except Exception:  # the alarm clock must never break a rollback; the next change retries
            log.exception("reconciling the jobs of %s failed", incident_id)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, incident_id: str) -> None:
        """Add the jobs the incident's state calls for and remove those it no longer needs."""
        inc = await self.store.incident(incident_id)
        if inc.status in FINAL:
            self.jobs.cancel_incident(incident_id, keep=("phase7",))
            if inc.status is Status.COMPLETED:
                await self._phase7(inc)
            return
        latest: dict[str, StepRun] = await self.store.latest_runs(incident_id)
        for run in latest.values():
            kind = (run.waiting or {}).get("kind")
            if run.status is not StepStatus.WAITING or run.waiting is None:
                continue
            ticking = self._series_locks.get(run.id)
            if kind == "stability" and self.jobs.job(incident_id, "stability") is None and not (
                    ticking is not None and ticking.locked()):  # a running tick schedules its successor
                await self.series_started(incident_id, run.id, self.now())  # the tick records what was missed
            if kind == "window" and self.jobs.job(incident_id, "window") is None:
                await self.window_waiting(incident_id, run.id, _parse(run.waiting["at"]))
        clock = (inc.inputs or {}).get("clock") or {}
        if not clock:
            return
        if await self.approved(inc, latest):
            for purpose in ("escalation", "expiry"):
                self.jobs.cancel(incident_id, purpose)
            return
        events = await self.store.events(incident_id)
        level = 1 + sum(1 for e in events if e.kind == "approval_escalated")
        if level <= len(self.settings.escalation) and self.jobs.job(incident_id, "escalation") is None:
            at = _parse(clock["opened"]) + dt.timedelta(
                seconds=self.scaled(self.settings.escalate_after_minutes * 60) * level)
            self.jobs.schedule(incident_id, "escalation", approval_escalation, max(at, self.now()),
                               incident_id=incident_id, level=level)
        if clock.get("approvals_expire") and self.jobs.job(incident_id, "expiry") is None and not any(
                e.kind == "approvals_expired" for e in events):
            self.jobs.schedule(incident_id, "expiry", approval_expiry, _parse(clock["approvals_expire"]),
                               incident_id=incident_id)

    async def approved(self, inc: Incident, latest: dict[str, StepRun] | None = None) -> bool:
        """True once the incident's approval gate is passed."""
        latest = latest if latest is not None else await self.store.latest_runs(inc.id)
        gates = [s.id for _, s in self.engine.runbook.steps() if isinstance(s, ApprovalStep)]
        return bool(gates) and all(g in latest and latest[g].status is StepStatus.DONE for g in gates)

    async def mention_except(self, roles: list[str], *, exclude: str | None) -> str:
        """Mentions of the holders of ``roles``, never of ``exclude`` (the requester, who does
        not approve their own rollback): people one by one when the groups resolve."""
        if self.holders is not None:
            try:
                people: list[str] = []
                for role in roles:
                    people += await self.holders(role)
                return " ".join(f"<@{u}>" for u in dict.fromkeys(people) if u != exclude)
            except RoleLookupFailed as exc:
                log.warning("escalation: %s; mentioning the groups", exc)
        text = self.mention(roles)
        return " ".join(w for w in text.split() if exclude is None or w != f"<@{exclude}>")

    async def missing(self, inc: Incident) -> str:
        """The approvals still needed, in words."""
        clicks = [a for a in await self.store.approvals(inc.id) if a.counted and a.decision == "approve"]
        state = evaluate(self.policy, [Vote(a.user_id, frozenset(a.roles)) for a in clicks], requester=inc.requester)
        return describe_missing(state)

    # ------------------------------------------------------------ opening an incident

    async def incident_opened(self, incident_id: str) -> None:
        """Set the decision's clock: P2 deadline and reminders, P3 window, approval expiry."""
        inc = await self.store.incident(incident_id)
        now = self.now()
        clock: dict[str, Any] = {"opened": _iso(now)}
        inputs = dict(inc.inputs or {})
        if inc.decision == P2_DECISION:
            deadline = now + dt.timedelta(seconds=self.scaled(self.settings.p2_deadline_minutes * 60))
            inputs["deadline"] = _iso(deadline)
            clock["approvals_expire"] = _iso(deadline)
            for minutes in [*sorted(self.settings.p2_reminders_minutes, reverse=True), 0.0]:
                at = deadline - dt.timedelta(seconds=self.scaled(minutes * 60))
                if at > now:
                    self.jobs.schedule(incident_id, f"p2_reminder:{minutes:g}", p2_reminder, at,
                                       incident_id=incident_id, minutes_left=minutes)
        elif inc.decision == P3_DECISION:
            win = self.settings.maintenance_window
            start, end = win.current_or_next(now)
            inputs["window"] = {"start": _iso(start), "end": _iso(end), "cron": win.cron, "timezone": win.timezone,
                                "label": win.describe(start)}
            clock["approvals_expire"] = _iso(end)
        else:
            clock["approvals_expire"] = _iso(now + dt.timedelta(
                seconds=self.scaled(self.settings.p1_approval_minutes * 60)))
        inputs["clock"] = clock
        await self.store.update_incident(incident_id, inputs=inputs)
        await self.store.log(incident_id, "clock_set", actor=BOT_ACTOR, now=now, data={
            k: v for k, v in {**clock, "deadline": inputs.get("deadline"), "window": inputs.get("window")}.items()
            if v})
        await self.reconcile(incident_id)
        await self.changed(incident_id)

    # ------------------------------------------------------------ Phase 7

    def phase7_items(self) -> list[dict[str, str]]:
        """The Phase 7 items that become tracked reminders: the manual steps of that phase."""
        phase = next((p for p in self.engine.runbook.phases if p.id == self.settings.phase7_phase), None)
        if phase is None:
            return []
        return [{"id": s.id, "title": s.title} for s in phase.steps if isinstance(s, ManualStep)]

    async def _phase7(self, inc: Incident) -> None:
        if inc.id in self._phase7_opened:
            return
        items = self.phase7_items()
        if not items:
            return
        events = await self.store.events(inc.id)
        opened = next((e for e in events if e.kind == "phase7_opened"), None)
        if opened is None:
            now = self.now()
            due = now + dt.timedelta(seconds=self.scaled(self.settings.phase7_due_days * 86400))
            await self.store.log(inc.id, "phase7_opened", actor=BOT_ACTOR, now=now,
                                 data={"items": items, "due": _iso(due)})
        done = {e.data.get("item") for e in events if e.kind == "phase7_done"}
        if {i["id"] for i in items} <= done:
            self.jobs.cancel(inc.id, "phase7")
        elif self.jobs.job(inc.id, "phase7") is None:
            last = [e.at for e in events if e.kind == "clock_reminder" and e.data.get("kind") == "phase7"]
            base = max([*last, opened.at if opened else self.now()])
            at = base + dt.timedelta(seconds=self.scaled(self.settings.phase7_reminder_hours * 3600))
            self.jobs.schedule(inc.id, "phase7", phase7_reminder, max(at, self.now()), incident_id=inc.id)
        self._phase7_opened.add(inc.id)
        if opened is None:
            await self.changed(inc.id)

    async def phase7_status(self, incident_id: str) -> tuple[list[dict[str, Any]], str | None]:
        """([{id, title, done_by, done_at}], due) of an incident's Phase 7 items."""
        events = await self.store.events(incident_id)
        opened = next((e for e in events if e.kind == "phase7_opened"), None)
        if opened is None:
            return [], None
        done = {e.data.get("item"): e for e in events if e.kind == "phase7_done"}
        items = []
        for item in opened.data.get("items", []):
            ev = done.get(item["id"])
            items.append({**item, "done_by": ev.actor if ev else None, "done_at": _iso(ev.at) if ev else None})
        return items, opened.data.get("due")

    async def mark_done(self, incident_id: str, item_id: str, *, user: str) -> bool:
        """Mark a Phase 7 item done; False when it was done already (the first click wins)."""
        async with self.engine.lock(incident_id):
            items, _due = await self.phase7_status(incident_id)
            item = next((i for i in items if i["id"] == item_id), None)
            if item is None:
                raise KeyError(item_id)
            if item["done_by"]:
                return False
            await self.store.log(incident_id, "phase7_done", actor=user, now=self.now(), data={"item": item_id})
            self._phase7_opened.discard(incident_id)
        await self.changed(incident_id)
        return True

    async def cancel_scheduled(self, incident_id: str, *, user: str) -> Incident:
        """Cancel a P3 rollback waiting for its window (approvers only; the caller checks)."""
        inc = await self.store.incident(incident_id)
        if inc.decision != P3_DECISION:
            raise ValueError(f"{incident_id} is not scheduled into a maintenance window")
        latest = await self.store.latest_runs(incident_id)
        started = [r for r in latest.values() if r.phase_id != "authorization"
                   and r.status is not StepStatus.SKIPPED and (r.waiting or {}).get("kind") != "window"]
        if started:
            raise ValueError(f"{incident_id} has already started; use /rollback abort")
        await self.store.log(incident_id, "p3_cancelled", actor=user, now=self.now())
        inc = await self.engine.request_abort(incident_id, user=user,
                                              reason=f"scheduled rollback cancelled by {user} before its window")
        self.jobs.cancel_incident(incident_id)
        await self.kick(incident_id)
        return inc


# ---------------------------------------------------------------- the process's runtime

_runtime: ClockRuntime | None = None


def install(runtime: ClockRuntime) -> None:
    """Make ``runtime`` the one the job functions use."""
    global _runtime
    _runtime = runtime


def uninstall(runtime: ClockRuntime) -> None:
    """Forget ``runtime`` if it is the installed one."""
    global _runtime
    if _runtime is runtime:
        _runtime = None


def current_runtime() -> ClockRuntime | None:
    """The installed runtime, if any."""
    return _runtime


def _rt(job: str) -> ClockRuntime | None:
    rt = _runtime
    if rt is None:
        log.warning("job %s fired with no clock runtime installed; it will be rescheduled at the next start", job)
    return rt


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
                                captures={"window_start": _iso(rt.now())})
    await rt.kick(incident_id)


async def p2_reminder(incident_id: str, minutes_left: float) -> None:
    """A P2 deadline nears (or passed): remind in the thread, naming what is still missing."""
    rt = _rt("p2_reminder")
    if rt is None:
        return
    inc = await rt.store.incident(incident_id)
    if inc.status in FINAL:
        return
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
    rt = _rt("approval_escalation")
    if rt is None:
        return
    inc = await rt.store.incident(incident_id)
    if inc.status in FINAL or await rt.approved(inc):
        return
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
    rt = _rt("approval_expiry")
    if rt is None:
        return
    inc = await rt.store.incident(incident_id)
    if inc.status in FINAL or await rt.approved(inc):
        return
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
    rt._phase7_opened.discard(incident_id)
    await rt.changed(incident_id)  # reconcile schedules the next reminder


# ---------------------------------------------------------------- the stability series


async def series_tick(rt: ClockRuntime, incident_id: str, run_id: int) -> None:
    """Run (or record as missed) every check of the series that is due; then schedule, finish or fail.

    A check whose slot passed (the next one was already due) while the bot was down is
    recorded as missed; each check is recorded once (the store refuses a second record).
    """
    # One tick of a series at a time: a tick rescheduled while the last one returns waits for it.
    async with rt._series_locks.setdefault(run_id, asyncio.Lock()):
        await _series_tick(rt, incident_id, run_id)


async def _series_tick(rt: ClockRuntime, incident_id: str, run_id: int) -> None:
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
        await rt.changed(incident_id)  # the watch's message stays quiet until it ends (see clock_view)


async def _finish(rt: ClockRuntime, incident_id: str, run_id: int, plan: SeriesPlan,
                  checks: list[StabilityCheck]) -> None:
    if not any(c.outcome != "missed" for c in checks):
        await _fail(rt, incident_id, run_id, plan, checks, plan.checks - 1,
                    "no check ran: every one fell while the bot was down")
        return
    async with rt.engine.lock(incident_id):
        run: StepRun = await rt.store.step_run(run_id)
        if run.status is not StepStatus.WAITING:
            return
        await rt.store.end_step(run_id, StepStatus.DONE, actor=BOT_ACTOR,
                                captures={**summary(checks, plan), "passed": True})
    rt.jobs.cancel(incident_id, "stability")
    await rt.changed(incident_id)
    await rt.kick(incident_id)


async def _fail(rt: ClockRuntime, incident_id: str, run_id: int, plan: SeriesPlan, checks: list[StabilityCheck],
                index: int, reason: str) -> None:
    async with rt.engine.lock(incident_id):
        run: StepRun = await rt.store.step_run(run_id)
        if run.status is not StepStatus.WAITING:
            return
        waiting = failed_waiting(plan, checks, index=index, reason=reason, mention=rt.mention(["incident_commander"]))
        await rt.store.end_step(run_id, StepStatus.FAILED, actor=BOT_ACTOR, error=reason, waiting=waiting)
    rt.jobs.cancel(incident_id, "stability")
    await rt.changed(incident_id)
    await rt.kick(incident_id)  # whoever waits for the series (the drill's loop) must see it failed


def mentions_for(roles_config: dict[str, Any]) -> Mention:
    """Slack mentions of a role's holders from the config's roles (user ids and user groups)."""

    def mention(roles: list[str]) -> str:
        out: list[str] = []
        for role in roles:
            members = roles_config.get(role)
            if members is None:
                continue
            out += [f"<@{u}>" for u in members.users]
            # A group id mentions the group; a handle (not resolved here) is shown as typed.
            out += [f"<!subteam^{g}>" if g.startswith("S") and g.isupper() else f"@{g.lstrip('@')}"
                    for g in members.groups]
        return " ".join(dict.fromkeys(out))

    return mention


def fan_out(*callbacks: Kick) -> Kick:
    """One change callback that calls each of ``callbacks`` in turn."""

    async def changed(incident_id: str) -> None:
        for cb in callbacks:
            await cb(incident_id)

    return changed
