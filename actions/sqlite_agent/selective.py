"""Selective restore: rows taken from a backup by key, by difference, or by a boundary's changes."""

from __future__ import annotations

import sqlite3
from typing import Any

from .base import OpError, Params, Result, bool_param, from_json, names_param, path_param, qi
from .db import attach, connect
from .diff import TablePair, sorted_keys
from .schema import fk_guard, fk_violations, resolve_tables, user_tables
from .strategies import selective_by_log
from .tx import write_transaction


def op_selective_restore(p: Params) -> Result:
    """Strategy A: restore rows from a backup: those a boundary's changes touched (with
    ``boundary``; see ``strategies``), or chosen keys, or every differing row of ``tables``."""
    if p.get("boundary") is not None:
        return selective_by_log(p)
    db, backup = path_param(p, "db"), path_param(p, "backup")
    requested = names_param(p, "tables")
    if not requested:
        raise OpError("parameter 'tables' must name at least one table")
    keys_by_table = p.get("keys")
    key_spec = p.get("key_columns") or {}
    if keys_by_table is not None and not isinstance(keys_by_table, dict):
        raise OpError("parameter 'keys' must be an object {table: [key, ...]} or null")
    if not isinstance(key_spec, dict):
        raise OpError("parameter 'key_columns' must be an object or null")
    allow_fk = bool_param(p, "allow_fk_violations")
    conn = connect(db, "rw")
    try:
        attach(conn, backup)
        tables = resolve_tables(conn, requested)
        in_backup = {t.lower() for t in user_tables(conn, "other")}
        for table in tables:
            if table.lower() not in in_backup:
                raise OpError(f"table {table!r} is not in the backup {backup}", "bad_table")
        with write_transaction(conn):
            fk_before = fk_violations(conn)
            report: Result = {}
            for table in tables:
                report[table] = _restore_rows(
                    conn, table, (keys_by_table or {}).get(table), key_spec.get(table),
                    explicit=keys_by_table is not None,
                )
            new_fk = fk_guard(conn, fk_before, allow_fk)
    finally:
        conn.close()
    return {"tables": report, "new_fk_violations": new_fk}


def _restore_rows(
    conn: sqlite3.Connection, table: str, keys: Any, key_spec: Any, *, explicit: bool
) -> Result:
    pair = TablePair(conn, table, key_spec)
    info, key = pair.info, pair.key
    if explicit:
        if not isinstance(keys, list):
            raise OpError(f"keys[{table!r}] must be a list of key values")
        wanted = []
        for i, k in enumerate(keys):
            values = k if isinstance(k, list) else [k]
            if len(values) != len(key):
                raise OpError(f"keys[{table!r}][{i}] must have {len(key)} value(s): {key}")
            wanted.append(tuple(from_json(v, f"keys[{table!r}][{i}]") for v in values))
    else:
        added, removed, changed = pair.diff(conn)
        wanted = sorted_keys(added | removed | changed)
    kcols = [f"k{i}" for i in range(len(key))]
    conn.execute("DROP TABLE IF EXISTS temp._rb_keys")
    conn.execute(f"CREATE TEMP TABLE _rb_keys ({', '.join(kcols)})")
    conn.executemany(
        f"INSERT INTO temp._rb_keys VALUES ({', '.join('?' for _ in kcols)})", wanted
    )
    kx = ", ".join(qi(k) for k in key)
    match = f"({kx}) IN (SELECT {', '.join(kcols)} FROM temp._rb_keys)"
    t = qi(table)
    cols = [c for c in info.writable if c in pair.common]
    if "rowid" in key and not info.rowid_alias:
        cols = ["rowid", *cols]
    names = ", ".join(qi(c) for c in cols)
    deleted = conn.execute(f"DELETE FROM main.{t} WHERE {match}").rowcount
    inserted = conn.execute(
        f"INSERT INTO main.{t} ({names}) SELECT {names} FROM other.{t} WHERE {match}"
    ).rowcount
    conn.execute("DROP TABLE temp._rb_keys")
    out: Result = {"restored": len(wanted), "deleted": deleted, "inserted": inserted}
    if pair.missing:
        out["columns_not_in_backup"] = pair.missing
    return out
