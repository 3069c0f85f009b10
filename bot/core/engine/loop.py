"""The engine's loop: the runbook's steps in order until the incident ends or waits for a person,
then the compensation when a run stops half-way; the approvals bind the plan until the first
side effect."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

from bot.core import compensation
from bot.core.engine.answers import Answers
from bot.core.executors.approval import ask
from bot.core.executors.table import executor_for
from bot.core.lifecycle import FINAL, Event, Status, StepStatus
from bot.core.runbook import ApprovalStep, Phase, StepBase
from bot.core.templating import TemplateError, lookup
from bot.state.store import Incident, StepRun


class Engine(Answers):
    """Runs incidents of one runbook against a set of targets."""

    async def run(self, incident_id: str) -> Incident:
        """Run steps until the incident ends or waits for a person; returns its state."""
        lock = self._locks.setdefault(incident_id, asyncio.Lock())
        async with lock:
            inc = await self._run(incident_id)
        await self._changed(incident_id)
        return inc

    async def _run(self, incident_id: str) -> Incident:
        inc = await self.store.incident(incident_id)
        if inc.status in FINAL:
            return inc
        if inc.status in (Status.RUNNING, Status.WAITING) and inc.abort_reason:
            # An abort asked for while a step ran (or while the bot was down) is applied now.
            inc = await self._stop(inc, "abort", Event.ABORT, actor=None, data={"reason": inc.abort_reason})
        if inc.status is Status.COMPENSATING:
            return await self._compensate(incident_id)
        if inc.status in FINAL:
            return inc
        if inc.status in (Status.OPEN, Status.SCHEDULED):
            inc = await self.store.apply(incident_id, Event.START)
        latest: dict[str, StepRun] | None = None
        for phase, step in self.runbook.steps():
            if latest is None:
                latest = await self.store.latest_runs(incident_id)
            if compensation.settled(latest.get(step.id)):
                continue  # done, skipped or failed-and-continued: nothing to read or show again
            if self.stopping:
                return await self.store.incident(incident_id)
            inc = await self.store.incident(incident_id)
            if inc.status in FINAL:
                return inc
            outcome = await self._advance(inc, phase, step, latest)
            latest = None  # the step wrote its runs
            self._changed_soon(incident_id)
            if outcome == "wait":
                inc = await self.store.incident(incident_id)
                if inc.status is Status.RUNNING:
                    inc = await self.store.apply(incident_id, Event.WAIT, data={"step": step.id})
                return inc
            if outcome == "end":
                inc = await self.store.incident(incident_id)
                if inc.status is Status.COMPENSATING:
                    return await self._compensate(incident_id)
                return inc
        inc = await self.store.incident(incident_id)
        if inc.status in FINAL:
            return inc
        if inc.status is Status.WAITING:
            inc = await self.store.apply(incident_id, Event.RESUME)
        return await self.store.apply(incident_id, Event.COMPLETE)

    async def _compensate(self, incident_id: str) -> Incident:
        """Run the compensation's steps until they are through (then end the incident) or one waits."""
        comp = self.runbook.compensation
        assert comp is not None
        latest: dict[str, StepRun] | None = None
        for step in comp.steps:
            if latest is None:
                latest = await self.store.latest_runs(incident_id)
            if compensation.settled(latest.get(step.id)):
                continue
            inc = await self.store.incident(incident_id)
            if inc.status is not Status.COMPENSATING:
                return inc
            outcome = await self._advance(inc, comp, step, latest)
            latest = None
            await self._changed(incident_id)
            if outcome in ("wait", "end"):
                return await self.store.incident(incident_id)
        inc = await self.store.incident(incident_id)
        if inc.status is not Status.COMPENSATING:
            return inc
        trig = compensation.trigger_of(await self.store.events(incident_id))
        end = Event.FAIL if trig is not None and trig.end == Status.FAILED.value else Event.ABORT
        return await self.store.apply(incident_id, end, data={"compensated": True})

    async def _abort_if_asked(self, inc: Incident) -> bool:
        if inc.status is Status.COMPENSATING:
            return False  # the compensation runs to its end
        if inc.abort_reason:
            if inc.status is not Status.ABORTED:
                await self._stop(inc, "abort", Event.ABORT, actor=None, data={"reason": inc.abort_reason})
            return True
        return False

    async def _advance(self, inc: Incident, phase: Phase, step: StepBase, runs: dict[str, StepRun]) -> str:
        """Bring one step to done/skipped; 'next', 'wait' or 'end'. ``runs``: the latest run of each step."""
        latest = runs.get(step.id)
        if latest is not None:
            st = latest.status
            if compensation.settled(latest):
                return "next"
            if st is StepStatus.RUNNING:
                # The bot died while this step ran: its outcome is unknown.
                if await self._interrupted(latest, step, "bot restarted while the step ran") == "wait":
                    return "wait"
            elif latest.waiting is not None:
                # A gate counts its votes each time it is looked at; other questions wait for an answer.
                outcome = await executor_for(step).revisit(self, inc, phase, step, latest)
                if outcome is not None:
                    return outcome
                if latest.answer is None:
                    return "wait"
                return await self._apply_answer(inc, phase, step, latest)
        if await self._abort_if_asked(inc):
            return "end"
        await self._resume(inc)
        nothing = compensation.nothing_to_undo(step, runs)
        if nothing:
            run = await self.store.begin_step(inc.id, step.id, phase.id)
            await self.store.end_step(run.id, StepStatus.SKIPPED, error=nothing)
            return "next"
        # Nothing changed the step runs since ``runs`` was read (the incident's lock is held).
        ctx = self._context(inc, runs)
        cond = step.condition
        if cond is not None:
            try:
                value = lookup(ctx, cond.ref)
            except TemplateError:
                value = None
            if not cond.holds(value):
                run = await self.store.begin_step(inc.id, step.id, phase.id)
                await self.store.end_step(run.id, StepStatus.SKIPPED, captures={"skip_reason": cond.words(value),
                                                                                "condition": step.when})
                return "next"
        if step.has_side_effect and await self._plan_changed_since_approval(inc, runs):
            return "wait"
        return await self._execute(inc, phase, step, ctx)

    async def _plan_changed_since_approval(self, inc: Incident, runs: Mapping[str, StepRun]) -> bool:
        """Before the first side effect: if the plan changed since it was approved, ask again."""
        side_effects = {s.id for _, s in self.runbook.steps() if s.has_side_effect}
        for sid, r in runs.items():
            if r.status is not StepStatus.SKIPPED and sid in side_effects:
                return False  # the run has started; approvals bind until then
        for phase, step in self.runbook.steps():
            done = runs.get(step.id)
            if isinstance(step, ApprovalStep) and done is not None and done.status is StepStatus.DONE:
                plan = self.binding_plan(inc)
                if done.captures.get("plan_hash") not in (None, plan.hash):
                    previous = replace(done, waiting={**(done.waiting or {}),
                                                      "plan_hash": done.captures["plan_hash"]})
                    await ask(self, inc, phase, step, plan, previous=previous)
                    return True
        return False

