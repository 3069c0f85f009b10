"""Everything the clock drives: stability series, the P2 deadline, the P3 window,
approval escalation and expiry, Phase 7 reminders.

``ClockRuntime`` is the live side (store, engine, job scheduler, settings); one is
installed per process, and the job functions of ``bot.clock.jobs`` find it with
``current_runtime()`` — their arguments are ids only, so the job store can pickle them
and a restarted bot runs them against its new runtime.

State lives in the store: stability checks in their table, every clock event in the
incident journal (``clock_reminder``, ``approval_escalated``, ``phase7_done`` ...). Jobs are
only the alarm clock: ``reconcile`` re-derives from the store which jobs an incident
should have and adds any that is missing (a lost job store loses nothing).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from bot.clock.base import BOT_ACTOR, P1_DECISION, P2_DECISION, P3_DECISION, ClockBase, Kick, Mention, iso, parse_time
from bot.clock.jobs import (
    approval_escalation,
    approval_expiry,
    install,
    p2_reminder,
    phase7_reminder,
    stability_tick,
    uninstall,
    window_open,
)
from bot.core.lifecycle import FINAL, Status, StepStatus
from bot.core.runbook import ManualStep
from bot.state.store import Incident, StepRun

log = logging.getLogger(__name__)


class ClockRuntime(ClockBase):
    """The live side of the clock flows in one bot process (also the engine's ``ClockHost``)."""

    # ------------------------------------------------------------ ClockHost

    async def series_started(self, incident_id: str, run_id: int, first_at: dt.datetime) -> None:
        """Schedule the first check of a new series (replacing any older series' job)."""
        self.jobs.schedule(incident_id, "stability", stability_tick, first_at, incident_id=incident_id,
                           run_id=run_id)

    async def window_start(self, inc: Incident) -> dt.datetime | None:
        """The window chosen when the incident opened if still ahead or open, else the next one."""
        now = self.now()
        win = (inc.inputs or {}).get("window") or {}
        if win.get("start") and win.get("end") and parse_time(win["end"]) > now:
            start = parse_time(win["start"])
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
            ticking = self.series_locks.get(run.id)
            if kind == "stability" and self.jobs.job(incident_id, "stability") is None and not (
                    ticking is not None and ticking.locked()):  # a running tick schedules its successor
                await self.series_started(incident_id, run.id, self.now())  # the tick records what was missed
            if kind == "window" and self.jobs.job(incident_id, "window") is None:
                await self.window_waiting(incident_id, run.id, parse_time(run.waiting["at"]))
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
            at = parse_time(clock["opened"]) + dt.timedelta(
                seconds=self.scaled(self.settings.escalate_after_minutes * 60) * level)
            self.jobs.schedule(incident_id, "escalation", approval_escalation, max(at, self.now()),
                               incident_id=incident_id, level=level)
        if clock.get("approvals_expire") and self.jobs.job(incident_id, "expiry") is None and not any(
                e.kind == "approvals_expired" for e in events):
            self.jobs.schedule(incident_id, "expiry", approval_expiry, parse_time(clock["approvals_expire"]),
                               incident_id=incident_id)

    # ------------------------------------------------------------ opening an incident

    async def incident_opened(self, incident_id: str) -> None:
        """Set the decision's clock: P2 deadline and reminders, P3 window, approval expiry."""
        inc = await self.store.incident(incident_id)
        now = self.now()
        clock: dict[str, Any] = {"opened": iso(now)}
        inputs = dict(inc.inputs or {})
        if inc.decision == P2_DECISION:
            deadline = now + dt.timedelta(seconds=self.scaled(self.settings.p2_deadline_minutes * 60))
            inputs["deadline"] = iso(deadline)
            clock["approvals_expire"] = iso(deadline)
            for minutes in [*sorted(self.settings.p2_reminders_minutes, reverse=True), 0.0]:
                at = deadline - dt.timedelta(seconds=self.scaled(minutes * 60))
                if at > now:
                    self.jobs.schedule(incident_id, f"p2_reminder:{minutes:g}", p2_reminder, at,
                                       incident_id=incident_id, minutes_left=minutes)
        elif inc.decision == P3_DECISION:
            win = self.settings.maintenance_window
            start, end = win.current_or_next(now)
            inputs["window"] = {"start": iso(start), "end": iso(end), "cron": win.cron, "timezone": win.timezone,
                                "label": win.describe(start)}
            clock["approvals_expire"] = iso(end)
        else:
            clock["approvals_expire"] = iso(now + dt.timedelta(
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
        if inc.id in self.phase7_opened:
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
                                 data={"items": items, "due": iso(due)})
        done = {e.data.get("item") for e in events if e.kind == "phase7_done"}
        if {i["id"] for i in items} <= done:
            self.jobs.cancel(inc.id, "phase7")
        elif self.jobs.job(inc.id, "phase7") is None:
            last = [e.at for e in events if e.kind == "clock_reminder" and e.data.get("kind") == "phase7"]
            base = max([*last, opened.at if opened else self.now()])
            at = base + dt.timedelta(seconds=self.scaled(self.settings.phase7_reminder_hours * 3600))
            self.jobs.schedule(inc.id, "phase7", phase7_reminder, max(at, self.now()), incident_id=inc.id)
        self.phase7_opened.add(inc.id)
        if opened is None:
            await self.changed(inc.id)
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
            self.phase7_opened.discard(incident_id)
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


__all__ = ["BOT_ACTOR", "P1_DECISION", "P2_DECISION", "P3_DECISION", "ClockRuntime", "fan_out", "mentions_for"]
