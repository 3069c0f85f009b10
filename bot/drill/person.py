"""The simulated people of a drill, a rehearsal, a benchmark or a test: approvers who approve,
an incident commander who answers as the plan wants, and the loop that runs an incident with
them until it ends or waits for something only a person who looked could answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.core.approvals import ApprovalPolicy
from bot.core.engine import Engine, Waiting
from bot.core.lifecycle import FINAL
from bot.core.runbook import ChoiceStep, Runbook
from bot.drill.clock import DrillClock
from bot.state.store import Incident

#: The drill's people: one primary and one secondary approver, as the plan requires, and the
#: incident commander who answers the questions.
DRILL_REQUESTER = "U0DRILLREQ"
DRILL_APPROVERS = (("U0TECHLEAD", ["tech_lead"]), ("U0PRODOWNER", ["product_owner"]))
DRILL_COMMANDER = "U0DRILLIC"
DRILL_NAMES = {DRILL_REQUESTER: "Drill requester (simulated)", "U0TECHLEAD": "Tech lead (simulated)",
               "U0PRODOWNER": "Product owner (simulated)", DRILL_COMMANDER: "Incident commander (simulated)"}
#: The backups the sandbox's production keeps (a choice offering them is the backup to restore).
BACKUP_PREFIX = "production_backup_"
#: Re-runs allowed when an incident waits for nothing: a scheduled job (the last check of a
#: series) may have settled the wait between ``run`` returning and the look.
IDLE_RUNS = 3

#: Answers a question the incident asks (the value of one of ``w.options``), or None when only
#: a person who looked could say (a failed step, a resume question).
Answer = Callable[[Waiting], str | None]
Approvers = Sequence[tuple[str, list[str]]]


class DrillError(RuntimeError):
    """The drill could not go on (a step failed or an expected option was missing)."""


def policy_approvers(policy: ApprovalPolicy, prefix: str = "U0SIM") -> list[tuple[str, list[str]]]:
    """One simulated person per group of the policy's first path, each holding that group's first role."""
    path = policy.paths[0]
    return [(f"{prefix}{i}", [group[0]]) for i, group in enumerate(path.groups)]


def scheduled_timeout(time_scale: float) -> float:
    """How long the loop waits for scheduled work (up to three hours of the plan, compressed)."""
    return 60 + 3600 * 3 * time_scale


class Commander:
    """The simulated incident commander: the given strategy, the given backup (else the newest
    offered), the bot's suggestion for any other choice, and "done" for manual items."""

    def __init__(self, strategy: str, backup: str | None = None, runbook: Runbook | None = None) -> None:
        self.strategy = strategy
        self.backup = backup
        self.listing = {s.id for _, s in runbook.steps() if isinstance(s, ChoiceStep)
                        and s.options_from is not None and s.options_from.op == "list_backups"} if runbook else set()
        #: The backup the commander chose, once asked.
        self.chosen_backup: str | None = None

    def _is_backup_choice(self, w: Waiting, values: list[str]) -> bool:
        return (w.step_id in self.listing or w.step_id == "restore_backup"
                or any(Path(v).name.startswith(BACKUP_PREFIX) for v in values))

    def _pick_backup(self, w: Waiting, values: list[str]) -> str:
        if not values:
            raise DrillError(f"{w.step_id}: the target lists no backup to restore")
        if self.backup is None:
            pick = values[0]
        else:
            wanted = self.backup
            pick = next((v for v in values if v == wanted or Path(v).name == Path(wanted).name), "")
            if not pick:
                raise DrillError(f"{w.step_id}: backup {wanted} was not offered: {values[:10]}")
        self.chosen_backup = pick
        return pick

    def __call__(self, w: Waiting) -> str | None:
        """The answer to what the incident waits for, or None when it is not the commander's to give."""
        if w.kind == "manual":
            return "done"
        if w.kind != "choice":
            return None
        values = [o["value"] for o in w.options]
        if w.step_id == "strategy" or {"A", "B", "C"} <= set(values):
            why = next((o.get("disabled") for o in w.options if o["value"] == self.strategy), None)
            if why:
                raise DrillError(f"strategy {self.strategy} is not available on this target: {why}")
            return self.strategy
        if self._is_backup_choice(w, values):
            return self._pick_backup(w, values)
        # The option the bot suggests (e.g. the last release before the bad one), else the first.
        return next((o["value"] for o in w.options if o.get("suggested")), values[0] if values else None)


@dataclass(frozen=True)
class Ending:
    """Where a simulated run stopped: the incident, and what it waits for that nobody simulated answers."""

    incident: Incident
    waiting: Waiting | None = None

    @property
    def ended(self) -> bool:
        """The incident reached a final status."""
        return self.incident.status in FINAL

    def problem(self) -> str:
        """Why the run stopped before the incident ended."""
        w = self.waiting
        if w is None:
            return f"incident {self.incident.id} is {self.incident.status.value} but waits for nothing"
        return f"step {w.step_id} {w.kind}: {w.error or w.prompt}"


async def play(engine: Engine, clock: DrillClock, incident_id: str, *, approvers: Approvers, answer: Answer,
               answerer: str, scheduled_timeout: float) -> Ending:
    """Run the incident with the simulated people until it ends or waits for what they do not answer."""
    idle = 0
    while True:
        clock.before_run()
        inc = await engine.run(incident_id)
        if inc.status in FINAL:
            return Ending(inc)
        w = await engine.waiting_for(inc.id)
        if w is None and idle < IDLE_RUNS:
            idle += 1
            continue
        idle = 0
        if w is None:
            return Ending(inc)
        if await clock.handle(engine, inc.id, w, timeout=scheduled_timeout):
            continue
        if w.kind == "approval":
            done = {a.user_id for a in await engine.store.approvals(inc.id) if a.counted}
            for user, roles in approvers:
                if user not in done:
                    await engine.approve(inc.id, user_id=user, roles=roles, decision="approve")
            continue
        value = answer(w)
        if value is None:
            return Ending(inc, w)
        await engine.answer(inc.id, w.step_id, value, user=answerer, roles=["incident_commander"])


async def run_simulated(engine: Engine, clock: DrillClock, incident_id: str, *, approvers: Approvers,
                        answer: Answer, answerer: str = DRILL_COMMANDER, time_scale: float) -> Incident:
    """Run the incident to its end with the simulated people; ``DrillError`` when it cannot end."""
    ending = await play(engine, clock, incident_id, approvers=approvers, answer=answer, answerer=answerer,
                        scheduled_timeout=scheduled_timeout(time_scale))
    if not ending.ended:
        raise DrillError(ending.problem())
    return ending.incident
