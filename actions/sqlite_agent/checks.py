"""Read-only checks: integrity_check, quick_check, foreign_key_check, record_counts."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from .base import Params, Result, bool_param, existing_file, int_param, names_param, path_param, qi
from .db import connect
from .schema import fk_violations, resolve_tables
from .tx import read_transaction


def check_messages(path: str, pragma: str, max_errors: int, immutable: bool) -> list[str]:
    """The messages of PRAGMA ``pragma`` (integrity_check or quick_check); an unreadable file's error as one."""
    try:
        conn = connect(path, "ro", immutable=immutable)
        try:
            rows = conn.execute(f"PRAGMA {pragma}({int(max_errors)})").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [f"{type(exc).__name__}: {exc}"]
    return [str(r[0]) for r in rows]


def op_integrity_check(p: Params) -> Result:
    """PRAGMA integrity_check: {ok, messages}."""
    db = existing_file(path_param(p, "db"))
    msgs = check_messages(
        db, "integrity_check", int_param(p, "max_errors", 100, 1), bool_param(p, "immutable")
    )
    return {"ok": msgs == ["ok"], "messages": msgs}


def op_quick_check(p: Params) -> Result:
    """PRAGMA quick_check: {ok, messages}."""
    db = existing_file(path_param(p, "db"))
    msgs = check_messages(db, "quick_check", int_param(p, "max_errors", 100, 1), bool_param(p, "immutable"))
    return {"ok": msgs == ["ok"], "messages": msgs}


def op_foreign_key_check(p: Params) -> Result:
    """PRAGMA foreign_key_check: {ok, violations: [{table, rowid, parent, fkid}], count}."""
    limit = int_param(p, "max_rows", 1000, 1)
    conn = connect(path_param(p, "db"))
    try:
        found = fk_violations(conn)
    finally:
        conn.close()
    return {"ok": not found, "violations": found[:limit], "count": len(found)}


def table_counts(path: str, tables: Sequence[str] | None, immutable: bool = False) -> dict[str, int]:
    """Row counts of ``tables`` (every user table for None), read in one transaction."""
    conn = connect(path, "ro", immutable=immutable)
    try:
        with read_transaction(conn):
            names = resolve_tables(conn, tables)
            counts = {t: conn.execute(f"SELECT count(*) FROM {qi(t)}").fetchone()[0] for t in names}
    finally:
        conn.close()
    return counts


def op_record_counts(p: Params) -> Result:
    """Row counts per table, all read in one transaction: {counts: {table: n}}."""
    return {"counts": table_counts(path_param(p, "db"), names_param(p, "tables"))}
