"""The incident thread as a view of the incident state.

``desired_messages`` renders, from the store, every message the thread should hold:
the root message in the channel, then in its thread the approval request, one
checklist message per phase reached, one post per question asked (choice, manual
item, failure, resume), uploads of long outputs and the milestones broadcast to the
channel. ``ThreadPublisher`` makes Slack match: it posts what is missing, edits what
changed, at most once per ``update_interval`` per incident, and keeps each message's
``ts`` and content hash in the incident's ``view`` column, so after a restart or a
Slack outage it catches the thread up without losing or doubling anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    Option,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import DBAPIError

from bot.core import compensation
from bot.core.approvals import ApprovalPolicy, Vote, describe_missing, evaluate
from bot.core.lifecycle import FINAL, Status
from bot.core.runbook import ReportStep, Runbook
from bot.record.report import metrics_text
from bot.record.viewmodel import SYMBOLS, IncidentView, PhaseView, build, short
from bot.state.schema import Fence, LeaseLost, fenced
from bot.state.store import Approval, Artifact, Incident, JournalEvent, StabilityCheck, StepRun, Store

log = logging.getLogger(__name__)

SECTION_LIMIT = 3000
MAX_BLOCKS = 50
BUTTONS_MAX = 5          # more options than this become a select menu
TAIL_LINES = 15

# Action ids the handlers listen to.
APPROVE = "rb_approve"
REJECT = "rb_reject"
ANSWER = "rb_answer"     # rb_answer_<n>: buttons; rb_answer_select: the select menu
P4_OVERRIDE = "rb_p4_override"

STATUS_WORDS = {
    Status.OPEN: "open",
    Status.SCHEDULED: "scheduled",
    Status.RUNNING: "running",
    Status.WAITING: "waiting for a person",
    Status.COMPENSATING: "stopping: undoing what ran",
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.ABORTED: "aborted",
    Status.REJECTED: "rejected",
    Status.CLOSED: "closed (no rollback)",
}
STATUS_ICONS = {
    Status.OPEN: "🟡", Status.SCHEDULED: "🗓️", Status.RUNNING: "🔄", Status.WAITING: "⏸️", Status.COMPENSATING: "↩️",
    Status.COMPLETED: "✅", Status.FAILED: "❌", Status.ABORTED: "🛑", Status.REJECTED: "🚫",
    Status.CLOSED: "⚪",
}


# ---------------------------------------------------------------- value encoding


def answer_value(incident_id: str, run_id: int, index: int) -> str:
    """The value of an answer button or select option: incident, step run, option index."""
    return f"{incident_id}|{run_id}|{index}"


def parse_answer_value(value: str) -> tuple[str, int, int]:
    """Inverse of ``answer_value``; ``ValueError`` for anything else."""
    parts = value.split("|")
    if len(parts) != 3 or not parts[0].startswith("RB-"):
        raise ValueError(f"not an answer value: {value[:60]!r}")
    return parts[0], int(parts[1]), int(parts[2])


# ---------------------------------------------------------------- rendering


@dataclass
class Rendered:
    """One message as Slack gets it."""

    key: str
    text: str
    blocks: list[Block] = field(default_factory=list)
    broadcast: bool = False
    file: Path | None = None      # an upload instead of a message
    in_channel: bool = False      # the root message

    def payload(self) -> list[dict[str, Any]]:
        """The blocks as dicts, checked against Slack's limits by slack_sdk."""
        if len(self.blocks) > MAX_BLOCKS:
            raise ValueError(f"{self.key}: {len(self.blocks)} blocks (Slack allows {MAX_BLOCKS})")
        return [b.to_dict() for b in self.blocks]

    def digest(self) -> str:
        """A hash of what Slack shows, to skip edits that change nothing."""
        if self.file is not None:
            return "file:" + str(self.file)
        raw = json.dumps([self.text, self.payload()], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()


def clip(text: str, limit: int = SECTION_LIMIT - 100) -> str:
    """Text cut to fit a section, marked when cut."""
    return text if len(text) <= limit else text[: limit - 2] + " …"


def _sections(lines: Iterable[str], limit: int = SECTION_LIMIT - 100) -> list[Block]:
    """Lines packed into as few sections as fit Slack's 3000 characters each."""
    blocks: list[Block] = []
    chunk = ""
    for line in lines:
        line = clip(line, limit)
        if chunk and len(chunk) + 1 + len(line) > limit:
            blocks.append(SectionBlock(text=MarkdownTextObject(text=chunk)))
            chunk = line
        else:
            chunk = f"{chunk}\n{line}" if chunk else line
    if chunk:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=chunk)))
    return blocks


