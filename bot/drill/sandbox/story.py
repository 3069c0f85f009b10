"""What happens to the drill's production around the bad deployment, and what each
strategy must therefore leave behind.

Between the pre-deployment backup and the deployment, people keep working (a step's notes,
a new step, a permission grant, a login); the deployment itself also escalates two users'
access levels; after it, people go on (one of them on a row the deployment reset: a
conflict), so "nothing lost" and "access levels equal" no longer hold by construction.
``user_permissions`` changes reach change_history through triggers (no deployment marker);
the other tables are logged by the app.

Every legitimate write names its row and values, so the same writes applied to a copy of
the backup give the *intended* database (no deployment ever happened); each strategy's
expected result is that database with a few rows overridden (``expected_rows``), and its
exact data-loss figures follow from the rows each write touched (``expected_loss``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Data tables compared row by row with the expected database.
DATA_TABLES = ("projects", "phases", "step_progress", "user_permissions")
_ROW = "json_object('id', {r}.id, 'user_id', {r}.user_id, 'role', {r}.role, 'access_level', {r}.access_level, " \
       "'granted_by', {r}.granted_by, 'updated_at', {r}.updated_at)"
#: user_permissions is logged by triggers, as many installations do it: no deployment marker.
TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS user_permissions_log_insert AFTER INSERT ON user_permissions BEGIN "
    "INSERT INTO change_history (table_name, record_id, operation, old_values, new_values, changed_at) "
    f"VALUES ('user_permissions', CAST(NEW.id AS TEXT), 'INSERT', NULL, {_ROW.format(r='NEW')}, NEW.updated_at); END",
    "CREATE TRIGGER IF NOT EXISTS user_permissions_log_update AFTER UPDATE ON user_permissions BEGIN "
    "INSERT INTO change_history (table_name, record_id, operation, old_values, new_values, changed_at) "
    f"VALUES ('user_permissions', CAST(NEW.id AS TEXT), 'UPDATE', {_ROW.format(r='OLD')}, {_ROW.format(r='NEW')}, "
    "NEW.updated_at); END",
    "CREATE TRIGGER IF NOT EXISTS user_permissions_log_delete AFTER DELETE ON user_permissions BEGIN "
    "INSERT INTO change_history (table_name, record_id, operation, old_values, new_values, changed_at) "
    f"VALUES ('user_permissions', CAST(OLD.id AS TEXT), 'DELETE', {_ROW.format(r='OLD')}, NULL, "
    "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')); END",
)


@dataclass(frozen=True)
class Write:
    """One legitimate write, replayable on any copy: UPDATE by id or INSERT with its id."""

    table: str
    key: int
    values: dict[str, Any]
    insert: bool = False

    def sql(self) -> tuple[str, list[Any]]:
        """The statement and its bound values."""
        cols = list(self.values)
        if self.insert:
            names = ", ".join(["id", *cols])
            return (f'INSERT INTO "{self.table}" ({names}) VALUES ({", ".join("?" for _ in range(len(cols) + 1))})',
                    [self.key, *self.values.values()])
        return (f'UPDATE "{self.table}" SET {", ".join(f"{c} = ?" for c in cols)} WHERE id = ?',
                [*self.values.values(), self.key])


@dataclass
class Story:
    """The legitimate writes around the deployment and the rows that matter to the verdict."""

    pre: list[Write] = field(default_factory=list)
    post: list[Write] = field(default_factory=list)
    #: Rows the deployment changed, per table (ids as text), user_permissions included.
    touched: dict[str, set[str]] = field(default_factory=dict)
    #: The deployment's change_history and governance_logs rows.
    deployment_history: int = 0
    deployment_governance: int = 0
    #: Legitimate change_history and governance_logs rows written after the backup.
    legit_history: int = 0
    legit_governance: int = 0
    #: A row the deployment changed after someone's legitimate write (A loses that write).
    overlap: tuple[str, str] = ("step_progress", "")
    #: A row someone changed after the deployment did (a conflict, kept by A and B).
    conflict: tuple[str, str] = ("step_progress", "")

    def legit_keys(self) -> dict[str, set[str]]:
        """Rows with a legitimate write since the backup, per table."""
        out: dict[str, set[str]] = {}
        for w in [*self.pre, *self.post]:
            if w.table != "governance_logs":
                out.setdefault(w.table, set()).add(str(w.key))
        return out

    def expected_loss(self, strategy: str) -> dict[str, tuple[int, int, int]]:
        """Per table (deployment rows undone, legitimate writes lost, conflicts kept)."""
        out: dict[str, tuple[int, int, int]] = {}
        conflict_table, conflict_key = self.conflict
        overlap_table, overlap_key = self.overlap
        legit = self.legit_keys()
        for table in sorted(set(self.touched) | set(legit)):
            rows = self.touched.get(table, set())
            kept = 1 if table == conflict_table and conflict_key in rows else 0
            if strategy == "C":
                out[table] = (len(rows), len(legit.get(table, set())), 0)
            elif strategy == "A":
                out[table] = (len(rows) - kept, 1 if table == overlap_table and overlap_key else 0, kept)
            else:
                out[table] = (len(rows) - kept, 0, kept)
        if strategy == "C":
            out["change_history"] = (self.deployment_history, self.legit_history, 0)
            out["governance_logs"] = (self.deployment_governance, self.legit_governance, 0)
        return {t: v for t, v in out.items() if any(v)}


def apply(conn: sqlite3.Connection, writes: list[Write], log: Any = None) -> None:
    """Run the writes (``log(table, key, op, old, new, at)`` records them, if given)."""
    for w in writes:
        sql, args = w.sql()
        if log is None or w.table == "user_permissions":  # the triggers log user_permissions
            conn.execute(sql, args)
            continue
        log(w, sql, args)


def rows_by_id(conn: sqlite3.Connection, table: str) -> dict[Any, tuple[Any, ...]]:
    """Every row of a table by its first column (the id; rowid order)."""
    return {r[0]: tuple(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid')}


def expected_rows(strategy: str, story: Story, *, intended: Path, backup: Path, incident: Path,
                  table: str) -> dict[Any, tuple[Any, ...]]:
    """What ``table`` must hold after the strategy: the intended rows, with the conflict kept
    as it was when the incident began (A and B) and, for A, the overlap row as the backup has it."""
    def read(path: Path) -> dict[Any, tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return rows_by_id(conn, table)
        finally:
            conn.close()

    if strategy == "C":
        return read(backup)
    rows = read(intended)
    for (t, key), source in ((story.conflict, incident), *(((story.overlap, backup),) if strategy == "A" else ())):
        if t == table and key:
            row = read(source).get(int(key))
            if row is None:
                rows.pop(int(key), None)
            else:
                rows[int(key)] = row
    return rows
