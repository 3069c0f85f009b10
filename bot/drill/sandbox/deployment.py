"""The bad Phase 3 deployment, and people's work around it, applied to the live database;
the intended database (the backup plus only the people's writes) written beside it."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bot.drill.sandbox.names import (
    DEPLOY_USER,
    DEPLOYMENT_VERSION,
    PEOPLE,
    PREVIOUS_VERSION,
    STEP_NAMES,
    SandboxError,
)
from bot.drill.sandbox.story import Story, Write
from bot.drill.sandbox.writer import Timeline, Writer, backup_copy, schema_time


def _bad_deployment(
    w: Writer, rng: random.Random, t: Timeline, rows: int, *, must_reset: int, escalate: list[int]
) -> tuple[list[int], int]:
    """The Phase 3 deployment: migrations that damage data and escalate two users' access.
    Returns its governance log ids and the step it changed twice."""
    w.deployment, w.user = DEPLOYMENT_VERSION, DEPLOY_USER
    ticks = (t.deploy + timedelta(seconds=2 * i) for i in range(1_000_000))

    def at() -> str:
        return schema_time(next(ticks))

    logs: list[int] = []

    def log(event: str, action: str, details: dict[str, Any]) -> int:
        details = {"version": DEPLOYMENT_VERSION, "previous_version": PREVIOUS_VERSION, **details}
        resource = ("production_deployment", "of-bev-phase-3")
        logs.append(w.log(at(), event, DEPLOY_USER, "ci_pipeline", resource, action, details, phase="OF-BEV-Phase-3"))
        return logs[-1]

    features = ["live_database_integration", "inline_editing_system", "json_import_export"]
    log("deployment_started", "deploy", {"features": features})

    # 0301: a status sync archives live projects and rewrites their descriptions.
    w.log_id = log("data_migration", "migrate", {"migration": "0301_project_status_sync"})
    live = w.ids("SELECT id FROM projects WHERE status = 'active' ORDER BY id")
    for project_id in rng.sample(live, min(len(live), max(2, len(live) // 3))):
        stamp = at()
        w.update("projects", project_id, {"status": "archived", "description": "synced by 0301", "updated_at": stamp},
                 stamp)
    stamp = at()
    project_id = w.add_project("Live Database Integration", "Phase 3: live database operations (created by 0302)",
                               "active", stamp)
    for position in (1, 2):
        stamp = at()
        phase_id = w.add_phase(project_id, position, "in_progress" if position == 1 else "pending", stamp)
        for name in STEP_NAMES[:3]:
            stamp = at()
            w.add_step(phase_id, name, status="pending", assignee=DEPLOY_USER, notes="seeded by 0302", at=stamp)

    # 0302b: a permission sync grants admin to two read-only users (the trigger logs it,
    # with no deployment marker, inside the deployment's span).
    w.log_id = log("data_migration", "migrate", {"migration": "0302_permission_sync"})
    for user in escalate:
        stamp = at()
        w.update("user_permissions", user, {"access_level": "admin", "updated_at": stamp}, stamp)

    # 0303: the inline-editing normalisation resets finished work and drops its notes.
    w.log_id = log("data_migration", "migrate", {"migration": "0303_inline_editing_normalisation"})
    done = w.ids("SELECT id FROM step_progress WHERE status = 'completed' ORDER BY id")
    reset = rng.sample([d for d in done if d != must_reset], min(len(done) - 1, max(6, rows // 10) - 1))
    reset.append(must_reset)  # the step someone had just annotated (never the one changed twice)
    for step_id in reset:
        stamp = at()
        w.update("step_progress", step_id, {"status": "pending", "notes": None, "updated_at": stamp}, stamp)
    if reset:  # one row changed twice: an undo must run newest first
        stamp = at()
        w.update("step_progress", reset[0], {"assignee": DEPLOY_USER, "updated_at": stamp}, stamp)
    finished = w.ids("SELECT id FROM phases WHERE status = 'completed' ORDER BY id")
    for phase_id in rng.sample(finished, min(len(finished), max(2, len(finished) // 6))):
        stamp = at()
        w.update("phases", phase_id, {"status": "in_progress", "updated_at": stamp}, stamp)
    open_phases = w.ids("SELECT id FROM phases WHERE status = 'in_progress' AND project_id != ?", (project_id,))
    for phase_id in rng.sample(open_phases, min(len(open_phases), 4)):
        stamp = at()
        w.add_step(phase_id, "inline-edit-audit", status="pending", assignee=DEPLOY_USER, notes="added by 0303",
                   at=stamp)

    # 0304: a "duplicate" cleanup deletes live rows, and a whole phase with its steps.
    w.log_id = log("data_migration", "migrate", {"migration": "0304_cleanup_duplicate_steps"})
    touched = w.touched.get("step_progress", set())
    untouched = [s for s in w.ids("SELECT id FROM step_progress ORDER BY id") if str(s) not in touched]
    for step_id in rng.sample(untouched, min(len(untouched), 3)):
        w.delete("step_progress", step_id, at())
    pending = w.ids("SELECT id FROM phases WHERE status = 'pending' AND project_id != ? ORDER BY id", (project_id,))
    if pending:
        victim = rng.choice(pending)
        for step_id in w.ids("SELECT id FROM step_progress WHERE phase_id = ? ORDER BY id", (victim,)):
            w.delete("step_progress", step_id, at())
        w.delete("phases", victim, at())
    w.log_id = None
    log("deployment_completed", "deploy", {"changes": len(w.changes), "status": "completed"})
    w.deployment = w.user = None
    return logs, reset[0]


def _max_id(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f'SELECT coalesce(max(id), 0) FROM "{table}"').fetchone()[0])


def _legit(conn: sqlite3.Connection, writes: list[Write], at: datetime, version: str) -> int:
    """People's writes, logged by the app under the running version, committed together; returns the
    history rows they added."""
    conn.execute("BEGIN IMMEDIATE")
    people = Writer(conn)
    people.deployment, people.user = version, PEOPLE[0]
    before = _max_id(conn, "change_history")
    for i, write in enumerate(writes):
        stamp = schema_time(at + timedelta(seconds=20 * i))
        values = {**write.values, "updated_at": stamp} if "updated_at" in write.values else write.values
        write.values.update(values)
        if write.insert:
            people.insert(write.table, {"id": write.key, **write.values}, stamp)
        else:
            people.update(write.table, write.key, write.values, stamp)
    people.log(schema_time(at + timedelta(seconds=20 * len(writes))), "user_login", PEOPLE[1], "user",
               ("session", PEOPLE[1]), "login", {"method": "sso"}, phase=version)
    conn.execute("COMMIT")
    return _max_id(conn, "change_history") - before


def _first(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> int:
    got = conn.execute(sql, params).fetchone()
    if got is None:
        raise SandboxError(f"the sandbox data has no row for: {sql}")
    return int(got[0])


def apply_bad_deployment(
    db_path: Path, *, rows: int, seed: int, now: datetime, backup: Path, expected_dir: Path
) -> tuple[int, dict[str, set[str]], Story]:
    """People's writes after the backup, the Phase 3 deployment, people's writes after it.

    Returns (change_history rows the deployment wrote, ids as text of the rows it touched per
    table, including its own change_history and governance_logs rows, the story). Writes
    ``expected_dir/intended.db`` (the backup plus only the people's writes) and
    ``expected_dir/incident.db`` (the live database when the incident begins). Run while the
    app holds the database open, the commits stay in the -wal file, as on a busy server.
    """
    rng = random.Random(seed * 7919 + 3)
    t = Timeline.before(now)
    story = Story()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        annotated = _first(conn, "SELECT id FROM step_progress WHERE status = 'completed' ORDER BY id")
        phase = _first(conn, "SELECT id FROM phases WHERE status = 'in_progress' ORDER BY id")
        writers = [r[0] for r in conn.execute("SELECT id FROM user_permissions WHERE access_level = 'read_write' "
                                              "AND role NOT IN ('service') ORDER BY id")]
        readers = [r[0] for r in conn.execute("SELECT id FROM user_permissions WHERE access_level = 'read_only' "
                                              "ORDER BY id")]
        if len(writers) < 2 or len(readers) < 2:
            raise SandboxError("the sandbox needs two read_write and two read_only users")
        story.pre = [
            Write("step_progress", annotated, {"notes": "verified in UAT by alice.nguyen", "updated_at": ""}),
            Write("step_progress", 980001, {"phase_id": phase, "step_key": "90-hotfix-review", "status": "pending",
                                            "assignee": "ben.okafor", "notes": "added after the backup",
                                            "updated_at": ""}, insert=True),
            Write("user_permissions", writers[0], {"access_level": "admin", "updated_at": ""}),
        ]
        story.overlap = ("step_progress", str(annotated))
        story.legit_history += _legit(conn, story.pre, t.backup + timedelta(minutes=1), PREVIOUS_VERSION)

        w = Writer(conn)
        before = _max_id(conn, "change_history")
        conn.execute("BEGIN IMMEDIATE")
        logs, changed_twice = _bad_deployment(w, rng, t, rows, must_reset=annotated, escalate=readers[:2])
        conn.execute("COMMIT")
        story.deployment_history = _max_id(conn, "change_history") - before
        story.deployment_governance = len(logs)
        story.touched = {table: set(ids) for table, ids in w.touched.items()}

        untouched = _first(conn, "SELECT id FROM step_progress WHERE id NOT IN (SELECT value FROM json_each(?)) "
                                 "ORDER BY id", (json.dumps(sorted(int(k) for k in w.touched["step_progress"])),))
        story.post = [
            Write("step_progress", changed_twice, {"status": "in_progress", "notes": "picked up again",
                                                   "updated_at": ""}),
            Write("step_progress", untouched, {"status": "completed", "notes": "closed after the release",
                                               "updated_at": ""}),
            Write("step_progress", 990001, {"phase_id": phase, "step_key": "91-customer-followup",
                                            "status": "in_progress", "assignee": "carla.reyes", "notes": None,
                                            "updated_at": ""}, insert=True),
            Write("user_permissions", writers[1], {"access_level": "read_only", "updated_at": ""}),
        ]
        story.conflict = ("step_progress", str(changed_twice))
        story.legit_history += _legit(conn, story.post, t.deploy + timedelta(minutes=5), DEPLOYMENT_VERSION)
        story.legit_governance = 2
        expected_dir.mkdir(parents=True, exist_ok=True)
        backup_copy(conn, expected_dir / "incident.db", now)
    finally:
        conn.close()
    _intended(backup, expected_dir / "intended.db", story)
    keys = {table: set(ids) for table, ids in w.touched.items()}
    keys["change_history"] = {str(c) for c in range(before + 1, before + story.deployment_history + 1)}
    keys["governance_logs"] = {str(g) for g in logs}
    return len(w.changes), keys, story


def _intended(backup: Path, dest: Path, story: Story) -> None:
    """The backup plus only the people's writes: the database as if the deployment never ran."""
    shutil.copyfile(backup, dest)
    conn = sqlite3.connect(dest, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for write in [*story.pre, *story.post]:
            sql, args = write.sql()
            conn.execute(sql, args)
        conn.execute("COMMIT")
    finally:
        conn.close()
