"""How the incident ended: the post-incident report, and the closing line broadcast to the
channel with the compensation's account of production's state and the report's metrics."""

from __future__ import annotations

from pathlib import Path

from slack_sdk.models.blocks import MarkdownTextObject, SectionBlock

from bot.core import compensation
from bot.core.lifecycle import FINAL, Status
from bot.core.runbook import ReportStep, Runbook
from bot.record.report import metrics_text
from bot.record.viewmodel import short
from bot.slack.status import render_milestone
from bot.slack.view import STATUS_ICONS, STATUS_WORDS, Rendered, ThreadState, clip, duration_text, esc, sections


def outcome_messages(state: ThreadState, runbook: Runbook) -> list[Rendered]:
    """Once the incident is over: the report file, then the closing line broadcast to the channel,
    with the compensation's account and the report's metrics."""
    inc = state.incident
    if inc.status not in FINAL:
        return []
    out: list[Rendered] = []
    latest = {r.step_id: r for r in state.runs}
    report_id = next((s.id for _, s in runbook.steps() if isinstance(s, ReportStep)), None)
    report = latest.get(report_id) if report_id else None
    done = report is not None and report.status.value == "done"
    if done and report is not None and report.captures.get("report_path"):
        out.append(Rendered("file:report", f"{inc.id}: post-incident report",
                            file=Path(str(report.captures["report_path"]))))
    end = render_milestone("milestone:end", final_line(state))
    stopped = compensation.outcome(runbook, inc, state.runs, state.events)
    if stopped is not None:
        end.blocks += sections(statement_lines(stopped))
    if done and report is not None and report.captures.get("metrics"):
        end.blocks.append(SectionBlock(text=MarkdownTextObject(text=clip(metrics_text(
            list(report.captures["metrics"]), str(report.captures.get("overall") or ""))))))
    out.append(end)
    return out


def statement_lines(stopped: compensation.Outcome) -> list[str]:
    """The compensation's account as mrkdwn lines: production's state, undone, not undone."""
    lines = ["*Production is now:* " + esc("; ".join(stopped.state) or "not measured")]
    if stopped.undone:
        lines.append("*Undone:*")
        lines += [f"• {esc(line)}" for line in stopped.undone]
    if stopped.not_undone:
        lines.append("*Not undone:*")
        lines += [f"• {esc(line)}" for line in stopped.not_undone]
    if stopped.pending:
        lines.append("*Still to do:*")
        lines += [f"• {esc(line)}" for line in stopped.pending]
    return lines


def final_line(state: ThreadState) -> str:
    """The closing line: how the incident ended, after how long, and why."""
    inc = state.incident
    icon = STATUS_ICONS.get(inc.status, "")
    took = state.view.elapsed
    line = f"{icon} *{inc.id}* {STATUS_WORDS.get(inc.status, inc.status.value)}"
    if took is not None:
        line += f" after {duration_text(took)}"
    if inc.status is Status.FAILED:
        failed = next((s for p in state.view.phases for s in p.steps if s.status == "failed" and s.error), None)
        if failed:
            line += f": {esc(failed.title)} — {esc(short(failed.error, 200))}"
    if inc.status is Status.ABORTED and inc.abort_reason:
        line += f": {esc(inc.abort_reason)}"
    if inc.status is Status.REJECTED:
        rej = next((a for a in state.approvals if a.counted and a.decision == "reject"), None)
        if rej:
            line += f" by <@{rej.user_id}>" + (f": {esc(rej.note)}" if rej.note else "")
    return line + "."
