"""Approvals bound to the rendered plan.

When an approval is asked, the plan is rendered for the incident (its id, severity and
inputs known; captures and choices still to come) and its hash, summary and per-step
digests go into what the approval step waits for. Each click records the hash it
approved. Before the run starts the plan is rendered again: a different hash (a changed
runbook or target setting) voids the approvals and says what changed.

After a person's choice, the confirm dialog of each destructive step that follows shows
that step rendered with the chosen value (``confirm_previews``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from bot.core.approvals import ApprovalPolicy
from bot.core.runbook import Runbook
from bot.core.targets import TargetSettings
from bot.plan.render import Plan, PlannedStep, build_plan, plan_context, plan_step
from bot.plan.text import summary_lines

#: Slack's limit on a confirm dialog's text.
CONFIRM_LIMIT = 300


def binding_plan(runbook: Runbook, settings: TargetSettings, incident: Mapping[str, Any],
                 inputs: Mapping[str, Any], *, policies: Mapping[str, ApprovalPolicy],
                 redact: Callable[[str], str]) -> Plan:
    """The plan approvers approve: what the incident will run, before any capture or choice."""
    ctx = plan_context(settings, incident=incident, inputs=inputs)
    return build_plan(runbook, settings, runbook_text=runbook.source_text, ctx=ctx, policies=policies,
                      redact=redact)


def binding_fields(plan: Plan, plan_file: str) -> dict[str, Any]:
    """What the approval step keeps of the plan: hash, summary, file, and digests to tell changes."""
    return {"plan_hash": plan.hash, "plan_summary": summary_lines(plan), "plan_file": plan_file,
            "plan_digests": {"runbook_sha256": plan.runbook_sha256, "steps": plan.step_digests(),
                             "settings": plan.settings}}


def describe_change(old: Mapping[str, Any], plan: Plan) -> list[str]:
    """What differs between the plan an approval was asked for and ``plan``, in a few words."""
    digests = old.get("plan_digests") or {}
    out: list[str] = []
    if digests.get("runbook_sha256") != plan.runbook_sha256:
        out.append(f"the runbook file changed (sha256 {str(digests.get('runbook_sha256'))[:12]} → "
                   f"{plan.runbook_sha256[:12]})")
    before, after = digests.get("settings") or {}, plan.settings
    settings = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if settings:
        out.append("target settings changed: " + ", ".join(settings))
    steps_before, steps_after = digests.get("steps") or {}, plan.step_digests()
    changed = [k for k in steps_after if k in steps_before and steps_before[k] != steps_after[k]]
    added = [k for k in steps_after if k not in steps_before]
    removed = [k for k in steps_before if k not in steps_after]
    for words, ids in (("steps rendered differently", changed), ("steps added", added), ("steps removed", removed)):
        if ids:
            out.append(f"{words}: " + ", ".join(ids[:12]) + (f" and {len(ids) - 12} more" if len(ids) > 12 else ""))
    return out or ["the rendered plan changed"]


def one_line(step: PlannedStep) -> str:
    """A step's command, operation or request on one line (for a confirm dialog)."""
    d = step.detail
    if step.kind == "command":
        return str(d.get("command", "")).strip()
    if step.kind == "sqlite":
        params = json.dumps(d.get("params", {}), ensure_ascii=False, separators=(",", ":"), default=str)
        return f"sqlite {d.get('op')} {params}"
    if step.kind == "http":
        return f"{d.get('method')} {d.get('url')}"
    return json.dumps(d, ensure_ascii=False, default=str)


def confirm_previews(runbook: Runbook, settings: TargetSettings, ctx: Mapping[str, Any], step_id: str,
                     values: list[str | None], *, redact: Callable[[str], str], including: bool = False) -> list[str]:
    """For each value a choice offers (None: not known yet), the destructive steps that follow,
    rendered with that value ('' when none would run); ``including``: the step itself (a retry)."""
    later: list[tuple[Any, Any]] = []
    seen = False
    for phase, step in runbook.steps():
        if including and step.id == step_id:
            later = [(phase, step)]
            break
        if seen and step.destructive:
            later.append((phase, step))
        seen = seen or step.id == step_id
    out = []
    for value in values:
        choices = dict(ctx.get("choices") or {})
        if value is not None:
            choices[step_id] = value
        else:
            choices.pop(step_id, None)
        pctx = plan_context(settings, incident=ctx.get("incident"), inputs=ctx.get("inputs"),
                            captures=ctx.get("captures"), choices=choices)
        parts = []
        for phase, step in later:
            planned = plan_step(phase, step, pctx, settings, redact=redact)
            if planned.state != "skipped":
                parts.append(f"{planned.title}: {one_line(planned)}")
        out.append("\n".join(parts))
    return out
