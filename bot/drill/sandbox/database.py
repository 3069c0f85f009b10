"""The sandbox database up to its pre-deployment state: users, projects, phases and steps,
months of ordinary activity, the decoy and the pre-deployment backups, the export."""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from actions import sqlite_schema
from bot.drill.sandbox.names import (
    DATABASES_DIR,
    DB_RELATIVE,
    DEPLOY_USER,
    EXPORT_USER,
    OLDER_VERSION,
    PEOPLE,
    PRE_DEPLOYMENT_EXPORT,
    PREVIOUS_VERSION,
    PROJECT_NAMES,
    ROLE_MIX,
    STEP_NAMES,
)
from bot.drill.sandbox.story import TRIGGERS
from bot.drill.sandbox.writer import Timeline, Writer, backup_copy, schema_time
from bot.drill.target.data import Database, export_document


def _users(w: Writer, t: Timeline) -> dict[str, str]:
    """user_permissions: an emergency admin, superusers, a mix of roles and access levels."""
    at = schema_time(t.created)
    people: list[tuple[str, str, str]] = [
        (EXPORT_USER, "emergency_admin", "admin"),
        ("ops.superuser", "superuser", "admin"),
        ("cto.office", "superuser", "admin"),
        (DEPLOY_USER, "service", "read_write"),
    ]
    people += [(person, *ROLE_MIX[i % len(ROLE_MIX)]) for i, person in enumerate(PEOPLE)]
    for user_id, role, level in people:
        w.insert(
            "user_permissions",
            {"user_id": user_id, "role": role, "access_level": level, "granted_by": "cto.office", "updated_at": at},
            at,
        )
    return {user_id: level for user_id, _role, level in people}


def _step_status(rng: random.Random, phase_status: str) -> str:
    if phase_status in ("completed", "pending"):
        return phase_status
    return rng.choice(("pending", "in_progress", "in_progress", "completed", "completed", "blocked"))


