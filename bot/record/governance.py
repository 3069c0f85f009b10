"""The governance record of the plan's Phase 5, filled from the incident.

``build_record`` gives the plan's JSON shape (timestamp, event_type, user, resource,
action, success, details, runtime_context); ``db_row`` maps it onto the columns of the
target's ``governance_logs`` table. The row is written by the SQLite agent with bound
parameters: the plan's ``'$(cat rollback_details.json)'`` pastes JSON between quotes and
breaks on the first quote in a reason (or runs what a ``$(…)`` in it says).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from bot.core.compensation import outcome
from bot.record.metrics import (
    STRATEGY_METHODS,
    Facts,
    affected_users,
    data_loss,
    data_loss_detail,
    data_loss_word,
    downtime_seconds,
    rollback_seconds,
    strategy,
)
from bot.record.records import RecordsConfig

RESTORE_STEPS = ("full_restore", "selective_restore", "transaction_rollback")
APP_ROLLBACK_STEPS = ("github_deploy", "app_version_rollback")


@dataclass(frozen=True)
class Versions:
    """The application versions before and after the rollback."""

    from_version: str
    to_version: str


def _iso(at: dt.datetime | None) -> str | None:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at else None


def _minutes(seconds: float | None) -> float | None:
    return round(seconds / 60, 2) if seconds is not None else None


def incident_commander(f: Facts) -> str | None:
    """The person who acted as incident commander: the first counted approval, answer, abort or
    P4 override made in that role (from the journal); None when nobody did."""
    override = (f.incident.inputs or {}).get("override") or {}
    if override.get("by"):
        return str(override["by"])
    for ev in f.events:
        d = ev.data or {}
        if ev.kind.startswith("approval_"):
            roles = d.get("roles") or [] if d.get("counted") else []
        elif ev.kind == "abort_requested":
            roles = d.get("roles") or []
        elif isinstance(d.get("answer"), dict):
            roles = d["answer"].get("roles") or []
        else:
            continue
        if "incident_commander" in roles and ev.actor:
            return ev.actor
    return None


def app_rollback(f: Facts) -> dict[str, Any]:
    """How the application was rolled back, as it really ran: github, command or none."""
    gh = f.latest.get("github_deploy")
    cmd = f.latest.get("app_version_rollback")
    for method, run in (("github", gh), ("command", cmd)):
        if run is None or run.status.value == "skipped":
            continue
        out: dict[str, Any] = {"method": method, "status": run.status.value,
                               "duration_seconds": round(run.duration, 3) if run.duration is not None else None}
        if method == "github":
            out.update(workflow_run=run.captures.get("html_url"), conclusion=run.captures.get("conclusion"),
                       ref=run.captures.get("ref"))
        else:
            out.update(exit_status=run.exit_status)
        if run.error:
            out["error"] = run.error
        return out
    return {"method": "none", "status": "not run"}


def rollback_team(f: Facts) -> list[str]:
    """Everyone who requested, approved or answered, in order of first appearance."""
    team: list[str] = []
    people = [f.incident.requester, *(a.user_id for a in f.approvals if a.counted),
              *((r.answer or {}).get("user") for r in f.runs)]
    for p in people:
        if p and p not in team:
            team.append(str(p))
    return team


def backup_used(f: Facts) -> tuple[str, str]:
    """(what the database was restored from, the data-loss period it implies)."""
    strat = strategy(f)
    if strat == "B":
        point = f.done("rollback_point")
        label = point.captures.get("label") if point else None
        return (f"change_history of the live database, undone after point {f.capture('rollback_point', 'choice')}",
                f"none beyond the undone changes ({label})" if label else "none beyond the undone changes")
    run = f.done("restore_backup")
    if run is None:
        return "none", "unknown"
    chosen = str(run.captures.get("choice", ""))
    when = ""
    for o in (run.waiting or {}).get("options", []):
        if o.get("value") == chosen:
            m = re.search(r"mtime_iso (\S+)", str(o.get("description", "")))
            when = m.group(1) if m else ""
    eb = f.done("emergency_backup")
    until = _iso(eb.started_at) if eb else None
    period = f"{when or 'backup time unknown'} to {until or 'the restoration'}"
    return chosen, period


def _loss_detail(f: Facts) -> dict[str, Any] | str:
    """Per table {undone, lost, conflicts_kept}, or "unknown" without a boundary."""
    detail = data_loss_detail(f)
    if detail is None:
        return "not assessed"
    return detail.as_dict() if detail.known else "unknown"


def _last_tested(inputs: dict[str, Any]) -> dict[str, Any]:
    """The plan's "Last Tested" field: the last passing rehearsal known when the incident opened."""
    info = inputs.get("last_tested")
    if not isinstance(info, dict):
        return {"text": "Last tested: not recorded"}
    keys = ("text", "at", "target", "tested_runbook_sha256", "runbook_sha256", "this_runbook", "recovery_seconds")
    return {k: info[k] for k in keys if k in info}


