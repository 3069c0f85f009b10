"""The agent's data-loss figures: what a rollback undid on purpose and what it lost.

``data_loss`` compares the database after a rollback with the one before it (the
emergency backup) and says, per table: ``undone`` rows the deployment wrote that are back
as they were; ``lost`` rows where a legitimate write since the chosen backup (or since the
boundary when there is none) is gone, plus rows that changed with no change-log entry to
explain them (``unexplained``); ``changed`` all rows that differ. Without a usable change
log or boundary, ``undone`` and ``lost`` are null ("unknown"), never "everything lost".
The change log's own table and governance_logs count rows of the database before that are
gone inside the boundary (by time, or by governance id) as undone and others as lost; rows
the rollback wrote itself (ledger "own") and rows added since are neither. Access levels
are compared as the restriction will leave them: the snapshot taken before it
(``access.before_snapshot``) against the one the rollback will put back (the first of
``access.after_snapshots`` that exists, with the ledger's levels for its tag).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from .base import OpError, Params, Result, from_json, path_param, qi
from .changes import LEDGER, ChangeLog, boundary_where, governance_filter, parse_boundary
from .db import attach, connect
from .diff import diff_keys
from .files import load_snapshot
from .rows import (
    Deployment,
    access_overrides,
    change_key,
    changed_columns,
    hashable,
    ledger_items,
    matches,
    own_condition,
    read_row,
    table_key,
)
from .schema import TableInfo, user_tables
from .tx import read_transaction

# ---------------------------------------------------------------------------- data loss


def _levels(path: str | None, conn: sqlite3.Connection, schema: str) -> tuple[dict[Any, Any], Result] | None:
    if not path or not os.path.exists(path):
        return None
    doc = load_snapshot(path)
    levels = {hashable(from_json(k, "key")): from_json(v, "level") for k, v in doc["rows"]}
    levels.update(access_overrides(conn, doc.get("tag"), schema))
    return levels, doc


def _access_rows(conn: sqlite3.Connection, schema: str, info: TableInfo, key: list[str],
                 doc: Result, levels: dict[Any, Any]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    cols = [qi(c) for c in info.columns]
    kpos = [info.columns.index(k) for k in key]
    akey = info.columns.index(info.column(doc["key"]))
    acol = info.columns.index(info.column(doc["column"]))
    out = {}
    for row in conn.execute(f"SELECT {', '.join(cols)} FROM {qi(schema)}.{qi(info.name)}"):
        row = list(row)
        h = hashable(row[akey])
        if h in levels:
            row[acol] = levels[h]
        out[tuple(row[i] for i in kpos)] = tuple(row)
    return out


def op_data_loss(p: Params) -> Result:
    """Per table: rows undone on purpose, legitimate writes gone, rows changed (see module doc)."""
    after, before = path_param(p, "db"), path_param(p, "before")
    backup = p.get("backup")
    boundary = parse_boundary(p.get("boundary"))
    key_spec = p.get("key_columns") or {}
    access = p.get("access") or {}
    conn = connect(after, "ro")
    tables: dict[str, Result] = {}
    why_unknown = None
    try:
        attach(conn, before)
        with read_transaction(conn):
            log = dep = None
            legit: dict[tuple[str, tuple[Any, ...]], Result] = {}
            try:
                log = ChangeLog(conn, p.get("change_log"), schema="other")
                if boundary is None:
                    raise OpError("no deployment boundary was chosen", "bad_boundary")
                dep = Deployment(conn, log, boundary, key_spec, need_keys=False)
                position = _position(backup, log) if backup else None
                if position is None:
                    position = (min(c["id"] for c in dep.changes) - 1) if dep.changes else None
                if position is not None:
                    own, own_args = own_condition(conn, log)
                    where, args = boundary_where(conn, log, boundary)
                    for c in log.read(conn, f"{log.q('order_column')} > ? AND NOT ({where}) AND {own}",
                                      [position, *args, *own_args]):
                        table = next((t for t in dep.keys if isinstance(c["table"], str)
                                      and t.lower() == c["table"].lower()), None)
                        if table is None:
                            table = _table_named(conn, c["table"])
                            if table is None:
                                continue
                            try:
                                dep.keys[table] = table_key(TableInfo(conn, table, "other"), key_spec)
                                dep.infos[table] = TableInfo(conn, table, "other")
                            except OpError:
                                continue
                        c["table"] = table
                        c["key"] = change_key(c, dep.keys[table])
                        legit[(table, c["key"])] = c  # the last legitimate change of each row
            except OpError as exc:
                why_unknown = str(exc)
                dep = None
            before_levels = _levels(access.get("before_snapshot"), conn, "other")
            after_levels = None
            for path in access.get("after_snapshots") or []:
                after_levels = _levels(path, conn, "main")
                if after_levels is not None:
                    break
            mine = {t.lower(): t for t in user_tables(conn, "main")}
            for name in sorted(set(user_tables(conn, "other")) | set(mine.values())):
                if name.lower() == LEDGER.lower():
                    continue
                tables[name] = _table_loss(conn, name, mine, log, dep, legit, boundary, key_spec,
                                           before_levels, after_levels)
    finally:
        conn.close()
    known = why_unknown is None
    total = {k: (None if not known and k != "changed" else sum((t.get(k) or 0) for t in tables.values()))
             for k in ("undone", "lost", "changed", "unexplained")}
    return {"tables": tables, "known": known, "why_unknown": why_unknown, "total": total}


def _table_named(conn: sqlite3.Connection, name: Any) -> str | None:
    if not isinstance(name, str):
        return None
    return next((t for t in user_tables(conn, "other") if t.lower() == name.lower()), None)


def _position(backup: Any, log: ChangeLog) -> Any:
    """The newest change-log order value the backup holds (where it stands in the log)."""
    if not isinstance(backup, str) or not os.path.isfile(backup):
        return None
    conn = connect(backup, "ro")
    try:
        if log.table.lower() not in {t.lower() for t in user_tables(conn)}:
            return None
        col = "rowid" if log.cols["order_column"] == "rowid" else qi(str(log.cols["order_column"]))
        got = conn.execute(f"SELECT max({col}) FROM {qi(log.table)}").fetchone()[0]
        return 0 if got is None else got
    finally:
        conn.close()


def _table_loss(conn: sqlite3.Connection, name: str, mine: dict[str, str], log: Any, dep: Any,
                legit: dict[Any, Result], boundary: Any, key_spec: Any, before_levels: Any,
                after_levels: Any) -> Result:
    if name.lower() not in mine or name not in user_tables(conn, "other"):
        return {"changed": None, "undone": None, "lost": None, "note": "table only on one side"}
    info = TableInfo(conn, name, "main")
    try:
        key = table_key(info, key_spec)
    except OpError:
        key = list(info.key)
    theirs = {c.lower() for c in TableInfo(conn, name, "other").columns}
    cols = [c for c in info.columns if c.lower() in theirs]
    snap = (before_levels or (None, None))[1]
    if before_levels and after_levels and snap and snap.get("table", "").lower() == name.lower():
        b = _access_rows(conn, "other", TableInfo(conn, name, "other"), key, snap, before_levels[0])
        a = _access_rows(conn, "main", info, key, snap, after_levels[0])
        added, removed = set(a) - set(b), set(b) - set(a)
        changed = {k for k in set(a) & set(b) if a[k] != b[k]}
    else:
        added, removed, changed = diff_keys(conn, name, key, cols)
    diff = added | removed | changed
    out: Result = {"changed": len(diff), "undone": None, "lost": None, "unexplained": 0}
    if dep is None or log is None:
        return out
    undone = lost = unexplained = 0
    if name.lower() == log.table.lower() or name.lower() == "governance_logs":
        # Rows of the log and of governance_logs that the database before held and no longer
        # holds as they were (a restored log reuses ids): the deployment's, or lost. Rows the
        # rollback wrote itself (ledger "own") and rows added since are neither.
        gone = removed | changed
        if name.lower() == log.table.lower() and len(key) == 1:
            own = ledger_items(conn, "own", "other")
            gone = {k for k in gone if f"{log.table}:{k[0]}" not in own}
        inside = _inside(conn, log, boundary, name, key, gone)
        undone = len(gone & inside)
        return {**out, "changed": len(gone), "undone": undone, "lost": len(gone) - undone, "unexplained": 0}
    touched = {k for (t, k) in dep.rows if t == name}
    for k in diff:
        row = read_row(conn, "main", info, key, k)
        if after_levels and snap and snap.get("table", "").lower() == name.lower() and row is not None:
            values = _access_rows_one(row, info, snap, after_levels[0])
            row = {c.lower(): values[i] for i, c in enumerate(info.columns)}
        change = legit.get((name, k))
        if k in touched:
            undone += 1
        if change is not None and not _present(row, change):
            lost += 1
        elif change is None and k not in touched:
            unexplained += 1
    return {**out, "undone": undone, "lost": lost + unexplained, "unexplained": unexplained}


def _access_rows_one(row: dict[str, Any], info: TableInfo, doc: Result, levels: dict[Any, Any]) -> list[Any]:
    values = [row[c.lower()] for c in info.columns]
    akey = info.columns.index(info.column(doc["key"]))
    acol = info.columns.index(info.column(doc["column"]))
    h = hashable(values[akey])
    if h in levels:
        values[acol] = levels[h]
    return values


def _present(row: dict[str, Any] | None, change: Result) -> bool:
    """The legitimate change's effect is still in the row."""
    if change["op"] == "DELETE":
        return row is None
    return matches(row, change["new"], changed_columns(change) if change["op"] == "UPDATE" else None)


