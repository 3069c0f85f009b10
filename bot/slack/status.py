"""Where the incident stands: the root message in the channel, a checklist per phase reached,
and the milestones broadcast from the thread to the channel."""

from __future__ import annotations

import datetime as dt

from slack_sdk.models.blocks import Block, ContextBlock, HeaderBlock, MarkdownTextObject, SectionBlock

from bot.core.lifecycle import Status
from bot.record.viewmodel import SYMBOLS, PhaseView, short
from bot.slack.view import STATUS_ICONS, STATUS_WORDS, Rendered, clip, duration_text, esc, sections, when
from bot.state.store import Incident


def render_root(inc: Incident) -> Rendered:
    """The channel message of an incident: id, target, severity, decision, requester, reason."""
    inputs = inc.inputs or {}
    icon = STATUS_ICONS.get(inc.status, "")
    what = "REHEARSAL of the rollback of" if inputs.get("rehearsal") else "rollback of"
    title = clip(f"{icon} {inc.id} · {what} {inc.target}", 150)
    lines = [
        f"*Rehearsal* on the staging target `{esc(inc.target)}`: real approvals and choices, nothing in production"
    ] if inputs.get("rehearsal") else []
    lines += [
        f"*Severity:* {inc.severity or '—'}   *Decision:* {inc.decision or '—'}",
        f"*Why this decision:* {esc(str(inputs.get('explanation', '—')))}",
        f"*Requested by:* <@{inc.requester}>" if inc.requester else "*Requested by:* —",
        f"*Reason:* {esc(inc.reason) or '—'}",
    ]
    triggers = inputs.get("trigger_labels") or inputs.get("triggers") or []
    if triggers:
        lines.append("*Trigger conditions:* " + esc(", ".join(str(t) for t in triggers)))
    if inputs.get("impact") or inputs.get("business_risk"):
        lines.append(f"*Impact:* {inputs.get('impact', '—')}   *Business risk:* {inputs.get('business_risk', '—')}")
    if inputs.get("override"):
        lines.append(f"*P4 overridden by* <@{inputs['override']['by']}>: {esc(inputs['override']['reason'])}")
    if inputs.get("description"):
        lines.append("*Description:* " + esc(str(inputs["description"])))
    if isinstance(inputs.get("last_tested"), dict):
        lines.append(f"*{esc(str(inputs['last_tested'].get('text', '')))}*")
    if inputs.get("deadline"):
        lines.append(f"*Deadline:* {when(dt.datetime.fromisoformat(inputs['deadline']))} (P2: within 2 hours)")
    if isinstance(inputs.get("window"), dict):
        lines.append(f"*Scheduled:* maintenance window {esc(str(inputs['window'].get('label', '')))}")
    status = f"*Status:* {STATUS_WORDS.get(inc.status, inc.status.value)}"
    if inc.status is Status.CLOSED:
        status += " — P4: recorded, no rollback needed"
    if inc.abort_reason and inc.status is Status.ABORTED:
        status += f" — {esc(inc.abort_reason)}"
    lines.append(status)
    blocks: list[Block] = [HeaderBlock(text=title)]
    blocks += sections(lines)
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text="Everything else happens in this thread.")]))
    text = f"{inc.id}: {what} {inc.target} — {inc.severity or ''} {inc.decision or ''} — {inc.status.value}"
    return Rendered("root", clip(text, 3000), blocks, in_channel=True)


def render_phase(phase: PhaseView, timeline: str = "") -> Rendered:
    """A phase as a checklist: a line per step with status, duration and key facts."""
    dur = f" · {duration_text(phase.duration)}" if phase.duration else ""
    head = f"{SYMBOLS.get(phase.status, '?')} *{esc(phase.title)}* — {phase.status}{dur}"
    lines = [head]
    for s in phase.steps:
        line = f"{SYMBOLS.get(s.status, '?')} {esc(s.title)}"
        if s.duration is not None:
            line += f" ({duration_text(s.duration)})"
        if s.attempt > 1:
            line += f" · attempt {s.attempt}"
        facts = "; ".join(f"{k}: `{esc(short(v, 64))}`" for k, v in list(s.facts.items())[:4])
        if facts:
            line += f" — {facts}"
        if s.status in ("failed", "interrupted") and s.error:
            line += f" — _{esc(short(s.error, 120))}_"
        elif s.status == "skipped" and s.note:
            line += f" — {esc(short(s.note, 120))}"
        lines.append(line)
    blocks = sections(lines)
    context = [f"Plan timeline: {esc(timeline)}"] if timeline else []
    if phase.note:  # a phase the runbook runs later than the written plan puts it
        context.append(esc(phase.note[:1].upper() + phase.note[1:]))
    if context:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=clip(" · ".join(context), 2900))]))
    return Rendered(f"phase:{phase.id}", clip(f"{phase.title}: {phase.status}", 3000), blocks)


def render_milestone(key: str, text: str) -> Rendered:
    """A line broadcast to the channel from the thread."""
    return Rendered(key, clip(text, 3000), [SectionBlock(text=MarkdownTextObject(text=clip(text)))],
                    broadcast=True)
