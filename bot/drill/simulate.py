"""The simulated people of a drill or rehearsal: approvers who approve, a person who answers
every question, and the loop that runs an incident with them until it ends."""

from __future__ import annotations

from collections.abc import Callable

from bot.core.approvals import ApprovalPolicy
from bot.core.engine import Engine, Waiting
from bot.core.lifecycle import FINAL, Status
from bot.drill.clock import DrillClock
from bot.state.store import Incident

#: Answers a question the incident asks (the value of one of ``w.options``).
Answer = Callable[[Waiting], str]


class DrillError(RuntimeError):
    """The drill could not go on (a step failed or an expected option was missing)."""


def policy_approvers(policy: ApprovalPolicy, prefix: str = "U0SIM") -> list[tuple[str, list[str]]]:
    """One simulated person per group of the policy's first path, each holding that group's first role."""
    path = policy.paths[0]
    return [(f"{prefix}{i}", [group[0]]) for i, group in enumerate(path.groups)]


async def run_simulated(engine: Engine, clock: DrillClock, incident_id: str, *,
                        approvers: list[tuple[str, list[str]]], answer: Answer, answerer: str,
                        time_scale: float) -> Incident:
    """Run the incident to its end: approvals given, questions answered, scheduled work waited for."""
    idle = 0
    while True:
        clock.before_run()
        inc = await engine.run(incident_id)
        if inc.status in FINAL:
            return inc
        w = await engine.waiting_for(inc.id)
        if w is None and inc.status is Status.WAITING and idle < 3:
            # A scheduled job (the last check of a series) may have settled the wait
            # between ``run`` returning and this look: run again.
            idle += 1
            continue
        idle = 0
        if w is None:
            raise DrillError(f"incident {inc.id} is {inc.status.value} but waits for nothing")
        if await clock.handle(engine, inc.id, w, timeout=60 + 3600 * 3 * time_scale):
            continue
        if w.kind == "approval":
            for user, roles in approvers:
                await engine.approve(inc.id, user_id=user, roles=roles, decision="approve")
            continue
        await engine.answer(inc.id, w.step_id, answer(w), user=answerer, roles=["incident_commander"])