def build_record(f: Facts, cfg: RecordsConfig, *, anchor: str, versions: Versions,
                 now: dt.datetime | None = None) -> dict[str, Any]:
    """The plan's governance log entry for this incident."""
    now = now or dt.datetime.now(dt.UTC)
    inc = f.incident
    inputs = inc.inputs or {}
    strat = strategy(f)
    restore = next((f.done(s) for s in RESTORE_STEPS if f.done(s)), None)
    used, period = backup_used(f)
    integrity = bool(f.capture("verify_restored", "ok")) and f.capture("foreign_key_check_after", "ok") is not False
    app_run = next((f.done(s) for s in APP_ROLLBACK_STEPS if f.done(s)), None)
    app = app_rollback(f)
    health_ok = f.capture("health_after_app_rollback", "status") == 200
    smoke = f.latest.get("smoke_test")
    smoke_ok = smoke is None or smoke.status.value in ("done", "skipped")
    lost, _ = data_loss(f)
    final_ok = f.capture("health_final", "status") == 200
    users = affected_users(f)
    triggers = inputs.get("trigger_labels") or inputs.get("triggers") or []
    # A rollback stopped half-way (aborted, or given up after a failure) is recorded as such.
    stopped = outcome(f.runbook, f.incident, f.runs, f.events)
    record: dict[str, Any] = {
        "timestamp": _iso(now),
        "event_type": cfg.event_type,
        "user_id": cfg.user_id,
        "user_role": cfg.user_role,
        "resource_type": cfg.resource_type,
        "resource_id": cfg.resource_id,
        "action": cfg.action,
        "success": bool(integrity and final_ok) and stopped is None,
        "details": {
            "operation": cfg.operation,
            "incident_id": inc.id,
            "rollback_reason": inc.reason,
            "trigger_condition": ", ".join(str(t) for t in triggers),
            "severity": inc.severity,
            "decision": inc.decision,
            "rollback_method": STRATEGY_METHODS.get(strat or "", "none"),
            "database_restoration": {
                "backup_used": used,
                "emergency_backup": f.capture("emergency_backup", "path"),
                "emergency_backup_sha256": f.capture("verify_backup", "file_sha256"),
                "restoration_timestamp": _iso(restore.ended_at) if restore else None,
                "data_loss_period": period,
                "data_loss_records": lost,
                "data_loss_detail": _loss_detail(f),
                "integrity_verified": integrity,
            },
            "application_rollback": {
                "from_version": versions.from_version,
                "to_version": versions.to_version,
                "rollback_duration_minutes": _minutes(app_run.duration) if app_run else None,
                "method": app["method"],
                "workflow_run": f.capture("github_deploy", "html_url"),
                "verification_status": "success" if health_ok and smoke_ok else "issues",
            },
            "affected_systems": list(cfg.affected_systems),
            "business_impact": {
                "downtime_minutes": _minutes(downtime_seconds(f)),
                "affected_users": users if users is not None else "unknown",
                "data_loss": data_loss_word(lost, cfg.data_loss_minimal),
                "service_restoration": "complete" if final_ok else "incomplete",
            },
            "total_rollback_minutes": _minutes(rollback_seconds(f)),
            "recovery_time_seconds": round(secs, 1) if (secs := rollback_seconds(f)) is not None else None,
            "approved_plan_hash": f.capture("approval", "plan_hash"),
            "last_tested": _last_tested(inputs),
        },
        "runtime_context": {
            "phase": cfg.phase,
            "environment": (inc.inputs or {}).get("environment") or cfg.environment,
            "incident_commander": incident_commander(f),
            "rollback_team": rollback_team(f),
            "memoryplugin_anchor": anchor,
            "incident_id": inc.id,
            "target": inc.target,
        },
    }
    if stopped is not None:
        record["details"]["outcome"] = stopped.as_dict()
        record["details"]["business_impact"]["service_restoration"] = "stopped before its end"
    return record


def db_row(record: dict[str, Any]) -> dict[str, Any]:
    """The record as ``governance_logs`` columns (objects become JSON text in the agent)."""
    return {
        "timestamp": record["timestamp"],
        "event_type": record["event_type"],
        "user_id": record["user_id"],
        "user_role": record["user_role"],
        "resource_type": record["resource_type"],
        "resource_id": record["resource_id"],
        "action": record["action"],
        "success": bool(record["success"]),
        "details": record["details"],
        "runtime_context": record["runtime_context"],
    }
