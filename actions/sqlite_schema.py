"""The plan's SQLite tables as the bot expects them on the target (and the drill builds them).

The rollback plan names ``projects``, ``phases``, ``step_progress``, ``governance_logs``,
``change_history`` and ``user_permissions`` without giving their columns; these are the
columns the SQLite agent (``actions/sqlite_agent/``) relies on. Timestamps are ISO 8601
UTC text (``2025-07-30T12:00:00.000Z``), which sorts as text and which SQLite's date
functions read.

``change_history`` is what strategy B (``transaction_rollback``) undoes. One row per
changed row of another table:

- ``table_name``: the changed table (checked against the schema when undone);
- ``record_id``: the changed row's primary key value, as text (for people and as a
  fallback; the key is taken from the JSON values when they hold the key columns);
- ``operation``: ``INSERT`` | ``UPDATE`` | ``DELETE``;
- ``old_values``: JSON object of the full row before the change (NULL for INSERT);
- ``new_values``: JSON object of the full row after the change (NULL for DELETE);
- JSON values are the SQL values: null, integers, reals (with a ``.`` or exponent), text;
  a blob is ``{"$blob_b64": "<base64>"}`` (``encode_row`` writes them so);
- ``changed_at``, ``changed_by``, ``governance_log_id`` (the governance_logs row of the
  operation that made the change) and ``deployment`` (e.g. ``phase-3.0.0``) for selection.

Undo, newest first: INSERT -> delete the row by key; UPDATE -> write ``old_values`` back to
the row found by ``new_values``' key; DELETE -> insert ``old_values``. A row that no longer
matches ``new_values`` (changed outside the history) stops the rollback as a conflict.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

#: Default for every timestamp column: ISO 8601 UTC with milliseconds.
NOW_SQL = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"

PROJECTS_SCHEMA = f"""CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TEXT NOT NULL DEFAULT {NOW_SQL},
    updated_at TEXT
)"""

PHASES_SCHEMA = f"""CREATE TABLE IF NOT EXISTS phases (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    created_at TEXT NOT NULL DEFAULT {NOW_SQL},
    updated_at TEXT,
    UNIQUE (project_id, position)
)"""

STEP_PROGRESS_SCHEMA = f"""CREATE TABLE IF NOT EXISTS step_progress (
    id INTEGER PRIMARY KEY,
    phase_id INTEGER NOT NULL REFERENCES phases(id),
    step_key TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    assignee TEXT,
    notes TEXT,
    updated_at TEXT NOT NULL DEFAULT {NOW_SQL},
    UNIQUE (phase_id, step_key)
)"""

GOVERNANCE_LOGS_SCHEMA = f"""CREATE TABLE IF NOT EXISTS governance_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL DEFAULT {NOW_SQL},
    event_type TEXT NOT NULL,
    user_id TEXT,
    user_role TEXT,
    resource_type TEXT,
    resource_id TEXT,
    action TEXT NOT NULL,
    success INTEGER NOT NULL DEFAULT 1 CHECK (success IN (0, 1)),
    details TEXT,
    runtime_context TEXT
)"""

CHANGE_HISTORY_SCHEMA = f"""CREATE TABLE IF NOT EXISTS change_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    record_id TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
    old_values TEXT,
    new_values TEXT,
    changed_at TEXT NOT NULL DEFAULT {NOW_SQL},
    changed_by TEXT,
    governance_log_id INTEGER REFERENCES governance_logs(id),
    deployment TEXT,
    CHECK (operation = 'INSERT' OR old_values IS NOT NULL),
    CHECK (operation = 'DELETE' OR new_values IS NOT NULL)
)"""

USER_PERMISSIONS_SCHEMA = f"""CREATE TABLE IF NOT EXISTS user_permissions (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL UNIQUE,
    role TEXT,
    access_level TEXT,
    granted_by TEXT,
    updated_at TEXT NOT NULL DEFAULT {NOW_SQL}
)"""

INDEXES = (
    "CREATE INDEX IF NOT EXISTS idx_governance_logs_timestamp ON governance_logs(timestamp)",
    "CREATE INDEX IF NOT EXISTS idx_change_history_changed_at ON change_history(changed_at)",
    "CREATE INDEX IF NOT EXISTS idx_change_history_record "
    "ON change_history(table_name, record_id)",
)

#: Every table, parents before children.
TABLES: dict[str, str] = {
    "projects": PROJECTS_SCHEMA,
    "phases": PHASES_SCHEMA,
    "step_progress": STEP_PROGRESS_SCHEMA,
    "governance_logs": GOVERNANCE_LOGS_SCHEMA,
    "change_history": CHANGE_HISTORY_SCHEMA,
    "user_permissions": USER_PERMISSIONS_SCHEMA,
}

#: The tables the plan counts before and after a restore (Phase 1 and Phase 3).
COUNTED_TABLES = ("projects", "phases", "step_progress", "governance_logs")


def schema_sql() -> str:
    """Every CREATE statement of the plan's tables and indexes, as one script."""
    return ";\n".join([*TABLES.values(), *INDEXES]) + ";\n"


def apply_schema(conn: sqlite3.Connection) -> None:
    """Create the plan's tables and indexes on ``conn`` (existing ones are left alone)."""
    conn.executescript(schema_sql())


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$blob_b64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def encode_row(row: Mapping[str, Any] | None) -> str | None:
    """A row as change_history JSON (blobs as {"$blob_b64": ...}); None stays None."""
    if row is None:
        return None
    return json.dumps({k: _json_value(v) for k, v in row.items()}, ensure_ascii=False)


def read_row(conn: sqlite3.Connection, table: str, key_column: str, key: Any) -> dict[str, Any]:
    """The full row of ``table`` whose ``key_column`` is ``key``, as {column: value}.

    ``table`` and ``key_column`` must be names of the plan's schema (they are quoted, and
    checked against ``TABLES`` and the table's columns).
    """
    if table not in TABLES:
        raise ValueError(f"not a table of the plan: {table!r}")
    columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    if key_column not in columns:
        raise ValueError(f"{table} has no column {key_column!r}")
    cur = conn.execute(f'SELECT * FROM "{table}" WHERE "{key_column}" = ?', (key,))
    got = cur.fetchone()
    if got is None:
        raise LookupError(f"no {table} row with {key_column} = {key!r}")
    return {d[0]: v for d, v in zip(cur.description, got, strict=True)}


def record_change(
    conn: sqlite3.Connection,
    table: str,
    record_id: Any,
    operation: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    *,
    governance_log_id: int | None = None,
    deployment: str | None = None,
    changed_by: str | None = None,
    changed_at: str | None = None,
) -> int:
    """Append one change_history row in the format ``transaction_rollback`` undoes."""
    if operation not in ("INSERT", "UPDATE", "DELETE"):
        raise ValueError(f"operation must be INSERT, UPDATE or DELETE, not {operation!r}")
    cur = conn.execute(
        "INSERT INTO change_history (table_name, record_id, operation, old_values, new_values,"
        " changed_at, changed_by, governance_log_id, deployment)"
        f" VALUES (?, ?, ?, ?, ?, coalesce(?, {NOW_SQL}), ?, ?, ?)",
        (
            table,
            str(record_id),
            operation,
            encode_row(old),
            encode_row(new),
            changed_at,
            changed_by,
            governance_log_id,
            deployment,
        ),
    )
    return int(cur.lastrowid or 0)
