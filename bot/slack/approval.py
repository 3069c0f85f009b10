"""The approval request (the plan's summary and hash, who is still needed, every click, the
buttons while open) and the rendered plan posted beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slack_sdk.models.blocks import ActionsBlock, ButtonElement

from bot.core.approvals import ApprovalPolicy, Vote, describe_missing, evaluate
from bot.core.lifecycle import FINAL, Status
from bot.slack.view import APPROVE, REJECT, Rendered, clip, esc, sections, when
from bot.state.store import Approval, Incident, StepRun


def render_approval(inc: Incident, step_status: str, clicks: list[Approval], policy: ApprovalPolicy,
                    *, title: str, plan: dict[str, Any] | None = None) -> Rendered:
    """The approval request: the plan's summary and hash, who is still needed, every click,
    Approve / Reject while open."""
    counted = [a for a in clicks if a.counted and a.decision == "approve"]
    state = evaluate(policy, [Vote(a.user_id, frozenset(a.roles)) for a in counted], requester=inc.requester)
    lines = [f"*{esc(title)}*"]
    plan = plan or {}
    lines += [esc(str(line)) for line in plan.get("plan_summary") or []]
    if plan.get("changed"):
        lines.append(f"⚠️ *The plan changed before the run started:* {esc('; '.join(plan['changed']))}. "
                     f"{plan.get('voided', 0)} approval(s) void; approve the new plan (hash "
                     f"`{str(plan.get('plan_hash'))[:16]}`).")
    if step_status == "done":
        who = ", ".join(f"<@{a.user_id}>" for a in counted)
        lines.append(f"✅ *Approved* ({state.path or 'policy met'}) by {who}")
    elif step_status == "failed" or inc.status is Status.REJECTED:
        rej = next((a for a in clicks if a.counted and a.decision == "reject"), None)
        why = f": {esc(rej.note)}" if rej and rej.note else ""
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
        note = "counted" if a.counted else f"not counted: {esc(a.note)}"
        extra = f" — “{esc(a.note)}”" if a.counted and a.note else ""
        plan_of = f" · plan `{a.plan_hash[:16]}`" if a.plan_hash else ""
        click_lines.append(f"{mark} <@{a.user_id}> ({roles}) {a.decision} at {when(a.at)}{plan_of} — {note}{extra}")
    blocks = sections(lines)
    if click_lines:
        # Keep the newest clicks when there are too many to show.
        blocks += sections(["*Clicks:*", *click_lines[-40:]])
    if step_status == "waiting" and inc.status not in FINAL:
        blocks.append(ActionsBlock(block_id=f"approval|{inc.id}", elements=[
            ButtonElement(text="Approve", action_id=APPROVE, value=inc.id, style="primary"),
            ButtonElement(text="Reject", action_id=REJECT, value=inc.id, style="danger"),
        ]))
    text = f"{inc.id}: approval — " + ("approved" if step_status == "done" else "still needed: "
                                        + describe_missing(state))
    return Rendered("approval", clip(text, 3000), blocks)


def plan_posts(inc: Incident, runs: list[StepRun]) -> list[Rendered]:
    """Each rendered plan approval was asked for, as a file, and a notice when it changed."""
    out: list[Rendered] = []
    files: set[str] = set()
    for r in runs:
        w = r.waiting or {}
        if w.get("changed"):
            out.append(Rendered(f"plan_changed:{r.id}", f"{inc.id}: the plan changed; approval is asked again",
                                sections([f"⚠️ *{inc.id}: the plan changed before the run started* — "
                                           + esc("; ".join(w["changed"])) + f". {w.get('voided', 0)} approval(s)"
                                           " are void; approval is asked again above (plan hash "
                                           f"`{str(w.get('plan_hash'))[:16]}`)."])))
        path = w.get("plan_file")
        if path and path not in files:
            files.add(path)
            out.append(Rendered(f"file:plan:{str(w.get('plan_hash'))[:16]}",
                                f"{inc.id}: the rendered plan (hash {w.get('plan_hash')})", file=Path(path)))
    return out
