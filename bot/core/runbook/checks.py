"""What a runbook may reference and where: target settings, captures and choices of earlier
steps, and the rules of the compensation's steps."""

from __future__ import annotations

from bot.core.runbook.base import StepBase
from bot.core.runbook.model import NOT_IN_COMPENSATION, Runbook
from bot.core.runbook.steps import ChoiceStep, StabilityStep
from bot.core.templating import ROOTS, Ref

#: Target settings a runbook may reference as ``{{ target.NAME }}``.
TARGET_FIELDS = frozenset(
    {
        "name", "workdir", "app_name", "db_path", "databases_dir", "env_file", "health_url",
        "export_url", "import_url", "pm_start", "pm_stop", "pm_restart", "pm_status",
        "python", "backup_pattern", "maintenance_message", "app_rollback_command",
        "previous_version", "smoke_test_command", "export_user",
        # the application rollback (Phase 4): command variant or GitHub Actions
        "app_rollback", "github_repo", "github_workflow", "github_api_url", "github_token_env",
        "release_tag_pattern", "deployed_version", "deploy_environment",
        # the schema contract (bot/core/change_log.py), in the agent's param shapes
        "change_log", "boundary", "key_columns",
    }
)


STATEMENT = "\0statement"
FROM_PHASE = "\0from_phase"


def _bad_ref(ref: Ref, captures: dict[str, set[str]], choices: set[str]) -> str | None:
    """Why a reference names nothing an earlier step or the settings provide; None when fine."""
    parts = ref.parts
    root = parts[0]
    if root not in ROOTS:
        return f"unknown root {root!r} (one of {', '.join(ROOTS)})"
    if ref.raw and root != "target":
        return "'| raw' is only allowed on target settings"
    if root == "target" and (len(parts) != 2 or parts[1] not in TARGET_FIELDS):
        return "not a target setting"
    if root == "captures":
        if len(parts) < 3 or parts[1] not in captures:
            return "no earlier step captures it"
        if parts[2] not in captures[parts[1]]:
            return f"step {parts[1]!r} captures no {parts[2]!r}"
    if root == "choices" and (len(parts) != 2 or parts[1] not in choices):
        return "no earlier choice step has this id"
    return None


def check_refs(rb: Runbook, where: dict[str, int]) -> list[tuple[int, str]]:
    """References must name target settings, or captures/choices of earlier steps; the
    compensation comes after every phase and may read any of their steps."""
    problems: list[tuple[int, str]] = []
    captures: dict[str, set[str]] = {}
    choices: set[str] = set()
    seen: set[str] = set()
    phase_ids = [p.id for p in rb.phases]
    for phase in rb.phases:
        if phase.shown_before is not None and phase.shown_before not in phase_ids:
            problems.append((where.get(phase.steps[0].id, 0),
                             f"phase {phase.id!r}: shown_before names no phase ({phase.shown_before!r})"))
    main = {s.id for _, s in rb.steps()}
    comp_ids = {s.id for s in rb.compensation.steps} if rb.compensation else set()
    for phase in rb.all_phases():
        in_comp = phase is rb.compensation
        label = "compensation step" if in_comp else "step"
        for step in phase.steps:
            line = where.get(step.id, 0)
            if step.id in seen:
                problems.append((line, f"{label} {step.id!r}: duplicate step id"))
            seen.add(step.id)
            refs_here = list(step.template_refs())
            cond = step.condition
            if cond:
                refs_here.append(Ref(cond.ref, False))
            for ref in refs_here:
                bad = _bad_ref(ref, captures, choices)
                if bad:
                    problems.append((line, f"{label} {step.id!r}: bad reference {ref.path!r}: {bad}"))
            if isinstance(step, StabilityStep) and step.maintenance_step and step.maintenance_step not in seen:
                problems.append((line, f"step {step.id!r}: maintenance_step {step.maintenance_step!r} "
                                       "is not an earlier step"))
            problems += [(line, msg) for msg in _compensation_rules(step, in_comp, main, comp_ids)]
            captures[step.id] = set(step.captures) | set(getattr(step, "produces", ()))
            if isinstance(step, ChoiceStep):
                choices.add(step.id)
    if rb.compensation is not None:
        phase_ids = [p.id for p in rb.phases]
        if rb.compensation.from_phase is not None and rb.compensation.from_phase not in phase_ids:
            problems.append((where.get(FROM_PHASE, 0), f"compensation: from_phase {rb.compensation.from_phase!r} "
                                                        f"is no phase of the runbook (one of {', '.join(phase_ids)})"))
        for ref in rb.compensation.statement_refs():
            bad = _bad_ref(ref, captures, choices)
            if bad is None and ref.parts[0] not in ("captures", "choices", "incident"):
                bad = "the statement reads captures, choices and incident only"
            if bad:
                problems.append((where.get(STATEMENT, 0),
                                 f"compensation statement: bad reference {ref.path!r}: {bad}"))
    return problems


def _compensation_rules(step: StepBase, in_comp: bool, main: set[str], comp_ids: set[str]) -> list[str]:
    """What a step of the compensation may not do, and ``undoes`` outside it."""
    kind = getattr(step, "kind", "?")
    if not in_comp:
        return [f"step {step.id!r}: {name!r} is only for steps of the compensation"
                for name, used in (("undoes", step.undoes), ("unless_done", step.unless_done)) if used]
    out = []
    if kind in NOT_IN_COMPENSATION:
        out.append(f"compensation step {step.id!r}: kind {kind!r} cannot run in the compensation "
                   "(it runs to its end without gates or scheduled waits)")
    if step.on_failure == "stop":
        out.append(f"compensation step {step.id!r}: on_failure 'stop' would end the incident half undone; "
                   "use 'ask' (Retry / Skip) or 'continue'")
    for field_name, names in (("undoes", step.undoes), ("unless_done", step.unless_done)):
        for name in names:
            if name in comp_ids:
                out.append(f"compensation step {step.id!r}: {field_name} {name!r}, a step of the compensation itself")
            elif name not in main:
                out.append(f"compensation step {step.id!r}: {field_name} {name!r}, which is no step of the phases")
    return out

