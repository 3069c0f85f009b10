"""A question the incident asks in the thread: a choice, a manual item, a failure, a resume;
buttons (or a select menu) while it is open, with a confirmation before destructive steps."""

from __future__ import annotations

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    MarkdownTextObject,
    Option,
    SectionBlock,
    StaticSelectElement,
)

from bot.core.lifecycle import FINAL, Status
from bot.record.viewmodel import short
from bot.slack.view import ANSWER, Rendered, answer_value, clip, esc, sections, when
from bot.state.store import Incident, StepRun

BUTTONS_MAX = 5          # more options than this become a select menu
TAIL_LINES = 15


def _confirm(destructive: list[str], preview: str | None = None) -> ConfirmObject | None:
    """The confirm dialog before a destructive step: the step rendered with the chosen value
    when known, else the steps' titles (a confirm's text holds 300 characters)."""
    if preview:
        return ConfirmObject(title="Destructive step", text=clip("This runs: " + esc(preview), 300),
                             confirm="Yes, go on", deny="Cancel")
    if not destructive:
        return None
    text = "This goes on to destructive steps: " + "; ".join(destructive)
    return ConfirmObject(title="Destructive step", text=clip(text, 300), confirm="Yes, go on", deny="Cancel")


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
    lines = [f"{icon} *{esc(prompt)}*"]
    if kind == "choice" and guidance:
        lines.append(esc(guidance))
    if kind == "choice":
        for o in options[:BUTTONS_MAX] if len(options) <= BUTTONS_MAX else []:
            desc = f" — {esc(o.get('description', ''))}" if o.get("description") else ""
            lines.append(f"• *{esc(o['label'])}*{desc}")
        if w.get("default"):
            lines.append(f"_Suggested: {esc(str(w['default']))}_")
    if w.get("mention") and kind == "stability_failed":
        lines.insert(0, str(w["mention"]))  # the incident commander, notified by this new post
    if kind in ("failure", "resume", "stability_failed") and (w.get("error") or run.error):
        lines.append(f"*Error:* {esc(short(str(w.get('error') or run.error), 400))}")
    blocks = sections(lines)
    if kind == "failure" and run.output_tail.strip():
        note = " (whole output in the file below)" if uploaded else ""
        blocks.append(SectionBlock(text=MarkdownTextObject(
            text=clip(f"*Output tail*{note}:\n```{_tail(run.output_tail)}```"))))
    answer = run.answer
    if answer is not None:
        label = next((o["label"] for o in options if o["value"] == answer.get("value")), answer.get("value"))
        blocks.append(ContextBlock(elements=[MarkdownTextObject(
            text=f"Answered *{esc(str(label))}* by <@{answer.get('user')}> at {when(run.ended_at)}")]))
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
