"""Reading the schema: user tables, one table's columns and keys, foreign key violations."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any

from .base import OpError, qi


def user_tables(conn: sqlite3.Connection, schema: str = "main") -> list[str]:
    """Ordinary tables of ``schema`` (no sqlite_* tables, no virtual tables), sorted."""
    rows = conn.execute(
        f"SELECT name FROM {qi(schema)}.sqlite_master WHERE type = 'table' "
        "AND lower(substr(name, 1, 7)) <> 'sqlite_' "
        "AND upper(substr(ltrim(sql), 1, 14)) <> 'CREATE VIRTUAL' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows]


def resolve_tables(
    conn: sqlite3.Connection, tables: Sequence[str] | None, schema: str = "main"
) -> list[str]:
    """The requested tables by their schema spelling (every user table for None)."""
    known = user_tables(conn, schema)
    if tables is None:
        return known
    by_lower = {t.lower(): t for t in known}
    out: list[str] = []
    for name in tables:
        if not isinstance(name, str) or name.lower() not in by_lower:
            raise OpError(
                f"no such table: {name!r} (tables: {', '.join(known) or 'none'})",
                "bad_table",
            )
        if by_lower[name.lower()] not in out:
            out.append(by_lower[name.lower()])
    return out


class TableInfo:
    """Columns, primary key and rowid facts of one table."""

    def __init__(self, conn: sqlite3.Connection, table: str, schema: str = "main") -> None:
        self.name = table
        try:
            rows = conn.execute(f"PRAGMA {qi(schema)}.table_xinfo({qi(table)})").fetchall()
        except sqlite3.OperationalError:  # SQLite < 3.26
            rows = [(*r, 0) for r in conn.execute(f"PRAGMA {qi(schema)}.table_info({qi(table)})")]
        if not rows:
            raise OpError(f"no such table: {table!r}", "bad_table")
        #: Columns that SELECT * returns (stored and generated).
        self.columns = [r[1] for r in rows if r[6] in (0, 2, 3)]
        #: Columns an INSERT may name (no generated columns).
        self.writable = [r[1] for r in rows if r[6] == 0]
        self.types = {r[1]: (r[2] or "") for r in rows}
        self.pk = [r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]
        #: Stored columns an INSERT must give a value for (NOT NULL, no default, no rowid alias).
        self.notnull_no_default = [
            r[1] for r in rows
            if r[3] and r[4] is None and r[6] == 0
            and not (len(self.pk) == 1 and r[5] and (r[2] or "").strip().upper() == "INTEGER")
        ]
        sql = conn.execute(
            f"SELECT sql FROM {qi(schema)}.sqlite_master WHERE type = 'table' AND name = ?",
            (table,),
        ).fetchone()
        self.without_rowid = bool(
            sql and re.search(r"\bWITHOUT\s+ROWID\s*;?\s*$", sql[0] or "", re.I)
        )
        self.rowid_alias = (
            len(self.pk) == 1
            and self.types[self.pk[0]].strip().upper() == "INTEGER"
            and not self.without_rowid
        )
        #: Columns that identify a row: the primary key, else the rowid.
        self.key = list(self.pk) if self.pk else ["rowid"]

    def column(self, name: str, what: str = "column") -> str:
        """``name`` as spelled in the schema, or a clear error."""
        for col in self.columns:
            if col.lower() == str(name).lower():
                return col
        raise OpError(
            f"table {self.name!r} has no {what} {name!r} (columns: {', '.join(self.columns)})",
            "bad_column",
        )


def fk_violations(conn: sqlite3.Connection, schema: str = "main") -> list[dict[str, Any]]:
    """PRAGMA foreign_key_check of ``schema`` as [{table, rowid, parent, fkid}]."""
    rows = conn.execute(f"PRAGMA {qi(schema)}.foreign_key_check").fetchall()
    return [{"table": r[0], "rowid": r[1], "parent": r[2], "fkid": r[3]} for r in rows]


def fk_guard(conn: sqlite3.Connection, before: list[dict[str, Any]], allow: bool) -> int:
    """Count violations not in ``before``; refuse (kind ``fk_violation``) unless ``allow``."""
    seen = {tuple(v.values()) for v in before}
    new = [v for v in fk_violations(conn) if tuple(v.values()) not in seen]
    if new and not allow:
        raise OpError(
            f"the change would add {len(new)} foreign key violation(s); rolled back",
            "fk_violation",
            new[:20],
        )
    return len(new)
