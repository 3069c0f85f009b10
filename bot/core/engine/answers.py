"""What people put into a run: answers to what a step waits for, approval clicks, aborts."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.core.approvals import DEFAULT_POLICY, ApprovalPolicy, Vote, counts
from bot.core.engine.attempts import Attempts
from bot.core.engine.base import AnswerRefused, Waiting
from bot.core.executors.table import executor_for
from bot.core.lifecycle import FINAL, Event, Status, StepStatus
from bot.core.runbook import ApprovalStep, Phase, StepBase
from bot.state.store import AlreadyAnswered, Incident, StepRun

#: Waiting kinds whose Abort gives up on a failure (compensation trigger ``failure``).
FAILURE_KINDS = ("failure", "resume", "stability_failed")


class Answers(Attempts):
    """A person's answers, approvals and aborts, each checked against what the incident waits for."""

    async def waiting_for(self, incident_id: str) -> Waiting | None:
        """What the incident waits for, if anything (during a compensation: its questions only)."""
        inc = await self.store.incident(incident_id)
        steps: list[tuple[Phase, StepBase]]
        if inc.status is Status.COMPENSATING and self.runbook.compensation is not None:
            steps = [(self.runbook.compensation, s) for s in self.runbook.compensation.steps]
        elif inc.status is Status.WAITING:
            steps = list(self.runbook.steps())
        else:
            return None
        latest = await self.store.latest_runs(incident_id)
        for phase, step in steps:
            run = latest.get(step.id)
            if run and run.waiting and run.answer is None and run.status in (
                StepStatus.WAITING, StepStatus.FAILED, StepStatus.INTERRUPTED
            ):
                w = run.waiting
                return Waiting(step.id, phase.id, w["kind"], w.get("prompt", step.title),
                               list(w.get("options", [])), w.get("error"))
        return None

    async def answer(self, incident_id: str, step_id: str, value: str, *, user: str,
                     roles: list[str] | None = None) -> None:
        """Give a person's answer to what a step waits for; ``AnswerRefused`` if it does not fit.

        The first answer wins: a second click on an answered question is refused. ``roles``
        (the roles the person acted in) is kept with the answer for the record.
        """
        async with self._locks.setdefault(incident_id, asyncio.Lock()):
            inc = await self.store.incident(incident_id)
            if inc.status is Status.COMPENSATING and not self.runbook.is_compensation(step_id):
                raise AnswerRefused(f"{incident_id} is being compensated after an abort or a failure: "
                                    f"step {step_id!r} is no longer asked")
            latest = await self.store.latest_runs(incident_id)
            run = latest.get(step_id)
            if run is None or not run.waiting:
                raise AnswerRefused(f"step {step_id!r} is not waiting for an answer")
            if run.answer is not None:
                raise AnswerRefused(f"step {step_id!r} was already answered by {run.answer.get('user')}")
            offered = run.waiting.get("options", [])
            allowed = [o["value"] for o in offered]
            disabled = next((o["disabled"] for o in offered if o["value"] == value and o.get("disabled")), None)
            if disabled:
                await self.store.log(incident_id, "answer_refused", actor=user, step_id=step_id,
                                     data={"value": value[:200], "why": disabled[:300]})
                raise AnswerRefused(f"{value[:80]!r} cannot be chosen here: {disabled}")
            if value not in allowed:
                await self.store.log(incident_id, "answer_refused", actor=user, step_id=step_id,
                                     data={"value": value[:200]})
                raise AnswerRefused(f"{value[:80]!r} was not offered for step {step_id!r}")
            answer: dict[str, Any] = {"value": value, "user": user}
            if roles is not None:
                answer["roles"] = list(roles)
            try:
                await self.store.end_step(run.id, run.status, actor=user, answer=answer)
            except AlreadyAnswered as exc:
                raise AnswerRefused(str(exc)) from None
        await self._changed(incident_id)

    async def approve(
        self, incident_id: str, *, user_id: str, roles: list[str], decision: str, note: str = ""
    ) -> tuple[bool, str]:
        """Record an approve/reject click; returns (counted, explanation)."""
        if decision not in ("approve", "reject"):
            raise AnswerRefused(f"decision must be approve or reject, not {decision!r}")
        async with self._locks.setdefault(incident_id, asyncio.Lock()):
            inc = await self.store.incident(incident_id)
            if inc.status in FINAL:
                raise AnswerRefused(f"incident {incident_id} is {inc.status.value}")
            policy = self._policy_for(incident_id)
            earlier = [a for a in await self.store.approvals(incident_id) if a.counted]
            ok, why = counts(policy, Vote(user_id, frozenset(roles)), requester=inc.requester)
            if ok and any(a.user_id == user_id for a in earlier):
                ok, why = False, "you already answered; one person counts once"
            asked = [r.waiting.get("plan_hash") for r in (await self.store.latest_runs(incident_id)).values()
                     if r.waiting and r.waiting.get("kind") == "approval" and r.status is StepStatus.WAITING]
            await self.store.add_approval(incident_id, user_id=user_id, roles=roles, decision=decision,
                                          counted=ok, note=note if ok else why,
                                          plan_hash=asked[0] if asked else None)
        await self._changed(incident_id)
        return ok, why

    async def request_abort(self, incident_id: str, *, user: str, reason: str,
                            roles: list[str] | None = None) -> Incident:
        """Stop after the running step; an incident waiting for a person stops now.

        When the run got past its gates and the runbook declares a compensation, the
        incident becomes ``compensating``: the next ``run`` undoes what ran and ends it aborted.
        """
        inc = await self.store.incident(incident_id)
        if inc.status in FINAL:
            raise AnswerRefused(f"incident {incident_id} is already {inc.status.value}")
        if inc.status is Status.COMPENSATING:
            raise AnswerRefused(f"incident {incident_id} is already being aborted: its compensation is running")
        await self.store.update_incident(incident_id, abort_reason=reason)
        data: dict[str, Any] = {"reason": reason}
        if roles is not None:
            data["roles"] = list(roles)
        await self.store.log(incident_id, "abort_requested", actor=user, data=data)
        lock = self._locks.setdefault(incident_id, asyncio.Lock())
        if not lock.locked():
            async with lock:
                inc = await self.store.incident(incident_id)
                if inc.status in (Status.OPEN, Status.SCHEDULED, Status.WAITING):
                    await self._stop(inc, "abort", Event.ABORT, actor=user, data={"reason": reason})
        await self._changed(incident_id)
        return await self.store.incident(incident_id)

    def _policy_for(self, incident_id: str) -> ApprovalPolicy:
        for _, step in self.runbook.steps():
            if isinstance(step, ApprovalStep):
                return self.policies.get(step.policy, DEFAULT_POLICY)
        return self.policies.get("default", DEFAULT_POLICY)

    async def _apply_answer(self, inc: Incident, phase: Phase, step: StepBase, run: StepRun) -> str:
        assert run.answer is not None and run.waiting is not None
        value, user = run.answer["value"], run.answer.get("user")
        kind = run.waiting["kind"]
        await self._resume(inc)
        if value == "abort":
            # Abort after a failure is giving up on it: the compensation's "failure" trigger.
            trigger = "failure" if kind in FAILURE_KINDS else "abort"
            reason = f"{user} gave up after {step.title!r} failed" if trigger == "failure" else f"aborted by {user}"
            await self.store.update_incident(inc.id, abort_reason=reason)
            inc = await self.store.incident(inc.id)
            await self._stop(inc, trigger, Event.ABORT, actor=user, data={"step": step.id, "reason": reason})
            return "end"
        # The step's own question (a choice, a failed stability series) is its executor's to answer.
        outcome = await executor_for(step).answer(self, inc, phase, step, run)
        if outcome is not None:
            return outcome
        if value == "skip":
            await self.store.end_step(run.id, StepStatus.SKIPPED, actor=user, error=None, captures={
                **run.captures, "skip_reason": f"skipped by {user} after it failed ({run.error or 'no error'})"})
            return "next"
        if value == "mark_done":
            await self.store.end_step(run.id, StepStatus.DONE, actor=user, error=None, captures={
                **run.captures, "note": f"marked done by {user} after the bot restarted while it ran"})
            return "next"
        # retry / rerun: a new attempt (a retry on a host group re-runs only its failed hosts)
        return await self._execute(inc, phase, step, await self.context(inc.id),
                                   prior=run if value == "retry" else None)