def _inside(conn: sqlite3.Connection, log: ChangeLog, boundary: Any, name: str, key: list[str],
            removed: set[Any]) -> set[Any]:
    """Rows (of the database before) of the log or governance table that belong to the deployment."""
    if not removed:
        return set()
    where, args = boundary_where(conn, log, boundary)
    kx = ", ".join(qi(k) for k in key)
    if name.lower() == log.table.lower():
        sql = f"SELECT {kx} FROM other.{qi(log.table)} WHERE {where}"
        return {tuple(r) for r in conn.execute(sql, args)} & removed
    ginfo = TableInfo(conn, name, "other")
    ts = next((c for c in ginfo.columns if c.lower() == "timestamp"), None)
    found: set[Any] = set()
    if log.cols.get("governance_column"):
        sql = (f"SELECT {kx} FROM other.{qi(name)} WHERE rowid IN (SELECT {log.q('governance_column')} "
               f"FROM other.{qi(log.table)} WHERE {where})")
        found |= {tuple(r) for r in conn.execute(sql, args)}
    if ts and log.cols.get("time_column"):
        t = log.q("time_column")
        sql = (f"SELECT {kx} FROM other.{qi(name)} WHERE julianday({qi(ts)}) BETWEEN "
               f"(SELECT min(julianday({t})) FROM other.{qi(log.table)} WHERE {where}) AND "
               f"(SELECT max(julianday({t})) FROM other.{qi(log.table)} WHERE {where})")
        found |= {tuple(r) for r in conn.execute(sql, args + args)}
    if isinstance(boundary, dict) and "governance" in boundary:
        gtable, gargs, gwhere = governance_filter(conn, boundary["governance"], "other")
        found |= {tuple(r) for r in conn.execute(f"SELECT {kx} FROM {gtable} WHERE {gwhere}", gargs)}
    return found & removed
