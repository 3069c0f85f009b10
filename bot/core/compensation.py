"""What a compensation did and left: the state production is in after an abort or a
failure a person gave up on, and which of the run's changes were undone.

Read from the store only (step runs and the journal), so the thread, the terminal view
and the governance record say the same thing, and say it again after a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.core.lifecycle import StepStatus
from bot.core.runbook import ChoiceStep, Runbook, StepBase
from bot.core.templating import TemplateError, refs, render_text
from bot.state.store import Incident, JournalEvent, StepRun

#: The journal event that starts a compensation (its data: trigger, end, reason, step).
COMPENSATE_EVENT = "incident_compensate"


@dataclass(frozen=True)
class Trigger:
    """Why the compensation ran: ``abort`` or ``failure``, how the incident ends, and why."""

    trigger: str
    end: str  # aborted | failed
    reason: str
    by: str | None


@dataclass
class Outcome:
    """The compensation's account: production's state, what was undone, what was not."""

    trigger: Trigger
    state: list[str] = field(default_factory=list)
    undone: list[str] = field(default_factory=list)
    not_undone: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The outcome as the governance record's ``details.outcome``."""
        return {"status": self.trigger.end, "trigger": self.trigger.trigger, "reason": self.trigger.reason,
                "production_state": self.state, "undone": self.undone, "not_undone": self.not_undone}

    def lines(self) -> list[str]:
        """Plain lines for a terminal or a report."""
        out = [f"Production now: {line}" for line in self.state]
        out += [f"Undone: {line}" for line in self.undone]
        out += [f"Not undone: {line}" for line in self.not_undone]
        out += [f"Still to do: {line}" for line in self.pending]
        return out


def trigger_of(events: Iterable[JournalEvent]) -> Trigger | None:
    """The last compensation start in the journal, if the incident was ever compensated."""
    found = None
    for e in events:
        if e.kind == COMPENSATE_EVENT:
            found = e
    if found is None:
        return None
    d = found.data
    return Trigger(str(d.get("trigger", "abort")), str(d.get("end", "aborted")), str(d.get("reason") or ""),
                   found.actor)


def started(run: StepRun | None) -> bool:
    """A step that ran at least partly: any attempt that was not skipped."""
    return run is not None and run.status is not StepStatus.SKIPPED


def nothing_to_undo(step: StepBase, latest: Mapping[str, StepRun]) -> str | None:
    """Why a compensation step has nothing to do (what it undoes never ran, or the run
    already undid it); None when it must run."""
    if step.undoes and not any(started(latest.get(u)) for u in step.undoes):
        return f"nothing to undo: {', '.join(step.undoes)} did not run"
    done = [u for u in step.unless_done if (r := latest.get(u)) is not None and r.status is StepStatus.DONE]
    if done:
        return f"nothing to undo: {', '.join(done)} already did it"
    return None


