"""The maintenance restriction: save every row's access level, restrict, and put the levels back."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from .base import (
    SNAPSHOT_FORMAT,
    OpError,
    Params,
    Result,
    from_json,
    key_of,
    now_iso,
    path_param,
    qi,
    str_param,
    to_json,
)
from .changes import ChangeLog
from .db import connect
from .files import load_snapshot, write_json_atomic
from .rows import access_overrides, log_max, mark_own
from .schema import TableInfo, resolve_tables
from .tx import kill_point, write_transaction


def _access_names(conn: sqlite3.Connection, p: Params, doc: Result | None) -> tuple[str, ...]:
    """(table, key column, level column), checked against the schema and the snapshot."""
    defaults = {"table": "user_permissions", "key": "user_id", "column": "access_level"}
    names = []
    for field, default in defaults.items():
        given = p.get(field)
        if doc is not None:
            if given is not None and str(given).lower() != str(doc.get(field)).lower():
                raise OpError(
                    f"snapshot was taken for {field} {doc.get(field)!r}, not {given!r}",
                    "bad_snapshot",
                )
            given = doc.get(field)
        value = default if given is None else given
        if not isinstance(value, str) or not value:
            raise OpError(f"parameter {field!r} must be a non-empty name")
        names.append(value)
    table = resolve_tables(conn, [names[0]])[0]
    info = TableInfo(conn, table)
    return table, info.column(names[1], "key column"), info.column(names[2])


def _own_log(conn: sqlite3.Connection, p: Params) -> tuple[Any, Any]:
    """The change log (``change_log`` param, else change_history when it exists) and its newest
    order value, so rows a trigger writes for the bot's own change are marked as the rollback's."""
    spec = p.get("change_log")
    try:
        log = ChangeLog(conn, spec)
    except OpError:
        if spec:
            raise
        return None, None
    return log, log_max(conn, log)


def op_restrict_access(p: Params) -> Result:
    """Save every row's level to the snapshot file FIRST, then restrict non-exempt rows."""
    db = path_param(p, "db")
    snapshot = path_param(p, "snapshot")
    level = from_json(p.get("level", "read_only"), "level")
    exempt = p.get("exempt_roles", ["superuser", "emergency_admin"])
    if not isinstance(exempt, list) or not all(isinstance(r, str) for r in exempt):
        raise OpError("parameter 'exempt_roles' must be a list of strings")
    tag = p.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise OpError("parameter 'tag' must be a string (e.g. the incident id) or null")
    conn = connect(db, "rw")
    try:
        table, key, column = _access_names(conn, p, None)
        role = TableInfo(conn, table).column(str_param(p, "role_column", "role"), "role column")
        t, k, c, r = qi(table), qi(key), qi(column), qi(role)
        with write_transaction(conn):  # nobody adds a row between snapshot and update
            log, log_before = _own_log(conn, p)
            rows = conn.execute(f"SELECT {k}, {c} FROM {t} ORDER BY {k}").fetchall()
            keys = [key_of(row[0]) for row in rows]
            if any(row[0] is None for row in rows) or len(set(keys)) != len(keys):
                raise OpError(f"{table}.{key} must be unique and not NULL to key a snapshot")
            kept = 0
            if os.path.exists(snapshot):  # a re-run: keep the originals already saved
                doc = load_snapshot(snapshot)
                _access_names(conn, {"table": table, "key": key, "column": column}, doc)
                if doc.get("db") != db or doc.get("tag") != tag:
                    raise OpError(
                        f"snapshot {snapshot} belongs to another run (db {doc.get('db')!r}, "
                        f"tag {doc.get('tag')!r}); refusing to mix up original levels",
                        "bad_snapshot",
                    )
                known = {key_of(from_json(row[0])) for row in doc["rows"]}
                kept = len(known)
                new = [row for row in rows if key_of(row[0]) not in known]
                if new:
                    doc["rows"].extend([to_json(v) for v in row] for row in new)
                    doc["merged_at"] = now_iso()
                    write_json_atomic(snapshot, doc)
            else:
                new = rows
                doc = {
                    "format": SNAPSHOT_FORMAT,
                    "db": db,
                    "table": table,
                    "key": key,
                    "column": column,
                    "created_at": now_iso(),
                    "tag": tag,
                    "rows": [[to_json(v) for v in row] for row in rows],
                }
                write_json_atomic(snapshot, doc)
            kill_point("restrict:snapshot_saved")
            marks = ", ".join("?" for _ in exempt)
            cur = conn.execute(
                f"UPDATE {t} SET {c} = ? WHERE {r} IS NULL OR {r} NOT IN ({marks})",
                [level, *exempt],
            )
            if log is not None:  # history a trigger wrote for the restriction is ours
                mark_own(conn, log, log_before, tag)
    finally:
        conn.close()
    return {
        "restricted": cur.rowcount,
        "snapshot": snapshot,
        "saved": len(new),
        "already_saved": kept,
        "rows": len(rows),
        "exempt_roles": exempt,
    }


def op_restore_access(p: Params) -> Result:
    """Set every row's level back to exactly the value saved in the snapshot (``prefer_snapshot``
    when that file exists), or the level a strategy recorded for the row in the ledger."""
    db = path_param(p, "db")
    snapshot = path_param(p, "snapshot")
    preferred = path_param(p, "prefer_snapshot", required=False)
    if preferred and os.path.exists(preferred):  # a full restore's snapshot of the restored levels
        snapshot = preferred
    doc = load_snapshot(snapshot)
    conn = connect(db, "rw")
    try:
        table, key, column = _access_names(conn, p, doc)
        t, k, c = qi(table), qi(key), qi(column)
        restored, missing, changed = 0, [], 0
        with write_transaction(conn):
            log, log_before = _own_log(conn, p)
            # Levels a strategy put back under the restriction (the ledger) win over the
            # snapshot: after the rollback, access levels are the chosen point's.
            overrides = access_overrides(conn, doc.get("tag"))
            rows = [[from_json(k, "key"), from_json(v, "level")] for k, v in doc["rows"]]
            seen = set()
            for i, (value, _level) in enumerate(rows):
                seen.add(key_of(value))
                if key_of(value) in overrides:
                    rows[i][1] = overrides[key_of(value)]
            rows += [[k[1] if isinstance(k, tuple) else k, v] for k, v in overrides.items() if k not in seen]
            for value, level in rows:
                raw_key = to_json(value)
                cur = conn.execute(
                    f"UPDATE {t} SET {c} = ? WHERE {k} = ? AND {c} IS NOT ?", (level, value, level)
                )
                if cur.rowcount:
                    changed += cur.rowcount
                    restored += 1
                elif conn.execute(f"SELECT 1 FROM {t} WHERE {k} = ?", (value,)).fetchone():
                    restored += 1
                else:
                    missing.append(raw_key)
            total = conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            if log is not None:
                mark_own(conn, log, log_before, doc.get("tag"))
    finally:
        conn.close()
    return {
        "restored": restored,
        "changed": changed,
        "missing": missing,
        "not_in_snapshot": total - restored,
        "snapshot": snapshot,
    }
