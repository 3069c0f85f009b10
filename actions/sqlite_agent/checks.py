"""Read-only checks: integrity_check, quick_check, foreign_key_check, record_counts."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from .base import Params, Result, _bool, _existing, _int, _path, _str_list, qi
from .db import connect
from .schema import _fk_violations, resolve_tables
from .tx import read_transaction


def _check_messages(path: str, pragma: str, max_errors: int, immutable: bool) -> list[str]:
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
    db = _existing(_path(p, "db"))
    msgs = _check_messages(
        db, "integrity_check", _int(p, "max_errors", 100, 1), _bool(p, "immutable")
    )
    return {"ok": msgs == ["ok"], "messages": msgs}


def op_quick_check(p: Params) -> Result:
    """PRAGMA quick_check: {ok, messages}."""
    db = _existing(_path(p, "db"))
    msgs = _check_messages(db, "quick_check", _int(p, "max_errors", 100, 1), _bool(p, "immutable"))
    return {"ok": msgs == ["ok"], "messages": msgs}


def op_foreign_key_check(p: Params) -> Result:
    """PRAGMA foreign_key_check: {ok, violations: [{table, rowid, parent, fkid}], count}."""
    limit = _int(p, "max_rows", 1000, 1)
    conn = connect(_path(p, "db"))
    try:
        found = _fk_violations(conn)
    finally:
        conn.close()
    return {"ok": not found, "violations": found[:limit], "count": len(found)}


def _counts(path: str, tables: Sequence[str] | None, immutable: bool = False) -> dict[str, int]:
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
    return {"counts": _counts(_path(p, "db"), _str_list(p, "tables"))}
