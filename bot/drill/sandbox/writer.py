"""How the sandbox writes its production data: rows of the plan's tables with their
change_history, governance_logs entries, the timeline they follow, consistent backups."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from actions import sqlite_schema
from bot.drill.sandbox.names import PHASE_NAMES


def schema_time(t: datetime) -> str:
    """The schema's timestamp text: ISO 8601 UTC with milliseconds."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def backup_copy(conn: sqlite3.Connection, dest: Path, taken_at: datetime) -> None:
    """Consistent copy through the backup API; file time set to when it was taken."""
    partial = dest.with_name(dest.name + ".partial")
    out = sqlite3.connect(partial)
    try:
        conn.backup(out, pages=-1)
        out.execute("PRAGMA journal_mode = DELETE")
    finally:
        out.close()
    partial.replace(dest)
    stamp = taken_at.timestamp()
    os.utime(dest, (stamp, stamp))


class Writer:
    """Writes rows of the plan's tables and, inside a deployment, their change_history rows
    (full old and new rows, through ``actions.sqlite_schema.record_change``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.deployment: str | None = None
        self.log_id: int | None = None
        self.user: str | None = None
        self.changes: list[int] = []
        self.touched: dict[str, set[str]] = {}

    def row(self, table: str, key: int) -> dict[str, Any]:
        """The full row of ``table`` with id ``key``."""
        return sqlite_schema.read_row(self.conn, table, "id", key)

    def ids(self, sql: str, params: tuple[Any, ...] = ()) -> list[int]:
        """The first column of a query, as ints."""
        return [int(r[0]) for r in self.conn.execute(sql, params)]

    def _record(
        self, table: str, key: int, op: str, old: dict[str, Any] | None, new: dict[str, Any] | None, at: str
    ) -> None:
        if self.deployment is None:
            return
        if table == "user_permissions":  # logged by the table's triggers
            self.touched.setdefault(table, set()).add(str(key))
            return
        change_id = sqlite_schema.record_change(
            self.conn,
            table,
            key,
            op,
            old,
            new,
            governance_log_id=self.log_id,
            deployment=self.deployment,
            changed_by=self.user,
            changed_at=at,
        )
        self.changes.append(change_id)
        self.touched.setdefault(table, set()).add(str(key))

    def insert(self, table: str, values: dict[str, Any], at: str) -> int:
        """Insert a row; returns its id."""
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = self.conn.execute(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', list(values.values()))
        assert cur.lastrowid is not None
        key = cur.lastrowid
        self._record(table, key, "INSERT", None, self.row(table, key), at)
        return key

    def update(self, table: str, key: int, values: dict[str, Any], at: str) -> None:
        """Update one row by id."""
        old = self.row(table, key)
        sets = ", ".join(f"{c} = ?" for c in values)
        self.conn.execute(f'UPDATE "{table}" SET {sets} WHERE id = ?', [*values.values(), key])
        self._record(table, key, "UPDATE", old, self.row(table, key), at)

    def delete(self, table: str, key: int, at: str) -> None:
        """Delete one row by id."""
        old = self.row(table, key)
        self.conn.execute(f'DELETE FROM "{table}" WHERE id = ?', (key,))
        self._record(table, key, "DELETE", old, None, at)

    def step_key(self, phase_id: int, name: str) -> str:
        """A step_key not yet used in the phase: ``NN-name``."""
        used = {
            str(r[0]) for r in self.conn.execute("SELECT step_key FROM step_progress WHERE phase_id = ?", (phase_id,))
        }
        n = len(used) + 1
        while f"{n:02d}-{name}" in used:
            n += 1
        return f"{n:02d}-{name}"

    def add_project(self, name: str, description: str, status: str, at: str) -> int:
        """Insert a projects row created at ``at``; returns its id."""
        values = {"name": name, "description": description, "status": status, "created_at": at, "updated_at": at}
        return self.insert("projects", values, at)

    def add_phase(self, project_id: int, position: int, status: str, at: str) -> int:
        """Insert the project's phase at ``position`` (named after the delivery stage); returns its id."""
        values = {"project_id": project_id, "name": f"Phase {position} - {PHASE_NAMES[position - 1]}",
                  "position": position, "status": status, "created_at": at, "updated_at": at}
        return self.insert("phases", values, at)

    def add_step(self, phase_id: int, name: str, *, status: str, assignee: str, notes: str | None, at: str) -> int:
        """Insert a step_progress row under a fresh ``NN-name`` key; returns its id."""
        values = {"phase_id": phase_id, "step_key": self.step_key(phase_id, name), "status": status,
                  "assignee": assignee, "notes": notes, "updated_at": at}
        return self.insert("step_progress", values, at)

    def log(
        self,
        at: str,
        event_type: str,
        user_id: str,
        user_role: str,
        resource: tuple[str, str],
        action: str,
        details: dict[str, Any],
        *,
        phase: str,
        success: bool = True,
    ) -> int:
        """Append a governance_logs row; returns its id."""
        cur = self.conn.execute(
            "INSERT INTO governance_logs (timestamp, event_type, user_id, user_role, resource_type, "
            "resource_id, action, success, details, runtime_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                at,
                event_type,
                user_id,
                user_role,
                resource[0],
                resource[1],
                action,
                1 if success else 0,
                json_text(details),
                json_text({"environment": "production", "phase": phase}),
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid


@dataclass(frozen=True)
class Timeline:
    """When things happened (UTC), relative to the build's ``now``."""

    now: datetime
    #: The system went live.
    created: datetime
    #: phase-2.4.1 was deployed.
    previous_deploy: datetime
    #: An older backup (the wrong choice).
    decoy_backup: datetime
    #: Ordinary activity ends: the last hours hold only the deployment.
    quiet_from: datetime
    #: The pre-deployment backup.
    backup: datetime
    #: The Phase 3 deployment starts.
    deploy: datetime

    @classmethod
    def before(cls, now: datetime) -> Timeline:
        """The timeline of a sandbox built at ``now``."""
        return cls(now, created=now - timedelta(days=30), previous_deploy=now - timedelta(days=12),
                   decoy_backup=now - timedelta(days=3, hours=2), quiet_from=now - timedelta(hours=3),
                   backup=now - timedelta(minutes=55), deploy=now - timedelta(minutes=50))
