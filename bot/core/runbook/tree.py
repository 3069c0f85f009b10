"""A runbook printed as a phase/step tree."""

from __future__ import annotations

from bot.core.runbook.model import Runbook


def tree(rb: Runbook) -> str:
    """A printable phase/step tree."""
    lines = [f"{rb.name} (version {rb.version})"]
    for phase in rb.all_phases():
        when = f"  (on {', '.join(rb.compensation.triggers)})" if rb.compensation is phase and rb.compensation else ""
        lines.append(f"  {phase.title} [{phase.id}]" + (f"  ({phase.timeline})" if phase.timeline else "") + when)
        for step in phase.steps:
            flags = []
            if step.has_side_effect:
                flags.append("idempotent" if step.idempotent else "NOT idempotent")
            if step.destructive:
                flags.append("destructive")
            if step.when:
                flags.append(f"when {step.when}")
            if step.undoes:
                flags.append(f"undoes {', '.join(step.undoes)}")
            if step.unless_done:
                flags.append(f"unless done: {', '.join(step.unless_done)}")
            extra = f"  [{', '.join(flags)}]" if flags else ""
            kind = getattr(step, "kind", "?")
            lines.append(f"    - {step.id}: {kind} — {step.title}{extra}")
    return "\n".join(lines)