def _esc(text: str) -> str:
    """Escape Slack's control characters in user-typed text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _when(at: dt.datetime | None) -> str:
    return at.astimezone(dt.UTC).strftime("%H:%M:%S UTC") if at else "—"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def render_root(inc: Incident) -> Rendered:
    """The channel message of an incident: id, target, severity, decision, requester, reason."""
    inputs = inc.inputs or {}
    icon = STATUS_ICONS.get(inc.status, "")
    title = clip(f"{icon} {inc.id} · rollback of {inc.target}", 150)
    lines = [
        f"*Severity:* {inc.severity or '—'}   *Decision:* {inc.decision or '—'}",
        f"*Why this decision:* {_esc(str(inputs.get('explanation', '—')))}",
        f"*Requested by:* <@{inc.requester}>" if inc.requester else "*Requested by:* —",
        f"*Reason:* {_esc(inc.reason) or '—'}",
    ]
    triggers = inputs.get("trigger_labels") or inputs.get("triggers") or []
    if triggers:
        lines.append("*Trigger conditions:* " + _esc(", ".join(str(t) for t in triggers)))
    if inputs.get("impact") or inputs.get("business_risk"):
        lines.append(f"*Impact:* {inputs.get('impact', '—')}   *Business risk:* {inputs.get('business_risk', '—')}")
    if inputs.get("override"):
        lines.append(f"*P4 overridden by* <@{inputs['override']['by']}>: {_esc(inputs['override']['reason'])}")
    if inputs.get("description"):
        lines.append("*Description:* " + _esc(str(inputs["description"])))
    if isinstance(inputs.get("last_tested"), dict):
        lines.append(f"*{_esc(str(inputs['last_tested'].get('text', '')))}*")
    if inputs.get("deadline"):
        lines.append(f"*Deadline:* {_when(dt.datetime.fromisoformat(inputs['deadline']))} (P2: within 2 hours)")
    if isinstance(inputs.get("window"), dict):
        lines.append(f"*Scheduled:* maintenance window {_esc(str(inputs['window'].get('label', '')))}")
    status = f"*Status:* {STATUS_WORDS.get(inc.status, inc.status.value)}"
    if inc.status is Status.CLOSED:
        status += " — P4: recorded, no rollback needed"
    if inc.abort_reason and inc.status is Status.ABORTED:
        status += f" — {_esc(inc.abort_reason)}"
    lines.append(status)
    blocks: list[Block] = [HeaderBlock(text=title)]
    blocks += _sections(lines)
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text="Everything else happens in this thread.")]))
    text = f"{inc.id}: rollback of {inc.target} — {inc.severity or ''} {inc.decision or ''} — {inc.status.value}"
    return Rendered("root", clip(text, 3000), blocks, in_channel=True)


def render_approval(inc: Incident, step_status: str, clicks: list[Approval], policy: ApprovalPolicy,
                    *, title: str, plan: dict[str, Any] | None = None) -> Rendered:
    """The approval request: the plan's summary and hash, who is still needed, every click,
    Approve / Reject while open."""
    counted = [a for a in clicks if a.counted and a.decision == "approve"]
    state = evaluate(policy, [Vote(a.user_id, frozenset(a.roles)) for a in counted], requester=inc.requester)
    lines = [f"*{_esc(title)}*"]
    plan = plan or {}
    lines += [_esc(str(line)) for line in plan.get("plan_summary") or []]
    if plan.get("changed"):
        lines.append(f"⚠️ *The plan changed before the run started:* {_esc('; '.join(plan['changed']))}. "
                     f"{plan.get('voided', 0)} approval(s) void; approve the new plan (hash "
                     f"`{str(plan.get('plan_hash'))[:16]}`).")
    if step_status == "done":
        who = ", ".join(f"<@{a.user_id}>" for a in counted)
        lines.append(f"✅ *Approved* ({state.path or 'policy met'}) by {who}")
    elif step_status == "failed" or inc.status is Status.REJECTED:
        rej = next((a for a in clicks if a.counted and a.decision == "reject"), None)
        why = f": {_esc(rej.note)}" if rej and rej.note else ""
        lines.append(f"🚫 *Rejected* by <@{rej.user_id}>{why}" if rej else "🚫 *Rejected*")
    elif inc.status in FINAL:
        lines.append(f"No longer asked: the incident is {inc.status.value}.")
    else:
        lines.append("*Still needed:* " + describe_missing(state))
        if inc.requester:
            lines.append(f"The requester <@{inc.requester}> does not approve their own rollback"
                         + (" (except where the emergency path allows it)."
                            if any(p.requester_may_approve for p in policy.paths) else "."))
    click_lines = []
    for a in clicks:
        mark = "✅" if a.decision == "approve" else "❌"
        roles = ", ".join(a.roles) or "no role"
        note = "counted" if a.counted else f"not counted: {_esc(a.note)}"
        extra = f" — “{_esc(a.note)}”" if a.counted and a.note else ""
        plan_of = f" · plan `{a.plan_hash[:16]}`" if a.plan_hash else ""
        click_lines.append(f"{mark} <@{a.user_id}> ({roles}) {a.decision} at {_when(a.at)}{plan_of} — {note}{extra}")
    blocks = _sections(lines)
    if click_lines:
        # Keep the newest clicks when there are too many to show.
        blocks += _sections(["*Clicks:*", *click_lines[-40:]])
    if step_status == "waiting" and inc.status not in FINAL:
        blocks.append(ActionsBlock(block_id=f"approval|{inc.id}", elements=[
            ButtonElement(text="Approve", action_id=APPROVE, value=inc.id, style="primary"),
            ButtonElement(text="Reject", action_id=REJECT, value=inc.id, style="danger"),
        ]))
    text = f"{inc.id}: approval — " + ("approved" if step_status == "done" else "still needed: "
                                        + describe_missing(state))
    return Rendered("approval", clip(text, 3000), blocks)


def render_phase(phase: PhaseView, timeline: str = "") -> Rendered:
    """A phase as a checklist: a line per step with status, duration and key facts."""
    dur = f" · {_dur(phase.duration)}" if phase.duration else ""
    head = f"{SYMBOLS.get(phase.status, '?')} *{_esc(phase.title)}* — {phase.status}{dur}"
    lines = [head]
    for s in phase.steps:
        line = f"{SYMBOLS.get(s.status, '?')} {_esc(s.title)}"
        if s.duration is not None:
            line += f" ({_dur(s.duration)})"
        if s.attempt > 1:
            line += f" · attempt {s.attempt}"
        facts = "; ".join(f"{k}: `{_esc(short(v, 64))}`" for k, v in list(s.facts.items())[:4])
        if facts:
            line += f" — {facts}"
        if s.status in ("failed", "interrupted") and s.error:
            line += f" — _{_esc(short(s.error, 120))}_"
        elif s.status == "skipped" and s.note:
            line += f" — {_esc(short(s.note, 120))}"
        lines.append(line)
    blocks = _sections(lines)
    context = [f"Plan timeline: {_esc(timeline)}"] if timeline else []
    if phase.note:  # a phase the runbook runs later than the written plan puts it
        context.append(_esc(phase.note[:1].upper() + phase.note[1:]))
    if context:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=clip(" · ".join(context), 2900))]))
    return Rendered(f"phase:{phase.id}", clip(f"{phase.title}: {phase.status}", 3000), blocks)


def _confirm(destructive: list[str], preview: str | None = None) -> ConfirmObject | None:
    """The confirm dialog before a destructive step: the step rendered with the chosen value
    when known, else the steps' titles (a confirm's text holds 300 characters)."""
    if preview:
        return ConfirmObject(title="Destructive step", text=clip("This runs: " + _esc(preview), 300),
                             confirm="Yes, go on", deny="Cancel")
    if not destructive:
        return None
    text = "This goes on to destructive steps: " + "; ".join(destructive)
    return ConfirmObject(title="Destructive step", text=clip(text, 300), confirm="Yes, go on", deny="Cancel")


def _plan_posts(inc: Incident, runs: list[StepRun]) -> list[Rendered]:
    """Each rendered plan approval was asked for, as a file, and a notice when it changed."""
    out: list[Rendered] = []
    files: set[str] = set()
    for r in runs:
        w = r.waiting or {}
        if w.get("changed"):
            out.append(Rendered(f"plan_changed:{r.id}", f"{inc.id}: the plan changed; approval is asked again",
                                _sections([f"⚠️ *{inc.id}: the plan changed before the run started* — "
                                           + _esc("; ".join(w["changed"])) + f". {w.get('voided', 0)} approval(s)"
                                           " are void; approval is asked again above (plan hash "
                                           f"`{str(w.get('plan_hash'))[:16]}`)."])))
        path = w.get("plan_file")
        if path and path not in files:
            files.add(path)
            out.append(Rendered(f"file:plan:{str(w.get('plan_hash'))[:16]}",
                                f"{inc.id}: the rendered plan (hash {w.get('plan_hash')})", file=Path(path)))
    return out


def _tail(text: str, lines: int = TAIL_LINES, limit: int = 1800) -> str:
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    return tail[-limit:].replace("```", "'''")


def render_question(inc: Incident, run: StepRun, *, title: str, guidance: str, current: bool,
                    destructive: list[str], uploaded: bool) -> Rendered:
    """A question the incident asks: choice, manual item, failure or resume; buttons while open."""
    w = run.waiting or {}
    kind = w.get("kind", "choice")
    options: list[dict[str, str]] = list(w.get("options", []))
    icon = {"choice": "🔀", "manual": "☑️", "failure": "❌", "resume": "⚠️", "stability_failed": "⛔"}.get(kind, "❓")
    prompt = str(w.get("prompt") or title)
    lines = [f"{icon} *{_esc(prompt)}*"]
    if kind == "choice" and guidance:
        lines.append(_esc(guidance))
    if kind == "choice":
        for o in options[:BUTTONS_MAX] if len(options) <= BUTTONS_MAX else []:
            desc = f" — {_esc(o.get('description', ''))}" if o.get("description") else ""
            lines.append(f"• *{_esc(o['label'])}*{desc}")
        if w.get("default"):
            lines.append(f"_Suggested: {_esc(str(w['default']))}_")
    if w.get("mention") and kind == "stability_failed":
        lines.insert(0, str(w["mention"]))  # the incident commander, notified by this new post
    if kind in ("failure", "resume", "stability_failed") and (w.get("error") or run.error):
        lines.append(f"*Error:* {_esc(short(str(w.get('error') or run.error), 400))}")
    blocks = _sections(lines)
    if kind == "failure" and run.output_tail.strip():
        note = " (whole output in the file below)" if uploaded else ""
        blocks.append(SectionBlock(text=MarkdownTextObject(
            text=clip(f"*Output tail*{note}:\n```{_tail(run.output_tail)}```"))))
    answer = run.answer
    if answer is not None:
        label = next((o["label"] for o in options if o["value"] == answer.get("value")), answer.get("value"))
        blocks.append(ContextBlock(elements=[MarkdownTextObject(
            text=f"Answered *{_esc(str(label))}* by <@{answer.get('user')}> at {_when(run.ended_at)}")]))
    elif current and inc.status not in FINAL:
        blocks.append(_answer_actions(inc, run, options, destructive, kind))
    else:
        why = (f"the incident is {inc.status.value}" if inc.status in FINAL or inc.status is Status.COMPENSATING
               else "superseded by a later attempt")
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"No longer asked: {why}.")]))
    text = f"{inc.id}: {prompt}"
    return Rendered(f"ask:{run.id}", clip(text, 3000), blocks)


def _answer_actions(inc: Incident, run: StepRun, options: list[dict[str, str]], destructive: list[str],
                    kind: str) -> ActionsBlock:
    # Retry / re-run / a choice that leads on to a destructive step asks for a confirmation.
    gated = {"retry", "rerun"} if kind in ("failure", "resume") else {o["value"] for o in options}
    confirm = _confirm(destructive, (run.waiting or {}).get("confirm"))
    bid = f"ask|{run.id}"
    if len(options) > BUTTONS_MAX:
        select = StaticSelectElement(
            placeholder="Pick one…", action_id=f"{ANSWER}_select", confirm=confirm,
            options=[Option(value=answer_value(inc.id, run.id, i), label=clip(o["label"], 75),
                            description=clip(o["description"], 75) if o.get("description") else None)
                     for i, o in enumerate(options[:100]) if not o.get("disabled")],
        )
        return ActionsBlock(block_id=bid, elements=[select])
    buttons = []
    for i, o in enumerate(options):
        if o.get("disabled"):  # shown above with its reason; no button to pick it
            continue
        style = "danger" if o["value"] == "abort" else ("primary" if o["value"] in ("retry", "done", "rerun")
                                                         else None)
        buttons.append(ButtonElement(
            text=clip(o["label"], 75), action_id=f"{ANSWER}_{i}", value=answer_value(inc.id, run.id, i),
            style=style, confirm=(_confirm(destructive, o.get("confirm")) if o.get("confirm") else confirm)
            if o["value"] in gated else None,
        ))
    return ActionsBlock(block_id=bid, elements=buttons)


def render_milestone(key: str, text: str) -> Rendered:
    """A line broadcast to the channel from the thread."""
    return Rendered(key, clip(text, 3000), [SectionBlock(text=MarkdownTextObject(text=clip(text)))],
                    broadcast=True)


@dataclass
class ThreadState:
    """Everything the thread is rendered from, loaded in one go."""

    incident: Incident
    view: IncidentView
    runs: list[StepRun]
    approvals: list[Approval]
    artifacts: list[Artifact]
    checks: list[StabilityCheck] = field(default_factory=list)
    events: list[JournalEvent] = field(default_factory=list)


async def load_state(store: Store, runbook: Runbook, incident_id: str) -> ThreadState:
    """Read the incident, its step runs, clicks, artifacts, stability checks and journal."""
    inc = await store.incident(incident_id)
    runs = await store.step_runs(incident_id)
    latest: dict[str, StepRun] = {}
    for r in runs:
        latest[r.step_id] = r
    return ThreadState(inc, build(runbook, inc, latest), runs, await store.approvals(incident_id),
                       await store.artifacts(incident_id), await store.stability_checks(incident_id),
                       await store.events(incident_id))


def _destructive_after(runbook: Runbook, step_id: str) -> list[str]:
    """Titles of destructive steps from this step to the end of its phase."""
    for phase in runbook.phases:
        ids = [s.id for s in phase.steps]
        if step_id in ids:
            return [s.title for s in phase.steps[ids.index(step_id):] if s.destructive]
    return []


def desired_messages(state: ThreadState, runbook: Runbook, policy: ApprovalPolicy, *,
                     upload_over: int = 3500) -> list[Rendered]:
    """Every message the thread should hold, in thread order."""
    from bot.clock import view as clock_view  # it renders with this module's helpers

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
            out += _plan_posts(inc, [r for r in state.runs if r.step_id == s.id])
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
                                       destructive=_destructive_after(runbook, r.step_id),
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
    if inc.status in FINAL:
        report_id = next((s.id for _, s in runbook.steps() if isinstance(s, ReportStep)), None)
        report = latest.get(report_id) if report_id else None
        done = report is not None and report.status.value == "done"
        if done and report is not None and report.captures.get("report_path"):
            out.append(Rendered("file:report", f"{inc.id}: post-incident report",
                                file=Path(str(report.captures["report_path"]))))
        end = render_milestone("milestone:end", _final_line(state))
        stopped = compensation.outcome(runbook, inc, state.runs, state.events)
        if stopped is not None:
            end.blocks += _sections(statement_lines(stopped))
        if done and report is not None and report.captures.get("metrics"):
            end.blocks.append(SectionBlock(text=MarkdownTextObject(text=clip(metrics_text(
                list(report.captures["metrics"]), str(report.captures.get("overall") or ""))))))
        out.append(end)
    return out


def statement_lines(stopped: compensation.Outcome) -> list[str]:
    """The compensation's account as mrkdwn lines: production's state, undone, not undone."""
    lines = ["*Production is now:* " + _esc("; ".join(stopped.state) or "not measured")]
    if stopped.undone:
        lines.append("*Undone:*")
        lines += [f"• {_esc(line)}" for line in stopped.undone]
    if stopped.not_undone:
        lines.append("*Not undone:*")
        lines += [f"• {_esc(line)}" for line in stopped.not_undone]
    if stopped.pending:
        lines.append("*Still to do:*")
        lines += [f"• {_esc(line)}" for line in stopped.pending]
    return lines


def _final_line(state: ThreadState) -> str:
    inc = state.incident
    icon = STATUS_ICONS.get(inc.status, "")
    took = state.view.elapsed
    line = f"{icon} *{inc.id}* {STATUS_WORDS.get(inc.status, inc.status.value)}"
    if took is not None:
        line += f" after {_dur(took)}"
    if inc.status is Status.FAILED:
        failed = next((s for p in state.view.phases for s in p.steps if s.status == "failed" and s.error), None)
        if failed:
            line += f": {_esc(failed.title)} — {_esc(short(failed.error, 200))}"
    if inc.status is Status.ABORTED and inc.abort_reason:
        line += f": {_esc(inc.abort_reason)}"
    if inc.status is Status.REJECTED:
        rej = next((a for a in state.approvals if a.counted and a.decision == "reject"), None)
        if rej:
            line += f" by <@{rej.user_id}>" + (f": {_esc(rej.note)}" if rej.note else "")
    return line + "."


# ---------------------------------------------------------------- publishing

#: Metadata event type on every message the bot posts, to find it again after a lost answer.
POST_EVENT = "rollback_bot_message"
#: Errors of conversations.history / .replies that mean "the bot may not look" (not "try later").
NO_READ_BACK = ("missing_scope", "not_in_channel", "channel_not_found", "thread_not_found", "not_allowed_token_type")
READ_BACK_PAGES = 10

#: Errors that mean "Slack did not take it now; try again later".
TRANSIENT = (SlackApiError, SlackRequestError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class ThreadPublisher:
    """Makes each incident's thread match its state; coalesces, retries, survives restarts."""

    def __init__(self, *, client: AsyncWebClient, store: Store, runbook: Runbook, policy: ApprovalPolicy,
                 update_interval: float = 1.0, retry_max: float = 30.0, upload_over: int = 3500) -> None:
        self.client = client
        self._poster = _never_resend(client)
        self.store = store
        self.runbook = runbook
        self.policy = policy
        self.update_interval = update_interval
        self.retry_max = retry_max
        self.upload_over = upload_over
        self._dirty: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, float] = {}
        self._idle: dict[str, asyncio.Event] = {}
        #: Several replicas: the fence under which this process writes an incident's thread
        #: (None: another replica writes it, and ``elsewhere`` is told of the change instead).
        self.fence_of: Callable[[str], Fence | None] | None = None
        self.elsewhere: Callable[[str], None] | None = None

    def request(self, incident_id: str) -> None:
        """Note that the incident changed; its thread is synced soon (coalesced)."""
        if self.fence_of is not None and self.fence_of(incident_id) is None:
            if self.elsewhere is not None:
                self.elsewhere(incident_id)
            return
        self._dirty.add(incident_id)
        ev = self._idle.setdefault(incident_id, asyncio.Event())
        ev.clear()
        task = self._tasks.get(incident_id)
        if task is None or task.done():
            self._tasks[incident_id] = asyncio.create_task(self._loop(incident_id), name=f"thread-{incident_id}")

    async def on_change(self, incident_id: str) -> None:
        """The engine's change callback."""
        self.request(incident_id)

    async def settled(self, incident_id: str, timeout: float | None = None) -> None:
        """Wait until the thread shows the latest state (tests, shutdown)."""
        ev = self._idle.setdefault(incident_id, asyncio.Event())
        if incident_id not in self._dirty and not (incident_id in self._tasks
                                                     and not self._tasks[incident_id].done()):
            return
        await asyncio.wait_for(ev.wait(), timeout)

    def drop(self, incident_id: str) -> None:
        """Stop writing an incident's thread (its lease went to another replica)."""
        self._dirty.discard(incident_id)
        task = self._tasks.pop(incident_id, None)
        if task is not None:
            task.cancel()
        self._idle.setdefault(incident_id, asyncio.Event()).set()

    def busy(self, incident_id: str) -> bool:
        """True while a sync of the incident is pending or under way."""
        task = self._tasks.get(incident_id)
        return incident_id in self._dirty or (task is not None and not task.done())

    async def close(self) -> None:
        """Stop the sync tasks (pending changes are caught up at the next start)."""
        for task in self._tasks.values():
            task.cancel()
        for task in list(self._tasks.values()):
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def catch_up(self) -> list[str]:
        """After a start: sync every incident whose thread may lag its state."""
        ids = []
        for inc in await self.store.incidents():
            if inc.channel and (inc.status not in FINAL or not inc.view.get("final_synced")):
                self.request(inc.id)
                ids.append(inc.id)
        return ids

    async def _loop(self, incident_id: str) -> None:
        failures = 0
        while incident_id in self._dirty:
            wait = self._last.get(incident_id, 0.0) + self.update_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.discard(incident_id)
            fence = self.fence_of(incident_id) if self.fence_of is not None else None
            if self.fence_of is not None and fence is None:
                break  # the lease went elsewhere: that replica writes the thread now
            try:
                with fenced(fence) if fence is not None else contextlib.nullcontext():
                    await self.sync(incident_id)
                failures = 0
            except LeaseLost:
                break  # another replica writes this thread now
            except (*TRANSIENT, DBAPIError) as exc:
                failures += 1
                self._dirty.add(incident_id)
                delay = min(self.retry_max, 0.5 * 2 ** min(failures, 10))
                log.warning("thread of %s not synced (%s); retrying in %.1fs", incident_id, _brief(exc), delay)
                await asyncio.sleep(delay)
            finally:
                self._last[incident_id] = time.monotonic()
        self._idle.setdefault(incident_id, asyncio.Event()).set()

    async def sync(self, incident_id: str) -> None:
        """One pass: post what is missing, edit what changed; ``view`` is saved after each call."""
        async with self._locks.setdefault(incident_id, asyncio.Lock()):
            state = await load_state(self.store, self.runbook, incident_id)
            inc = state.incident
            if not inc.channel:
                return
            view: dict[str, Any] = dict(inc.view or {})
            sent: dict[str, dict[str, str]] = dict(view.get("messages", {}))
            thread_ts = inc.thread_ts
            for msg in desired_messages(state, self.runbook, self.policy, upload_over=self.upload_over):
                digest = msg.digest()
                have = sent.get(msg.key)
                if have is not None and have.get("hash") == digest:
                    continue
                if msg.file is not None:
                    if thread_ts and (have is None or have.get("pending")):
                        if have is None or not await self._find_upload(inc, thread_ts, msg):
                            # Intent first: if the answer is lost, the next pass looks before it uploads again.
                            sent[msg.key] = {"ts": "", "hash": "", "pending": "upload"}
                            await self._save(incident_id, view, sent)
                            await self._upload(inc, thread_ts, msg)
                        sent[msg.key] = {"ts": "", "hash": digest}
                        await self._save(incident_id, view, sent)
                    continue
                if have is not None and have.get("pending"):
                    # A post whose answer was lost may be in Slack: adopt it rather than post twice.
                    found = await self._find_post(inc, thread_ts, msg, have)
                    have = {"ts": found, "hash": have.get("posted", "")} if found else None
                    if have is not None:
                        sent[msg.key] = have
                        if msg.in_channel and not thread_ts:
                            thread_ts = found
                            await self.store.update_incident(incident_id, thread_ts=found)
                        await self._save(incident_id, view, sent)
                        if have["hash"] == digest:
                            continue
                if have is not None:
                    await self.client.chat_update(channel=inc.channel, ts=have["ts"], text=msg.text,
                                                  blocks=msg.payload())
                    sent[msg.key] = {"ts": have["ts"], "hash": digest}
                else:
                    if not msg.in_channel and not thread_ts:
                        continue  # the root message is not there yet
                    kwargs: dict[str, Any] = {}
                    if not msg.in_channel:
                        kwargs["thread_ts"] = thread_ts
                        if msg.broadcast:
                            kwargs["reply_broadcast"] = True
                    nonce = uuid.uuid4().hex[:12]
                    sent[msg.key] = {"ts": "", "hash": "", "pending": nonce, "posted": digest,
                                     "at": f"{time.time():.3f}"}
                    await self._save(incident_id, view, sent)
                    resp = await self._poster.chat_postMessage(
                        channel=inc.channel, text=msg.text, blocks=msg.payload(),
                        metadata={"event_type": POST_EVENT,
                                  "event_payload": {"incident": inc.id, "key": msg.key, "nonce": nonce}},
                        **kwargs)
                    ts = str(resp["ts"])
                    sent[msg.key] = {"ts": ts, "hash": digest}
                    if msg.in_channel:
                        thread_ts = ts
                        await self.store.update_incident(incident_id, thread_ts=ts)
                await self._save(incident_id, view, sent)
            if inc.status in FINAL and not view.get("final_synced"):
                view["final_synced"] = True
                await self._save(incident_id, view, sent)

    async def _save(self, incident_id: str, view: dict[str, Any], sent: dict[str, dict[str, str]]) -> None:
        view["messages"] = sent
        await self.store.update_incident(incident_id, view=dict(view))

    async def _upload(self, inc: Incident, thread_ts: str, msg: Rendered) -> None:
        assert msg.file is not None and inc.channel is not None
        if not msg.file.exists():
            log.warning("%s: artifact %s is gone; not uploaded", inc.id, msg.file)
            return
        await self._poster.files_upload_v2(channel=inc.channel, thread_ts=thread_ts, file=str(msg.file),
                                           filename=msg.file.name, title=clip(msg.text, 200))

    async def _find_post(self, inc: Incident, thread_ts: str | None, msg: Rendered,
                         have: dict[str, str]) -> str | None:
        """The ts of this message if an earlier post of it reached Slack (found by its metadata)."""
        assert inc.channel is not None
        if not msg.in_channel and not thread_ts:
            return None
        oldest = f"{float(have.get('at') or 0) - 120:.6f}"
        for m in await self._read_back(inc.channel, None if msg.in_channel else thread_ts, oldest=oldest):
            meta = m.get("metadata") or {}
            payload = meta.get("event_payload") or {}
            if meta.get("event_type") == POST_EVENT and payload.get("incident") == inc.id \
                    and payload.get("key") == msg.key:
                return str(m["ts"])
        return None

    async def _find_upload(self, inc: Incident, thread_ts: str, msg: Rendered) -> bool:
        """True if an earlier upload of this file reached the thread (found by its file name)."""
        assert inc.channel is not None and msg.file is not None
        return any(f.get("name") == msg.file.name
                   for m in await self._read_back(inc.channel, thread_ts) for f in m.get("files") or [])

    async def _read_back(self, channel: str, thread_ts: str | None, *, oldest: str = "0") -> list[dict[str, Any]]:
        """The thread's replies (or the channel's recent messages), with metadata; [] if not allowed."""
        out: list[dict[str, Any]] = []
        cursor = None
        try:
            for _ in range(READ_BACK_PAGES):
                if thread_ts:
                    resp = await self.client.conversations_replies(channel=channel, ts=thread_ts, cursor=cursor,
                                                                   include_all_metadata=True, limit=200)
                else:
                    resp = await self.client.conversations_history(channel=channel, oldest=oldest, cursor=cursor,
                                                                   include_all_metadata=True, limit=200)
                out += resp.get("messages") or []
                cursor = (resp.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    break
        except SlackApiError as exc:
            if exc.response.get("error") not in NO_READ_BACK:
                raise
            # Without the history scope the bot cannot look: it posts again, which may double.
            log.warning("cannot read back %s (%s); posting again may show a message twice",
                        channel, exc.response.get("error"))
        return out


def _never_resend(client: AsyncWebClient) -> AsyncWebClient:
    """A copy of ``client`` for posts and uploads: it retries only 429s (Slack took nothing then),
    never a request whose answer was lost; the publisher looks before it posts again."""
    return AsyncWebClient(token=client.token, base_url=client.base_url, timeout=client.timeout,
                          session=client.session, headers=dict(client.headers),
                          retry_handlers=[h for h in client.retry_handlers
                                          if isinstance(h, AsyncRateLimitErrorRetryHandler)])


def _brief(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return f"{exc.response.status_code} {exc.response.get('error')}"
    return f"{type(exc).__name__}: {exc}"


__all__ = [
    "ANSWER",
    "APPROVE",
    "P4_OVERRIDE",
    "REJECT",
    "Rendered",
    "ThreadPublisher",
    "ThreadState",
    "answer_value",
    "desired_messages",
    "load_state",
    "parse_answer_value",
    "render_approval",
    "render_phase",
    "render_question",
    "render_root",
]
