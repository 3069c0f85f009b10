"""``approval`` steps: a gate that waits until the approval policy is met, bound to the rendered plan.

The gate asks with the plan's file in the thread; if the plan changes before the run
starts, the ask is closed, the approvals it collected are void and the gate asks again.
The engine records the clicks (``Engine.approve``); the gate counts them when looked at.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from bot.core.approvals import DEFAULT_POLICY, Vote, evaluate
from bot.core.executors.base import Call, StepExecutor, StepHost, register
from bot.core.lifecycle import Event, Status, StepStatus
from bot.core.runbook import ApprovalStep, Phase, StepBase
from bot.plan.binding import binding_fields, describe_change
from bot.plan.render import Plan
from bot.plan.text import markdown as plan_markdown
from bot.state.store import Incident, StepRun, Store


@register(ApprovalStep)
class ApprovalExecutor(StepExecutor):
    """Asks for approval of the incident's plan and counts the votes each time it is looked at."""

    async def start(self, call: Call) -> str:
        """Ask for approval of the plan as it renders now."""
        assert isinstance(call.step, ApprovalStep)
        return await ask(call.host, call.inc, call.phase, call.step, call.host.binding_plan(call.inc))

    async def revisit(self, host: StepHost, inc: Incident, phase: Phase, step: StepBase, run: StepRun) -> str | None:
        """Count the votes: 'next' once the policy is met, 'end' on a rejection, else 'wait'."""
        assert isinstance(step, ApprovalStep)
        return await gate(host, inc, phase, step, run)


async def gate(host: StepHost, inc: Incident, phase: Phase, step: ApprovalStep, run: StepRun) -> str:
    """Where the gate stands: asked again if the plan changed, else the votes counted."""
    store = host.store
    plan = host.binding_plan(inc)
    if (run.waiting or {}).get("plan_hash") != plan.hash:
        return await ask(host, inc, phase, step, plan, previous=run)
    policy = host.policies.get(step.policy, DEFAULT_POLICY)
    clicks = [a for a in await store.approvals(inc.id) if a.counted]
    rejected = next((a for a in clicks if a.decision == "reject"), None)
    if rejected is not None:
        await store.end_step(run.id, StepStatus.FAILED, actor=rejected.user_id,
                             error=f"rejected by {rejected.user_id}: {rejected.note}")
        await _resume(store, inc)
        await store.apply(inc.id, Event.REJECT, actor=rejected.user_id, data={"note": rejected.note})
        return "end"
    votes = [Vote(a.user_id, frozenset(a.roles)) for a in clicks if a.decision == "approve"]
    state = evaluate(policy, votes, requester=inc.requester)
    if not state.met:
        return "wait"
    await _resume(store, inc)
    await store.end_step(run.id, StepStatus.DONE, captures={
        "path": state.path, "approvers": [v.user_id for v in votes], "plan_hash": plan.hash})
    return "next"


async def ask(host: StepHost, inc: Incident, phase: Phase, step: ApprovalStep, plan: Plan, *,
              previous: StepRun | None = None) -> str:
    """Ask for approval of ``plan`` (its file in the thread); a previous ask of another plan is
    closed and the approvals it collected are void."""
    store = host.store
    folder = host.artifacts_dir / inc.id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"plan_{plan.hash[:16]}.md"
    data = plan_markdown(plan).encode("utf-8")
    if not path.exists():
        await asyncio.to_thread(path.write_bytes, data)
        await store.add_artifact(inc.id, step_id=step.id, name=path.name, path=str(path),
                                 sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    waiting: dict[str, Any] = {"kind": "approval", "prompt": step.title, "policy": step.policy,
                               **binding_fields(plan, str(path))}
    if previous is not None:
        old = previous.waiting or {}
        changed = describe_change(old, plan)
        reason = "void: the plan changed before the run started (" + "; ".join(changed) + ")"
        voided = await store.void_approvals(inc.id, reason=reason[:1000], keep_hash=plan.hash)
        waiting.update(changed=changed, voided=voided, previous_hash=old.get("plan_hash"))
        if previous.status is StepStatus.WAITING:
            await store.end_step(previous.id, StepStatus.SKIPPED, error=reason[:1000])
        await store.log(inc.id, "plan_changed", step_id=step.id,
                        data={"changed": changed, "voided": voided, "plan_hash": plan.hash,
                              "previous_hash": old.get("plan_hash")})
    run = await store.begin_step(inc.id, step.id, phase.id, status=StepStatus.WAITING, waiting=waiting)
    return await gate(host, inc, phase, step, run)


async def _resume(store: Store, inc: Incident) -> None:
    """A waiting incident runs again (the gate opened or closed)."""
    if inc.status is Status.WAITING:
        await store.apply(inc.id, Event.RESUME)
