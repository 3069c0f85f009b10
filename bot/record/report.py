"""The post-incident report, in Markdown, rendered from the store.

Timeline of every step, click and check with times (the journal, one line per event),
decision inputs, approvals, restoration method, data-loss assessment, the plan's
success-metrics table measured and marked against its targets, and the Phase 7
checklist.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.record.governance import app_rollback, backup_used, incident_commander, rollback_team
from bot.record.metrics import (
    STRATEGY_WORDS,
    Facts,
    Metric,
    data_loss,
    data_loss_detail,
    data_loss_word,
    health_checks,
    metrics_table,
    overall,
    rollback_seconds,
    rollback_window,
    strategy,
)
from bot.record.records import RecordsConfig
from bot.record.viewmodel import SYMBOLS, build, in_plan_order
from bot.slack.people import who
from bot.state.store import JournalEvent

#: The plan's Phase 7, as a checklist (root cause within 7 days).
PHASE7 = {
    "Root Cause Analysis (within 7 days)": [
        "Incident Timeline: document detailed sequence of events",
        "Root Cause Identification: determine primary cause of rollback need",
        "Contributing Factors: identify all factors that led to the incident",
        "Detection Gaps: analyze why the issue wasn't caught in UAT or monitoring",
        "Response Effectiveness: evaluate rollback execution and timing",
    ],
    "Lessons Learned": [
        "What Went Well", "What Could Be Improved", "Action Items", "Process Updates", "Team Training",
    ],
    "Phase 3 Re-Deployment Planning": [
        "Issue Resolution: fix root cause before considering re-deployment",
        "Enhanced Testing", "Phased Rollout", "Monitoring Improvements", "Rollback Readiness",
    ],
}


def stamp(at: dt.datetime | None) -> str:
    """A timeline time: UTC with milliseconds."""
    if at is None:
        return "—"
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def describe(ev: JournalEvent, titles: dict[str, str], names: Mapping[str, str] | None = None) -> str:
    """One journal event in words."""
    d = ev.data or {}
    title = titles.get(ev.step_id or "", ev.step_id or "")
    kind = ev.kind
    if kind.startswith("step_"):
        state = kind.removeprefix("step_")
        parts = [f"step {state}: {title}"]
        caps = d.get("captures")
        if state == "skipped":  # a reason in words, never an error
            reason = caps.get("skip_reason") if isinstance(caps, dict) else None
            return " · ".join([*parts, str(reason or d.get("error") or "skipped")[:200]])
        if d.get("attempt", 1) and int(d.get("attempt", 1)) > 1:
            parts.append(f"attempt {d['attempt']}")
        if isinstance(d.get("answer"), dict):
            parts.append(f"answered {d['answer'].get('value')!r}")
        elif isinstance(d.get("waiting"), dict):
            parts.append(f"asks ({d['waiting'].get('kind')})")
        if d.get("duration") is not None:
            parts.append(f"{float(d['duration']):.2f} s")
        if d.get("error"):
            parts.append(f"error: {str(d['error'])[:160]}")
        if isinstance(caps, dict):
            for k in ("status", "latency_ms", "ok", "choice", "conclusion", "html_url", "path"):
                if k in caps:
                    parts.append(f"{k} {str(caps[k])[:80]}")
        return " · ".join(parts)
    if kind in ("control_request", "control_refused"):
        what = " ".join(str(d[k]) for k in ("action", "step", "value") if d.get(k))
        tail = f" — refused: {d.get('why')}" if kind == "control_refused" else ""
        return f"from the command line ({d.get('mode')}) by {d.get('operator')}: {what}{tail}"
    if kind.startswith("approval_"):
        counted = "counted" if d.get("counted") else f"not counted ({d.get('note', '')})"
        return f"{kind.removeprefix('approval_')} click, roles {', '.join(d.get('roles', [])) or 'none'}, {counted}"
    if kind.startswith("incident_"):
        extra = f" ({d.get('from')} → {d.get('to')})" if d.get("to") else ""
        return f"incident {kind.removeprefix('incident_')}{extra}"
    return f"{kind}: " + ", ".join(f"{k} {str(v)[:80]}" for k, v in d.items())


@dataclass(frozen=True)
class ReportParts:
    """Everything the report says that a test or the thread may want on its own."""

    markdown: str
    metrics: list[Metric]
    overall: str
    timeline_events: int


def render_report(f: Facts, cfg: RecordsConfig, *, metrics: list[Metric], anchor: str,
                  archive: str, governance: dict[str, Any] | None = None,
                  audit_head: tuple[int, str] | None = None, names: Mapping[str, str] | None = None) -> ReportParts:
    """The report as Markdown; people by name (``names``: Slack id -> name), ids kept."""
    inc = f.incident
    inputs = inc.inputs or {}
    names = names or {}

    def person(uid: str | None) -> str:
        return who(uid, names)

    titles = {s.id: s.title for _, s in f.runbook.steps()}
    completed = not any(r.status.value == "failed" and r.waiting is None and
                        f.runbook.step(r.step_id).on_failure == "stop" for r in f.runs if r.step_id in titles)
    status_word = overall(metrics, completed)
    start, end = rollback_window(f)
    out: list[str] = [f"# Post-incident report: {inc.id} — rollback of {inc.target}", ""]
    out += [
        f"- **Overall rollback status:** {status_word}",
        f"- **Severity / decision:** {inc.severity or '—'} / {inc.decision or '—'}",
        f"- **Environment:** {inputs.get('environment') or cfg.environment}",
        f"- **Requested by:** {person(inc.requester)} at {stamp(inc.created_at)}",
        "- **Incident commander:** "
        + (person(commander) if (commander := incident_commander(f)) else "— (nobody acted as incident commander)"),
        f"- **Rollback team:** {', '.join(person(p) for p in rollback_team(f)) or '—'}",
        f"- **Rollback reason:** {_cell(inc.reason) or '—'}",
        "- **Recovery time (start of the run to service restored):** "
        + (f"{secs:.1f} s" if (secs := rollback_seconds(f)) is not None else "service not restored"),
        f"- **Rollback window:** {stamp(start)} → {stamp(end) if end else 'not restored'}",
        f"- **{_cell((inputs.get('last_tested') or {}).get('text') or 'Last tested: not recorded')}**",
        f"- **MemoryPlugin anchor:** `{anchor}`",
        f"- **Evidence archive:** `{archive}`",
    ]
    if governance:
        out.append(f"- **Governance log reference:** governance_logs id {governance.get('row_id')} on the target; "
                   f"local audit line {governance.get('chain_seq')}")
    if audit_head:
        out.append(f"- **Audit chain head:** line {audit_head[0]}, sha256 `{audit_head[1]}`")
    approved = f.capture("approval", "plan_hash")
    if approved:
        out.append(f"- **Approved plan hash:** `{approved}`")
    out += ["", "## Decision inputs", ""]
    triggers = inputs.get("trigger_labels") or inputs.get("triggers") or []
    out += [
        f"- **Trigger conditions:** {_cell(', '.join(str(t) for t in triggers)) or '—'}",
        f"- **Severity:** {inc.severity or '—'}; **Impact:** {inputs.get('impact', '—')}; "
        f"**Business risk:** {inputs.get('business_risk', '—')}",
        f"- **Decision:** {inc.decision or '—'} — {_cell(inputs.get('explanation', ''))}",
        f"- **Description:** {_cell(inputs.get('description', '')) or '—'}",
    ]
    if inputs.get("override"):
        out.append(f"- **P4 override** by {person(inputs['override'].get('by'))}: "
                   f"{_cell(inputs['override'].get('reason'))}")
    out += ["", "## Approvals", "", "| Time | User | Roles | Decision | Counted | Note |",
            "|------|------|-------|----------|---------|------|"]
    for a in f.approvals:
        out.append(f"| {stamp(a.at)} | {_cell(person(a.user_id))} | {', '.join(a.roles) or '—'} | {a.decision} | "
                   f"{'yes' if a.counted else 'no'} | {_cell(a.note)} |")
    if not f.approvals:
        out.append("| — | — | — | — | — | no approval clicks |")
    strat = strategy(f)
    used, period = backup_used(f)
    out += ["", "## Restoration method", "",
            f"- **Method:** {STRATEGY_WORDS.get(strat or '', 'none chosen')}"
            + (f" (option {strat})" if strat else ""),
            f"- **Restored from:** `{used}`",
            f"- **Emergency backup:** `{f.capture('emergency_backup', 'path')}` sha256 "
            f"`{f.capture('verify_backup', 'file_sha256')}`",
            f"- **Integrity after restoration:** verify {f.capture('verify_restored', 'ok')}, "
            f"foreign keys {f.capture('foreign_key_check_after', 'ok')}"]
    lost, _per = data_loss(f)
    loss = data_loss_detail(f)
    out += ["", "## Data-loss assessment", "",
            f"- **Data loss:** {data_loss_word(lost, cfg.data_loss_minimal)}"
            + ("" if lost is None else f" — {lost} legitimate records lost"),
            f"- **Data-loss period:** {period}"]
    if loss is None:
        out.append("- Not assessed.")
    elif not loss.known:
        out.append("- The deployment's changes could not be told apart (no boundary): which rows were "
                   f"the deployment's and which were legitimate is unknown; {loss.total('changed')} rows differ.")
    else:
        out += ["", "| Table | Deployment rows undone | Legitimate writes lost | Conflicts kept |",
                "|-------|------------------------|------------------------|----------------|"]
        out += [f"| {t} | {v.undone} | {v.lost} | {v.kept} |" for t, v in loss.tables.items()
                if v.undone or v.lost or v.kept]
    app = app_rollback(f)
    out += ["", "## Application rollback", ""]
    if app["method"] == "github":
        out += [f"- **Method:** GitHub Actions workflow ({app['status']})",
                f"- **Workflow run:** {app.get('workflow_run') or '—'} ({app.get('conclusion') or 'no conclusion'})",
                f"- **Release:** {f.capture('release_tag', 'choice') or '—'}"]
    elif app["method"] == "command":
        dur = f", {app['duration_seconds']:.1f} s" if app.get("duration_seconds") is not None else ""
        out += [f"- **Method:** command on the target ({app['status']}, exit status "
                f"{app.get('exit_status')}{dur})"]
    else:
        out.append("- **Method:** none (no application rollback step ran)")
    if app.get("error"):
        out.append(f"- **Error:** {_cell(app['error'])}")
    out.append(f"- **Health after the rollback:** {f.capture('health_after_app_rollback', 'status') or '—'}")
    out += ["", "## Success metrics", "", metrics_table(metrics), "", f"**Overall Rollback Status:** {status_word}"]
    checks = health_checks(f)
    out += ["", "## Health checks", "", "| Time | Check | Status | Latency (ms) | OK |",
            "|------|-------|--------|--------------|----|"]
    for c in checks:
        out.append(f"| {stamp(c.at)} | {c.step_id} | {c.status} | {c.latency_ms} | {'yes' if c.ok else 'no'} |")
    if not checks:
        out.append("| — | — | — | — | no health checks ran |")
    if f.checks:
        out += ["", "## Stability checks", "", "Each check at the time it really ran; a slot that passed while "
                "the bot was down is recorded as missed.", "",
                "| Series | # | Slot (UTC) | Ran at (UTC) | Outcome | Status | Latency (ms) |",
                "|--------|---|------------|--------------|---------|--------|--------------|"]
        for sc in f.checks:
            ran = "— (not run)" if sc.outcome == "missed" else stamp(sc.at)
            lat = f"{sc.latency_ms:.0f}" if sc.latency_ms is not None else "—"
            out.append(f"| {sc.step_id} | {sc.index + 1} | {stamp(sc.due_at)} | {ran} | {sc.outcome} | "
                       f"{sc.status_code if sc.status_code is not None else '—'} | {lat} |")
    out += ["", "## Phases", "", "In the written plan's order; a phase that runs elsewhere says when.", ""]
    view = build(f.runbook, inc, f.latest)
    for pv in in_plan_order(view.phases, f.runbook):
        out.append(f"### {pv.title} — {pv.status}" + (f" ({pv.note})" if pv.note else ""))
        for sv in pv.steps:
            run = f.latest.get(sv.id)
            line = f"- {SYMBOLS.get(sv.status, '?')} {_cell(sv.title)} — {sv.status}"
            if sv.duration is not None and sv.status != "skipped":
                line += f", {sv.duration:.1f} s"
            if sv.status == "skipped" and run is not None:
                line += f": {_cell(run.captures.get('skip_reason') or run.error or 'skipped')}"
            elif sv.status in ("failed", "interrupted") and sv.error:
                line += f": {_cell(sv.error[:200])}"
            out.append(line)
        out.append("")
    out += ["## Timeline", "", "| # | Time (UTC) | Who | Event |", "|---|------------|-----|-------|"]
    for i, ev in enumerate(f.events, start=1):
        actor = _cell(person(ev.actor)) if ev.actor else "bot"
        out.append(f"| {i} | {stamp(ev.at)} | {actor} | {_cell(describe(ev, titles, names))} |")
    due = (end or f.now) + dt.timedelta(days=7)
    out += ["", "## Phase 7: Post-Rollback Analysis & Prevention", "",
            f"Root cause analysis due by **{due.astimezone(dt.UTC):%Y-%m-%d}** (7 days after service restoration).", ""]
    for section, items in PHASE7.items():
        out.append(f"### {section}")
        out += [f"- [ ] {item}" for item in items]
        out.append("")
    return ReportParts("\n".join(out).rstrip() + "\n", metrics, status_word, len(f.events))


def metrics_text(rows: list[dict[str, Any]], overall_status: str | None = None) -> str:
    """The success-metrics table (as a report step captured it) for a chat message, monospaced."""
    marks = {True: "✅", False: "❌", None: "⚪"}
    table = [("Metric", "Target", "Actual", "Status")]
    table += [(str(r.get("metric")), str(r.get("target")), str(r.get("actual"))[:40], marks.get(r.get("ok"), "⚪"))
              for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = ["  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in table]
    head = f"*Success metrics* — overall: *{overall_status}*\n" if overall_status else "*Success metrics*\n"
    return head + "```" + "\n".join(lines) + "```"
