"""The incident as something to show: phases, steps, statuses, durations, key facts.

Both the Slack thread and the drill's terminal view render from this, so they always
agree with the store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from bot.core.compensation import Outcome, outcome
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import Runbook
from bot.state.store import Incident, StepRun, Store

SYMBOLS = {
    "pending": "○",
    "running": "◐",
    "waiting": "⏸",
    "done": "✓",
    "failed": "✗",
    "skipped": "–",
    "interrupted": "!",
}

#: Capture names worth showing beside a step, in this order.
KEY_FACTS = ("path", "file_sha256", "sha256", "content_hash", "ok", "counts", "restricted",
             "restored", "choice", "label", "status", "latency_ms", "undone", "restored_from",
             "corrupted_copy", "approvers", "conclusion", "html_url", "row_id", "anchor", "overall")


@dataclass
class StepView:
    """One line of a phase's checklist."""

    id: str
    title: str
    status: str
    duration: float | None
    attempt: int
    facts: dict[str, Any]
    error: str | None
    waiting: dict[str, Any] | None
    answered: bool
    #: Why a skipped step was skipped, in words.
    note: str = ""


@dataclass
class PhaseView:
    """One phase and its steps."""

    id: str
    title: str
    steps: list[StepView] = field(default_factory=list)
    #: Where the phase really runs when that is not where the plan puts it.
    note: str = ""

    @property
    def status(self) -> str:
        """pending / running / waiting / done / failed / skipped, from the steps."""
        states = {s.status for s in self.steps}
        for st in ("failed", "interrupted", "waiting", "running"):
            if st in states:
                return st
        if states <= {"skipped"}:
            return "skipped"
        if states <= {"done", "skipped"}:
            return "done"
        if states & {"done", "skipped"}:
            return "running"
        return "pending"

    @property
    def duration(self) -> float:
        """Seconds spent in the phase's steps."""
        return sum(s.duration or 0 for s in self.steps)


@dataclass
class IncidentView:
    """Everything a view shows of an incident."""

    incident: Incident
    phases: list[PhaseView]
    #: After an abort or a failure given up on: the compensation's account (see ``bot.core.compensation``).
    stopped: Outcome | None = None

    @property
    def elapsed(self) -> float | None:
        """Seconds from the start of the run to its end (or now)."""
        inc = self.incident
        if inc.started_at is None:
            return None
        end = inc.ended_at or dt.datetime.now(dt.UTC)
        return (end - inc.started_at).total_seconds()


def _facts(run: StepRun) -> dict[str, Any]:
    facts = {k: run.captures[k] for k in KEY_FACTS if k in run.captures}
    hosts = run.captures.get("hosts")
    if isinstance(hosts, list) and hosts:  # a host group's step: how many hosts, which failed
        failed = [h for h in hosts if isinstance(h, dict) and not h.get("ok")]
        text = f"{len(hosts) - len(failed)}/{len(hosts)} ok"
        if failed:
            text += "; failed " + ", ".join(
                f"{h.get('host')} ({h.get('error') or 'exit ' + str(h.get('exit_status'))})" for h in failed)
        facts = {"hosts": text, **facts}
    return facts


def phase_notes(runbook: Runbook) -> dict[str, str]:
    """A note for each phase that runs later than the plan puts it: after which phase it runs."""
    notes = {}
    for i, phase in enumerate(runbook.phases):
        if phase.shown_before and i > 0:
            before = runbook.phases[i - 1].title
            notes[phase.id] = f"runs after {before}"
    return notes


def in_plan_order(phases: list[PhaseView], runbook: Runbook) -> list[PhaseView]:
    """The phases in the written plan's order (a ``shown_before`` phase moved to its place)."""
    moved = {p.id: p.shown_before for p in runbook.phases if p.shown_before}
    out = [pv for pv in phases if pv.id not in moved]
    for pv in phases:
        if pv.id in moved:
            at = next((i for i, o in enumerate(out) if o.id == moved[pv.id]), len(out))
            out.insert(at, pv)
    return out


def build(runbook: Runbook, incident: Incident, runs: dict[str, StepRun]) -> IncidentView:
    """The view of an incident from its latest step runs (phases in run order, with notes; the
    compensation once it ran)."""
    phases = []
    notes = phase_notes(runbook)
    comp = runbook.compensation
    shown = list(runbook.phases)
    if comp is not None and (incident.status is Status.COMPENSATING or any(s.id in runs for s in comp.steps)):
        shown.append(comp)
    for phase in shown:
        pv = PhaseView(phase.id, phase.title, note=notes.get(phase.id, ""))
        for step in phase.steps:
            run = runs.get(step.id)
            status = run.status.value if run else StepStatus.PENDING.value
            if run and run.status is StepStatus.FAILED and run.waiting is None:
                status = "failed"
            pv.steps.append(StepView(
                id=step.id, title=step.title, status=status,
                duration=run.duration if run else None, attempt=run.attempt if run else 0,
                facts=_facts(run) if run else {}, error=run.error if run else None,
                waiting=run.waiting if run else None,
                answered=bool(run and run.answer is not None),
                note=str(run.captures.get("skip_reason") or "") if run and status == "skipped" else "",
            ))
        phases.append(pv)
    return IncidentView(incident, phases)


async def load(store: Store, runbook: Runbook, incident_id: str) -> IncidentView:
    """Load an incident's view from the store."""
    inc = await store.incident(incident_id)
    runs = await store.latest_runs(incident_id)
    view = build(runbook, inc, runs)
    if inc.status in (Status.COMPENSATING, Status.ABORTED, Status.FAILED):
        view.stopped = outcome(runbook, inc, runs.values(), await store.events(incident_id))
    return view


def short(value: Any, limit: int = 80) -> str:
    """A compact one-line form of a fact."""
    if isinstance(value, dict):
        text = ", ".join(f"{k} {v}" for k, v in value.items())
    elif isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        text = value[:12] + "…"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