def _initial_load(w: Writer, rng: random.Random, t: Timeline, rows: int) -> list[int]:
    """Projects, their phases and steps as they stood at go-live; returns the step ids."""
    phases: list[tuple[int, str, str]] = []
    for p in range(max(4, rows // 25)):
        created = schema_time(t.created + timedelta(hours=p * 7))
        name = PROJECT_NAMES[p % len(PROJECT_NAMES)]
        if p >= len(PROJECT_NAMES):
            name = f"{name} {p // len(PROJECT_NAMES) + 1}"
        status = rng.choice(("active", "active", "active", "on_hold", "completed"))
        project_id = w.add_project(name, f"{name}: OF-BEV programme workstream", status, created)
        n_phases = rng.randint(3, 6)
        done = n_phases if status == "completed" else rng.randint(0, n_phases - 1)
        for position in range(1, n_phases + 1):
            phase_status = "completed" if position <= done else "in_progress" if position == done + 1 else "pending"
            phase_id = w.add_phase(project_id, position, phase_status, created)
            phases.append((phase_id, phase_status, created))
    steps: list[int] = []
    per_phase, extra = divmod(rows, len(phases))
    for i, (phase_id, phase_status, created) in enumerate(phases):
        for s in range(per_phase + (1 if i < extra else 0)):
            steps.append(w.add_step(phase_id, STEP_NAMES[s % len(STEP_NAMES)], status=_step_status(rng, phase_status),
                                    assignee=rng.choice(PEOPLE), notes=None, at=created))
    return steps


def _activity(
    w: Writer, rng: random.Random, *, start: datetime, end: datetime, events: int, steps: list[int], version: str
) -> None:
    """Ordinary use between ``start`` and ``end``: logins, exports, step updates, new steps.

    Every data change is recorded in change_history under the version deployed then.
    """
    span = (end - start).total_seconds()
    moments = sorted(start + timedelta(seconds=rng.uniform(0, span)) for _ in range(events))
    w.deployment = version
    for moment in moments:
        at = schema_time(moment)
        user = rng.choice(PEOPLE)
        w.user = user
        kind = rng.random()
        if kind < 0.25:
            w.log(at, "user_login", user, "user", ("session", user), "login", {"method": "sso"}, phase=version)
        elif kind < 0.32:
            w.log(at, "json_export", user, "user", ("database", "production"), "export", {"tables": "all"},
                  phase=version, success=rng.random() > 0.1)
        elif kind < 0.9:
            step_id = rng.choice(steps)
            step = w.row("step_progress", step_id)
            nxt = {"pending": "in_progress", "blocked": "in_progress", "in_progress": "completed"}
            if step["status"] not in nxt:
                continue
            w.log_id = w.log(at, "data_update", user, "user", ("step_progress", str(step_id)), "update_status",
                             {"status": nxt[step["status"]]}, phase=version)
            note = f"{nxt[step['status']]} by {user}"
            w.update("step_progress", step_id, {"status": nxt[step["status"]], "notes": note, "updated_at": at}, at)
        else:
            open_phases = w.ids("SELECT id FROM phases WHERE status = 'in_progress' ORDER BY id")
            if not open_phases:
                continue
            phase_id = rng.choice(open_phases)
            w.log_id = w.log(at, "data_create", user, "user", ("phases", str(phase_id)), "add_step",
                             {"phase_id": phase_id}, phase=version)
            steps.append(w.add_step(phase_id, rng.choice(STEP_NAMES), status="pending", assignee=user,
                                    notes="added during delivery", at=at))
    w.deployment = w.log_id = w.user = None


def _write_export(db: Path, dest: Path, exported_at: datetime) -> None:
    """The database's content in the app's export format (what /export would answer)."""
    doc = export_document(Database(db).export(), exported_at=exported_at, exported_by=EXPORT_USER,
                          app_version=PREVIOUS_VERSION)
    dest.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")


def _dated_backup(conn: sqlite3.Connection, databases: Path, taken_at: datetime) -> Path:
    """A production backup named by when it was taken, as the target's backups are."""
    dest = databases / f"production_backup_{taken_at.strftime('%Y%m%d_%H%M%S')}.db"
    backup_copy(conn, dest, taken_at)
    return dest


@dataclass(frozen=True)
class Built:
    """What the database build produced (before the deployment)."""

    db_path: Path
    backup_path: Path
    decoy_backup_path: Path
    export_path: Path
    original_access_levels: dict[str, str]


def build_database(workdir: Path, *, rows: int, seed: int, now: datetime) -> Built:
    """Create the live database up to its pre-deployment state, with both backups."""
    rng = random.Random(seed)
    t = Timeline.before(now)
    databases = workdir / DATABASES_DIR
    databases.mkdir(parents=True, exist_ok=True)
    db_path = workdir / DB_RELATIVE
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        sqlite_schema.apply_schema(conn)
        for trigger in TRIGGERS:
            conn.execute(trigger)
        w = Writer(conn)
        conn.execute("BEGIN")
        levels = _users(w, t)
        steps = _initial_load(w, rng, t, rows)
        _activity(w, rng, start=t.created + timedelta(days=1), end=t.previous_deploy, events=max(10, rows // 4),
                  steps=steps, version=OLDER_VERSION)
        w.log(schema_time(t.previous_deploy), "deployment_completed", DEPLOY_USER, "ci_pipeline",
              ("production_deployment", "of-bev-phase-2"), "deploy",
              {"version": PREVIOUS_VERSION, "previous_version": OLDER_VERSION}, phase="OF-BEV-Phase-2")
        _activity(w, rng, start=t.previous_deploy, end=t.decoy_backup, events=max(10, rows // 5), steps=steps,
                  version=PREVIOUS_VERSION)
        conn.execute("COMMIT")
        decoy = _dated_backup(conn, databases, t.decoy_backup)
        conn.execute("BEGIN")
        _activity(w, rng, start=t.decoy_backup, end=t.quiet_from, events=max(10, rows // 5), steps=steps,
                  version=PREVIOUS_VERSION)
        conn.execute("COMMIT")
        backup = _dated_backup(conn, databases, t.backup)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    export_path = workdir / PRE_DEPLOYMENT_EXPORT
    _write_export(backup, export_path, t.backup)
    return Built(db_path, backup, decoy, export_path, levels)
