"""The rendered plan as people read it: Markdown, and the short summary of an approval."""

from __future__ import annotations

import json
from typing import Any

from bot.plan.render import Plan, PlannedStep

_FENCE = "````"


def _fenced(text: str, lang: str = "") -> list[str]:
    return [f"{_FENCE}{lang}", text.rstrip("\n"), _FENCE]


def _flags(s: PlannedStep) -> str:
    flags = [s.kind]
    if s.side_effect:
        flags.append("idempotent" if s.idempotent else "NOT idempotent")
    if s.destructive:
        flags.append("DESTRUCTIVE")
    if s.kind in ("command", "sqlite", "http", "github_workflow"):
        flags.append(f"timeout {s.timeout:g}s")
    return " · ".join(flags)


def _state_line(s: PlannedStep) -> str | None:
    if s.state == "branch":
        return f"_Branch: runs only when `{s.when}` (decided during the run)._"
    if s.state == "compensation":
        return "_Compensation: runs only when the run stops half-way (abort or failure)" + (
            f", when `{s.when}`" if s.when else "") + "._"
    if s.state == "skipped":
        return f"_Skipped: `{s.when}` does not hold for the given values._"
    if s.when:
        return f"_Runs: `{s.when}` holds._"
    return None


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def step_body(s: PlannedStep) -> list[str]:
    """The lines that say exactly what a step does (command, operation, request, choice)."""
    d = s.detail
    out: list[str] = []
    if "error" in d:
        return [f"**Cannot render:** {d['error']}"]
    if "skipped" in d:
        return []
    if s.kind == "command":
        out += _fenced(d["command"], "sh")
        out.append("Sent to the target as:")
        out += _fenced(d["sent"], "sh")
        if d.get("hosts"):
            out.append("On every host of the group: " + ", ".join(d["hosts"]))
    elif s.kind == "sqlite":
        out.append(f"SQLite operation `{d['op']}` with bound parameters:")
        out += _fenced(_json(d["params"]), "json")
        out.append("Sent to the target as:")
        out += _fenced(d["sent"], "sh")
    elif s.kind == "http":
        out.append(f"`{d['method']} {d['url']}` expecting {d['expect_status']}")
        if d.get("headers"):
            out.append("Headers: " + ", ".join(f"`{k}: {v}`" for k, v in d["headers"].items()))
        if d.get("json") is not None:
            out += _fenced(_json(d["json"]), "json")
    elif s.kind == "choice":
        out.append(f"Asks: {d['prompt']}")
        out += [f"- `{o['value']}`: {o['label']}" for o in d.get("options", [])]
        src = d.get("options_from")
        if src:
            where = f" in {src['repo']}" if src.get("repo") else ""
            out.append(f"Options listed during the run by `{src['op']}`{where} with `{_json(src['params'])}` "
                       f"(value: `{src['value']}`, label: `{src['label']}`)")
        out += [f"- listed now: `{o['value']}` {o.get('description', '')}".rstrip() for o in d.get("listed", [])]
        if d.get("default"):
            out.append(f"Suggested: `{d['default']}`")
        if d.get("chosen"):
            out.append(f"**Chosen: `{d['chosen']}`**")
    elif s.kind == "approval":
        out.append("Needs: " + "; or ".join(
            f"{p['name']}: " + " and ".join("one of " + "/".join(g) for g in p["groups"]) for p in d["paths"]))
    elif s.kind == "manual":
        out.append("A person confirms it (holds the run)." if d["blocking"]
                   else "Noted on the checklist (does not hold the run).")
        out += [f"- [ ] {item}" for item in d.get("checklist", [])]
    elif d:
        out += _fenced(_json(d), "json")
    return out


def markdown(plan: Plan) -> str:
    """The whole plan in Markdown, with its hash at the top."""
    lines = [f"# Rollback plan: {plan.runbook_name} {plan.runbook_version} on `{plan.target}`", "",
             f"Plan hash: `{plan.hash}`",
             f"Runbook sha256: `{plan.runbook_sha256}` · target settings sha256: `{plan.target_sha256}`", ""]
    if plan.choices:
        lines.append("Given: " + ", ".join(f"`{k}` = `{v}`" for k, v in sorted(plan.choices.items())))
    lines.append("Values in `<…>` are known only during the run (captures of earlier steps, the incident's "
                 "id, choices not made yet). Secrets are shown as [REDACTED].")
    for pid, title, timeline in plan.phases:
        lines += ["", f"## {title}" + (f" ({timeline})" if timeline else "")]
        for n, s in enumerate((s for s in plan.steps if s.phase_id == pid), 1):
            lines += ["", f"### {n}. `{s.step_id}`: {s.title}", f"[{_flags(s)}]"]
            state = _state_line(s)
            if state:
                lines.append(state)
            lines += step_body(s)
    return "\n".join(lines) + "\n"


def summary_lines(plan: Plan) -> list[str]:
    """The approval message's short summary: target, phases, destructive steps, hash."""
    count = len([s for s in plan.steps if s.state in ("runs", "branch")])
    lines = [f"*Plan* for `{plan.target}`: {count} steps in "
             f"{len(plan.phases)} phases — " + ", ".join(t for _, t, _ in plan.phases)]
    destructive = plan.destructive
    if destructive:
        lines.append("*Destructive steps:* " + "; ".join(
            s.title + (f" (when `{s.when}`)" if s.state == "branch" else "") for s in destructive))
    lines.append(f"*Plan hash:* `{plan.hash[:16]}` (the whole plan is in the file below)")
    return lines
