"""Thread messages of the clock: the stability series, the P3 schedule, reminders, escalations,
the Phase 7 checklist. Rendered from the store like every other thread message.

- A stability series is ONE message, edited at each check: a line per check, the latency
  sparkline and, at the end, availability, error rate and p50/p95 latency. The extended
  watch (mode ``watch``) shows nothing until it ends (a closing line) or a check fails.
- Reminders and escalations are new posts (a mention in an edit does not notify).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.clock.stability import SeriesPlan, check_line, figures_line, sparkline
from bot.core.lifecycle import FINAL, StepStatus
from bot.core.runbook import Runbook, StabilityStep
from bot.slack.view import Rendered, ThreadState, clip, esc, sections
from bot.state.store import StabilityCheck, StepRun

CLOCK_CANCEL = "rb_clock_cancel"   # value: incident id
CLOCK_DONE = "rb_clock_done"       # value: incident id|item id
CLOCK_ACTIONS = "rb_clock_"

#: Waiting kinds rendered here rather than as questions.
OWN_KINDS = ("stability", "window")


def _utc(text: str | None) -> str:
    if not text:
        return "—"
    t = dt.datetime.fromisoformat(text)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_series(run: StepRun, checks: list[StabilityCheck], *, title: str) -> Rendered | None:
    """The one message of a stability series; None for an extended watch still quietly running."""
    w = run.waiting or {}
    plan_data = w.get("plan")
    if not plan_data:
        return None
    plan = SeriesPlan.from_dict(plan_data)
    failed = run.status is StepStatus.FAILED or w.get("kind") == "stability_failed"
    done = run.status is StepStatus.DONE
    if plan.mode == "watch" and not (done or failed):
        return None
    if failed and not checks:
        return None  # the hold repeated after maintenance mode was re-enabled: no series of its own
    ran = [c for c in checks if c.outcome != "missed"]
    icon = "⛔" if failed else ("✅" if done else ("⏹️" if run.status is StepStatus.SKIPPED else "📈"))
    limit = f"latency limit {plan.latency_limit_ms:.0f} ms"
    if plan.baseline_ms:
        limit += f" (baseline {plan.baseline_ms:.0f} ms)"
    head = f"{icon} *{esc(title)}* — {len(checks)}/{plan.checks} checks · {limit}"
    lines = [head]
    if plan.mode == "watch" and done:
        lines.append(f"Extended watch closed: {len(ran)} checks without a failure over the watch.")
    body = "\n".join(check_line(c, plan.checks) for c in checks[-40:])
    blocks: list[Block] = sections(lines)
    if body:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=clip(f"```{esc(body)}```"))))
    spark = sparkline([c.latency_ms for c in checks])
    figures = run.captures if done else w.get("figures") or {}
    context = []
    if spark:
        context.append(f"latency {spark}")
    if figures:
        context.append(figures_line(figures))
    elif ran:
        ok = sum(1 for c in ran if c.outcome == "ok")
        context.append(f"{ok}/{len(ran)} ok so far")
    if failed:
        context.append("the next phase is held")
    elif run.status is StepStatus.SKIPPED:
        context.append("stopped: the rollback was stopped before the series ended")
    if context:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=clip(" · ".join(context), 2900))]))
    text = clip(f"{title}: {len(checks)}/{plan.checks} checks" + (" — failed" if failed else ""), 3000)
    return Rendered(f"stability:{run.id}", text, blocks)


def series_messages(state: ThreadState, runbook: Runbook, phase_id: str) -> list[tuple[int, Rendered]]:
    """(run id, message) of each series of one phase, oldest series first."""
    out = []
    checks: dict[int, list[StabilityCheck]] = {}
    for c in state.checks:
        checks.setdefault(c.run_id, []).append(c)
    for run in state.runs:
        if run.phase_id != phase_id or not (run.waiting or {}).get("plan"):
            continue
        step = runbook.step(run.step_id)
        if not isinstance(step, StabilityStep):
            continue
        msg = render_series(run, checks.get(run.id, []), title=step.title)
        if msg is not None:
            out.append((run.id, msg))
    return out


def _button(text: str, action_id: str, value: str, *, confirm: str | None = None) -> ButtonElement:
    conf = ConfirmObject(title="Are you sure?", text=confirm, confirm="Yes", deny="No") if confirm else None
    return ButtonElement(text=text, action_id=action_id, value=value, confirm=conf)


def clock_messages(state: ThreadState) -> list[Rendered]:
    """Reminders, escalations, expiry and the Phase 7 checklist, after everything else."""
    out: list[Rendered] = []
    for e in state.events:
        msg = _event_message(e.id, e.kind, e.actor, e.data)
        if msg is not None:
            out.append(msg)
    phase7 = _phase7_message(state)
    if phase7 is not None:
        out.append(phase7)
    return out


def schedule_messages(state: ThreadState) -> list[Rendered]:
    """The P3 schedule (posted when the incident opens, right after the root message)."""
    inc = state.incident
    out: list[Rendered] = []
    window = (inc.inputs or {}).get("window")
    if window:
        latest = {r.step_id: r for r in state.runs}
        win_run = next((r for r in latest.values() if (r.waiting or {}).get("kind") == "window"), None)
        cancelled = any(e.kind == "p3_cancelled" for e in state.events)
        started = win_run is not None and win_run.status is StepStatus.DONE
        lines = [f"🗓️ *Scheduled into the next maintenance window:* {esc(window.get('label', ''))}",
                 f"Window: {_utc(window.get('start'))} – {_utc(window.get('end'))} "
                 f"(`{esc(window.get('cron', ''))}` {esc(window.get('timezone', ''))})"]
        if cancelled:
            who = next(e.actor for e in state.events if e.kind == "p3_cancelled")
            lines.append(f"🛑 Cancelled by <@{who}>.")
        elif started:
            lines.append("▶️ The window opened: the rollback started.")
        elif inc.status not in FINAL:
            lines.append("Approvals are collected before it starts; an approver may cancel it.")
        blocks = sections(lines)
        if not (cancelled or started) and inc.status not in FINAL:
            blocks.append(ActionsBlock(block_id=f"clock|{inc.id}", elements=[_button(
                "Cancel the scheduled rollback", CLOCK_CANCEL, inc.id,
                confirm="The rollback will not run in this window; the incident ends as cancelled.")]))
        out.append(Rendered("clock:p3", clip(f"{inc.id}: scheduled for {window.get('label', '')}", 3000), blocks))
    return out


def _event_message(event_id: int, kind: str, actor: str | None, data: dict[str, Any]) -> Rendered | None:
    key = f"clock:event:{event_id}"
    if kind == "clock_reminder" and data.get("kind") == "p2":
        left = float(data.get("minutes_left") or 0)
        when = f"in {left:g} min" if left > 0 else "now — the deadline passed"
        text = (f"⏰ *P2 deadline {when}* ({_utc(data.get('deadline'))}). "
                f"Waiting for {esc(str(data.get('waiting_on', '')))}")
        return Rendered(key, clip(text, 3000), sections([text]))
    if kind == "clock_reminder" and data.get("kind") == "phase7":
        items = ", ".join(esc(str(i)) for i in data.get("open", []))
        text = f"📋 *Phase 7 reminder:* still open — {items} (due {_utc(data.get('due'))})."
        return Rendered(key, clip(text, 3000), sections([text]))
    if kind == "approval_escalated":
        who = data.get("mention") or ", ".join(data.get("roles", []))
        text = (f"⏫ *Approvals unanswered* (escalation {data.get('level')}): {who} — still needed: "
                f"{esc(str(data.get('missing', '')))}")
        return Rendered(key, clip(text, 3000), sections([text]))
    if kind == "approvals_expired":
        text = (f"⌛ *Approvals expired* with the decision window; still needed were: "
                f"{esc(str(data.get('missing', '')))}. The incident ends here.")
        return Rendered(key, clip(text, 3000), sections([text]))
    return None


def _phase7_message(state: ThreadState) -> Rendered | None:
    opened = next((e for e in state.events if e.kind == "phase7_opened"), None)
    if opened is None:
        return None
    done = {e.data.get("item"): e for e in state.events if e.kind == "phase7_done"}
    lines = [f"📋 *Phase 7: Post-Rollback Analysis* — due {_utc(opened.data.get('due'))}"]
    buttons: list[ButtonElement] = []
    for item in opened.data.get("items", []):
        ev = done.get(item["id"])
        if ev is not None:
            lines.append(f"✓ {esc(item['title'])} — done by <@{ev.actor}> at {ev.at:%Y-%m-%d %H:%M} UTC")
        else:
            lines.append(f"○ {esc(item['title'])}")
            buttons.append(_button(clip(f"Done: {item['title']}", 75), f"{CLOCK_DONE}_{len(buttons)}",
                                   f"{state.incident.id}|{item['id']}"))
    blocks = sections(lines)
    if buttons:
        blocks.append(ActionsBlock(block_id=f"phase7|{state.incident.id}", elements=buttons[:5]))
    else:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text="Every Phase 7 item is done.")]))
    return Rendered("clock:phase7", clip(f"{state.incident.id}: Phase 7 items", 3000), blocks)
