"""The incident thread as a view of the incident state.

``desired_messages`` renders, from the store, every message the thread should hold:
the root message in the channel, then in its thread the approval request, one
checklist message per phase reached, one post per question asked (choice, manual
item, failure, resume), the clock's messages, uploads of long outputs and the
milestones broadcast to the channel. ``bot.slack.publisher`` makes Slack match.
"""

from __future__ import annotations

from pathlib import Path

from bot.clock import view as clock_view
from bot.core.approvals import ApprovalPolicy
from bot.core.lifecycle import Status
from bot.core.runbook import Runbook
from bot.slack.approval import plan_posts, render_approval
from bot.slack.outcome import outcome_messages
from bot.slack.questions import render_question
from bot.slack.status import render_milestone, render_phase, render_root
from bot.slack.view import Rendered, ThreadState
from bot.state.store import Artifact, StepRun


def destructive_after(runbook: Runbook, step_id: str) -> list[str]:
    """Titles of destructive steps from this step to the end of its phase."""
    for phase in runbook.phases:
        ids = [s.id for s in phase.steps]
        if step_id in ids:
            return [s.title for s in phase.steps[ids.index(step_id):] if s.destructive]
    return []


def desired_messages(state: ThreadState, runbook: Runbook, policy: ApprovalPolicy, *,
                     upload_over: int = 3500) -> list[Rendered]:
    """Every message the thread should hold, in thread order."""
    inc = state.incident
    out = [render_root(inc), *clock_view.schedule_messages(state)]
    latest = {r.step_id: r for r in state.runs}
    phases = {p.id: p for p in runbook.all_phases()}
    # While the compensation runs, only its own questions take answers.
    answerable = {s.id for s in runbook.compensation.steps} if (
        inc.status is Status.COMPENSATING and runbook.compensation) else None
    questions: dict[str, list[StepRun]] = {}
    for r in state.runs:
        # Timed steps (stability series, maintenance window) have messages of their own.
        if r.waiting and r.waiting.get("kind") not in ("approval", "stability", "window"):
            questions.setdefault(r.phase_id, []).append(r)
    files: dict[int, Artifact] = {}
    for r in state.runs:
        if (r.output_bytes or 0) > upload_over:
            arts = [a for a in state.artifacts if a.step_id == r.step_id and f".{r.attempt}." in a.name]
            if arts:
                files[r.id] = arts[-1]
    for pv in state.view.phases:
        approval_steps = [s for s in pv.steps if s.waiting and s.waiting.get("kind") == "approval"]
        for s in approval_steps:
            step = runbook.step(s.id)
            out.append(render_approval(inc, s.status, state.approvals, policy, title=step.title, plan=s.waiting))
            out += plan_posts(inc, [r for r in state.runs if r.step_id == s.id])
            if s.status == "done":
                who = ", ".join(f"<@{u}>" for u in s.facts.get("approvers", []))
                out.append(render_milestone("milestone:approved",
                                            f"✅ *{inc.id}* approved by {who}: the rollback of {inc.target} starts."))
        if approval_steps and len(approval_steps) == len(pv.steps):
            continue  # a phase that only gates needs no checklist
        if pv.status == "pending":
            continue
        out.append(render_phase(pv, phases[pv.id].timeline))
        series = clock_view.series_messages(state, runbook, pv.id)  # in run order, among the questions
        for r in questions.get(pv.id, []):
            while series and series[0][0] <= r.id:
                out.append(series.pop(0)[1])
            step = runbook.step(r.step_id)
            current = latest.get(r.step_id) is r and r.answer is None and (
                answerable is None or r.step_id in answerable)
            out.append(render_question(inc, r, title=step.title, guidance=step.guidance, current=current,
                                       destructive=destructive_after(runbook, r.step_id),
                                       uploaded=r.id in files))
            if r.id in files:
                out.append(Rendered(f"file:{r.id}", f"Output of {step.title}", file=Path(files[r.id].path)))
        out += [msg for _, msg in series]
        for r in state.runs:
            if r.phase_id == pv.id and r.id in files and not r.waiting:
                step = runbook.step(r.step_id)
                out.append(Rendered(f"file:{r.id}", f"Output of {step.title} (attempt {r.attempt})",
                                    file=Path(files[r.id].path)))
        if pv.id == "restoration" and pv.status == "done":
            facts = []
            for s in pv.steps:
                if s.status == "done" and s.id in ("full_restore", "selective_restore", "transaction_rollback"):
                    facts.append(s.title)
            out.append(render_milestone("milestone:restored",
                                        f"💾 *{inc.id}*: database restoration done"
                                        + (f" ({'; '.join(facts)})" if facts else "") + "."))
    out += clock_view.clock_messages(state)
    out += outcome_messages(state, runbook)
    return out