def left_by(latest: Mapping[str, StepRun], *, unasked: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the done steps left for templates: captures by step, and choices by choice step
    (with ``unasked``, a skipped step's choice is null rather than missing)."""
    captures: dict[str, Any] = {}
    choices: dict[str, Any] = {}
    for step_id, run in latest.items():
        if run.status is StepStatus.DONE:
            captures[step_id] = run.captures
            if "choice" in run.captures:
                choices[step_id] = run.captures["choice"]
        elif unasked and run.status is StepStatus.SKIPPED:
            choices.setdefault(step_id, None)
    return captures, choices


def context(inc: Incident, latest: Mapping[str, StepRun]) -> dict[str, Any]:
    """Captures, choices and incident fields, as the statement's templates see them."""
    captures, choices = left_by(latest)
    return {"captures": captures, "choices": choices,
            "incident": {"id": inc.id, "stamp": inc.stamp, "reason": inc.reason, "severity": inc.severity or ""}}


def _who(run: StepRun) -> str:
    user = (run.answer or {}).get("user") or run.captures.get("by")
    return f" by {user}" if user else ""


def _facts(run: StepRun) -> str:
    """A few plain captures of a step, e.g. ``(restored 52, changed 40)``."""
    items = [f"{k} {v}" for k, v in run.captures.items() if isinstance(v, int | float | str) and len(str(v)) < 40]
    return f" ({', '.join(items[:3])})" if items else ""


def _undo_line(target: StepBase, undoers: Sequence[StepBase], latest: Mapping[str, StepRun],
               titles: Mapping[str, str]) -> tuple[str, str]:
    """('undone' | 'not_undone' | 'pending', the line) for one started step and its undoers."""
    runs = [(s, latest.get(s.id)) for s in undoers]
    acts = [(s, r) for s, r in runs if not isinstance(s, ChoiceStep)]
    done = [(s, r) for s, r in acts if r is not None and r.status is StepStatus.DONE]
    if done:
        return "undone", f"{target.title} — {'; '.join(s.title + _facts(r) for s, r in done)}"
    by_run = [u for s in undoers for u in s.unless_done
              if (r := latest.get(u)) is not None and r.status is StepStatus.DONE]
    if by_run:
        return "undone", f"{target.title} — already by the run: {'; '.join(titles.get(u, u) for u in by_run)}"
    if any(r is None or r.status in (StepStatus.RUNNING, StepStatus.WAITING, StepStatus.INTERRUPTED)
           or (r.status is StepStatus.FAILED and r.waiting is not None and r.answer is None) for _, r in runs):
        return "pending", f"{target.title} — {'; '.join(s.title for s, _ in runs)}"
    chosen = [(s, r) for s, r in runs if isinstance(s, ChoiceStep) and r is not None
              and r.status is StepStatus.DONE]
    failed = [(s, r) for s, r in acts if r is not None and r.status is StepStatus.FAILED]
    skipped = [(s, r) for s, r in acts if r is not None and r.status is StepStatus.SKIPPED
               and not r.captures.get("condition")]  # a skip by its condition is no one's choice
    if failed or skipped:
        why = "; ".join([f"{s.title} failed: {r.error or 'no error text'}" for s, r in failed]
                        + [f"{s.title} skipped{_who(r)}" for s, r in skipped])
        return "not_undone", f"{target.title} — {why}"
    if chosen:
        why = "; ".join(f"kept by choice: {r.captures.get('label') or r.captures.get('choice')}{_who(r)}"
                        for _, r in chosen)
        return "not_undone", f"{target.title} — {why}"
    return "not_undone", f"{target.title} — its compensation did not apply"


def outcome(runbook: Runbook, inc: Incident, runs: Iterable[StepRun], events: Iterable[JournalEvent]) -> Outcome | None:
    """The compensation's account of an incident; None when it was never compensated."""
    trig = trigger_of(events)
    comp = runbook.compensation
    if trig is None or comp is None:
        return None
    latest: dict[str, StepRun] = {}
    for r in runs:
        latest[r.step_id] = r
    out = Outcome(trig)
    ctx = context(inc, latest)
    finished = all(settled(latest.get(s.id)) for s in comp.steps)
    for line in comp.statement:
        try:
            out.state.append(render_text(line, ctx))
        except TemplateError:
            head = line.split("{{", 1)[0].strip().rstrip(":")
            why = "not measured yet"
            if finished:
                failed = [r for r in (latest.get(ref.parts[1]) for ref in refs(line) if len(ref.parts) > 1)
                          if r is not None and r.status is StepStatus.FAILED]
                why = f"unknown ({failed[0].error})" if failed and failed[0].error else "unknown (not measured)"
            out.state.append(f"{head}: {why}")
    titles = {s.id: s.title for _, s in runbook.steps()}
    undoing = {u for s in comp.steps for u in s.unless_done}
    for _, step in runbook.steps():
        if not step.has_side_effect or not started(latest.get(step.id)) or step.id in undoing:
            continue
        undoers = [s for s in comp.steps if step.id in s.undoes]
        if not undoers:
            out.not_undone.append(f"{step.title} — left as it is (no compensation declared for it)")
            continue
        where, line = _undo_line(step, undoers, latest, titles)
        getattr(out, where).append(line)
    return out


def settled(run: StepRun | None) -> bool:
    """A step run that needs nothing more: done, skipped, or failed with ``on_failure: continue``."""
    if run is None:
        return False
    return run.status in (StepStatus.DONE, StepStatus.SKIPPED) or (
        run.status is StepStatus.FAILED and run.waiting is None)
