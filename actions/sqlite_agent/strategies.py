"""The agent's strategies A (selective) and B (transaction rollback) over a change log.

The change log, the boundary, row keys and the ledger are described in ``changes``.

A, ``selective_restore`` with a boundary: every row a change inside the boundary touched
is taken from the backup (deleted when the backup has no such row), unless it is a
conflict: a change outside the boundary came later on that row, or the row no longer
holds what the deployment's last change wrote. Conflicts are kept as they are and listed;
``take`` [[table, key...], ...] takes those rows from the backup anyway (a person's choice).
Rows already restored by an earlier run (ledger "restored") are left alone.

B, ``transaction_rollback``: the boundary's changes, newest first, each undone only when
the row still holds the change's new values in the columns it changed (an UPDATE writes
back only those columns; an INSERT is deleted; a DELETE re-inserted), else a conflict kept
as it is (and every older change of that row with it); ``take`` [change id, ...] forces
those. Undone ids go to the ledger in the same transaction, so a re-run after a crash at
any point undoes nothing twice; log rows written meanwhile (triggers) are recorded as the
rollback's own and never undone. Changes the log cannot undo (an UPDATE without old
values, a DELETE without every NOT NULL column, a table without a usable key) are listed
as ``not_undoable`` and kept.

Both keep the deployment's change-log and governance rows (the record of what happened)
and add none but the ledger's; with ``access`` (the restriction's params) they see and
restore the real access levels under the maintenance restriction and leave it in force.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .base import OpError, Params, Result, bool_param, from_json, path_param, qi, to_json
from .changes import ChangeLog, parse_boundary
from .db import attach, connect
from .rows import (
    AccessOverlay,
    Deployment,
    changed_columns,
    key_text,
    ledger_ensure,
    ledger_items,
    ledger_put,
    log_item,
    log_max,
    mark_own,
    matches,
    read_row,
)
from .schema import TableInfo, fk_guard, fk_violations, resolve_tables, user_tables
from .tx import write_transaction


def _common(p: Params) -> tuple[str, Any, dict[str, Any] | None, Any]:
    db = path_param(p, "db")
    boundary = parse_boundary(p.get("boundary"))
    key_spec = p.get("key_columns") or {}
    if not isinstance(key_spec, dict):
        raise OpError("parameter 'key_columns' must be an object or null")
    return db, p.get("change_log"), boundary, key_spec


def _legacy_boundary(p: Params) -> dict[str, Any]:
    """since_id / since_time / deployment, as a boundary."""
    since_id, since_time = p.get("since_id"), p.get("since_time")
    if (since_id is None) == (since_time is None):
        raise OpError("give a boundary, or exactly one of 'since_id' and 'since_time'")
    out: dict[str, Any] = {}
    if since_id is not None:
        if isinstance(since_id, str) and since_id.strip().lstrip("-").isdigit():
            since_id = int(since_id)  # a point picked from a list arrives as text
        if isinstance(since_id, bool) or not isinstance(since_id, int):
            raise OpError("parameter 'since_id' must be an integer")
        out["from_order"] = since_id
    else:
        if not isinstance(since_time, str):
            raise OpError("parameter 'since_time' must be a date-time string")
        out["from"] = since_time
    if p.get("deployment") is not None:
        if not isinstance(p["deployment"], str):
            raise OpError("parameter 'deployment' must be a string or null")
        out["marker"] = p["deployment"]
    return out


def _conflict(change: Result, why: str) -> Result:
    return {"id": change["id"], "table": change["table"], "key": [to_json(v) for v in change["key"]],
            "operation": change["op"], "why": why}


# ---------------------------------------------------------------------------- strategy B


def undoable(info: TableInfo, change: Result) -> str | None:
    """Why the log cannot undo this change, or None."""
    if change["op"] == "UPDATE" and not change["old"]:
        return "an UPDATE without old values"
    if change["op"] == "DELETE":
        have = {k.lower() for k in (change["old"] or {})}
        needed = [c for c in info.notnull_no_default if c.lower() not in have]
        if not change["old"] or needed:
            return "a DELETE without the old row" + (f" (missing {', '.join(needed)})" if needed else "")
    return None


def _undo(conn: sqlite3.Connection, info: TableInfo, key: list[str], change: Result, force: bool) -> str | None:
    """Undo one change; returns why it is a conflict instead, or None when done."""
    t = qi(info.name)
    where = " AND ".join(f"{qi(k)} = ?" for k in key)
    current = read_row(conn, "main", info, key, change["key"])
    if change["op"] == "INSERT":
        if current is None:
            return "the inserted row is gone"
        if not force and not matches(current, change["new"]):
            return "the row changed after this insert"
        conn.execute(f"DELETE FROM {t} WHERE {where}", list(change["key"]))
        return None
    if change["op"] == "UPDATE":
        if current is None:
            return "the updated row is gone"
        cols = changed_columns(change)
        if not force and not matches(current, change["new"], cols):
            return "the row no longer holds this change's values"
        old = {k.lower(): v for k, v in change["old"].items()}
        sets = [c for c in info.writable if c.lower() in cols and c.lower() in old]
        if sets:
            conn.execute(f"UPDATE {t} SET {', '.join(f'{qi(c)} = ?' for c in sets)} WHERE {where}",
                         [old[c.lower()] for c in sets] + list(change["key"]))
        return None
    if current is not None:
        if not force:
            return "a row with the deleted row's key exists again"
        conn.execute(f"DELETE FROM {t} WHERE {where}", list(change["key"]))
    old = {k.lower(): v for k, v in change["old"].items()}
    names = [c for c in info.writable if c.lower() in old]
    conn.execute(f"INSERT INTO {t} ({', '.join(qi(c) for c in names)}) VALUES ({', '.join('?' for _ in names)})",
                 [old[c.lower()] for c in names])
    return None


def op_transaction_rollback(p: Params) -> Result:
    """Strategy B: undo the boundary's changes newest first, each only if nobody changed the row since.

    Params: db, change_log, boundary (or since_id | since_time [+ deployment]), key_columns,
    take [change id...], on_conflict "keep"|"stop", ignore_drift, access, tag,
    allow_fk_violations, history_table (= change_log.table). Result: undone, by_table
    {t: {INSERT, UPDATE, DELETE}}, rows {t: distinct rows undone}, conflicts, not_undoable,
    already_undone, recorded_by_triggers, undone_rows, mapping, guessed, new_fk_violations.
    """
    db, spec, boundary, key_spec = _common(p)
    if p.get("history_table") is not None:
        spec = {**(spec or {}), "table": p["history_table"]}
    if boundary is None:
        boundary = _legacy_boundary(p)
    on_conflict = p.get("on_conflict", "keep")
    if on_conflict not in ("keep", "stop"):
        raise OpError("parameter 'on_conflict' must be 'keep' or 'stop'")
    take = {str(t.get("id") if isinstance(t, dict) else t) for t in take_param(p.get("take"))}
    force_all = bool_param(p, "ignore_drift")
    tag = p.get("tag")
    conn = connect(db, "rw")
    try:
        log = ChangeLog(conn, spec)
        log.need("strategy B", "table_column", "new_column")
        with write_transaction(conn):
            access = AccessOverlay(conn, p.get("access"))
            dep = Deployment(conn, log, boundary, key_spec, need_keys=False)
            done = ledger_items(conn, "undo")
            todo = [c for c in reversed(dep.changes) if log_item(log, c["id"]) not in done]
            before_max = log_max(conn, log)
            access.lift()
            fk_before = fk_violations(conn)
            by_table: dict[str, dict[str, int]] = {}
            rows: dict[str, set[str]] = {}
            conflicts: list[Result] = []
            not_undoable: list[Result] = []
            blocked: set[tuple[str, tuple[Any, ...]]] = set()
            undone: list[Result] = []
            for change in todo:
                table = change["table"]
                if table in dep.no_key:
                    not_undoable.append({"id": change["id"], "table": table, "operation": change["op"],
                                         "why": dep.no_key[table]})
                    continue
                info, key = dep.infos[table], dep.keys[table]
                ident = (table, change["key"])
                why = undoable(info, change)
                if why:
                    not_undoable.append(_conflict(change, why))
                    blocked.add(ident)
                    continue
                force = force_all or str(change["id"]) in take
                if ident in blocked and not force:
                    conflicts.append(_conflict(change, "a newer change of this row is kept"))
                    continue
                why = _undo(conn, info, key, change, force)
                if why:
                    conflicts.append(_conflict(change, why))
                    blocked.add(ident)
                    continue
                undone.append(change)
                by_table.setdefault(table, {"INSERT": 0, "UPDATE": 0, "DELETE": 0})[change["op"]] += 1
                rows.setdefault(table, set()).add(key_text(table, change["key"]))
            if (conflicts or not_undoable) and on_conflict == "stop":
                raise OpError(f"{len(conflicts) + len(not_undoable)} change(s) cannot be undone cleanly; "
                              "nothing changed", "conflict", (conflicts + not_undoable)[:50])
            by_trigger = mark_own(conn, log, before_max, tag)
            if undone:
                ledger_ensure(conn)
                ledger_put(conn, "undo", [log_item(log, c["id"]) for c in undone], tag)
            access.settle()
            new_fk = fk_guard(conn, fk_before, bool_param(p, "allow_fk_violations"))
    finally:
        conn.close()
    return {
        "undone": len(undone),
        "by_table": by_table,
        "rows": {t: len(v) for t, v in rows.items()},
        "conflicts": conflicts,
        "conflict_count": len(conflicts),
        "not_undoable": not_undoable,
        "already_undone": len(dep.changes) - len(todo),
        "kept_records": len(dep.records),
        "recorded_by_triggers": by_trigger,
        "undone_rows": [_public(c) for c in undone[:1000]],
        "mapping": log.mapping(),
        "guessed": log.guessed,
        "new_fk_violations": new_fk,
    }


def _public(change: Result) -> Result:
    return {"id": change["id"], "table": change["table"], "key": [to_json(v) for v in change["key"]],
            "operation": change["op"], "time": change["time"], "deployment": change["marker"]}


# ---------------------------------------------------------------------------- strategy A


def selective_by_log(p: Params) -> Result:
    """Strategy A over the change log (see the module docstring); one transaction."""
    db, spec, boundary, key_spec = _common(p)
    if boundary is None:
        raise OpError("strategy A needs the deployment's boundary (pick a point, or set the target's "
                      "boundary)", "bad_boundary")
    backup = path_param(p, "backup")
    tag = p.get("tag")
    take = set()
    for t in take_param(p.get("take")):  # [table, key...] or a conflict as listed: {table, key}
        row = [t.get("table"), *(t.get("key") or [])] if isinstance(t, dict) else t
        if not isinstance(row, list) or len(row) < 2:
            raise OpError("parameter 'take' must list [table, key...] rows or conflicts {table, key}")
        take.add(json.dumps([str(row[0]), *row[1:]], ensure_ascii=True, sort_keys=True))
    wanted = p.get("tables")
    conn = connect(db, "rw")
    try:
        attach(conn, backup)
        log = ChangeLog(conn, spec)
        log.need("strategy A", "table_column")
        with write_transaction(conn):
            access = AccessOverlay(conn, p.get("access"))
            dep = Deployment(conn, log, boundary, key_spec)
            in_backup = {t.lower() for t in user_tables(conn, "other")}
            only = None if wanted is None else {t.lower() for t in resolve_tables(conn, wanted)}
            missing = sorted(t for t in dep.infos if t.lower() not in in_backup)
            if missing:
                raise OpError(f"table(s) {', '.join(missing)} not in the backup {backup}", "bad_table")
            later = dep.later_elsewhere(conn)
            done = ledger_items(conn, "restored")
            before_max = log_max(conn, log)
            access.lift()
            fk_before = fk_violations(conn)
            report: dict[str, Result] = {}
            conflicts: list[Result] = []
            restored: list[str] = []
            for (table, key), changes in dep.rows.items():
                if only is not None and table.lower() not in only:
                    continue
                ident = key_text(table, key)
                stats = report.setdefault(table, {"restored": 0, "deleted": 0, "inserted": 0,
                                                  "conflicts": 0, "already_restored": 0})
                if ident in done:
                    stats["already_restored"] += 1
                    continue
                info, cols = dep.infos[table], dep.keys[table]
                last = changes[-1]
                current = read_row(conn, "main", info, cols, key)
                why = None
                if (table, key) in later:
                    why = f"changed again after the deployment (change {later[(table, key)]['id']})"
                elif last["op"] == "DELETE" and current is not None:
                    why = "deleted by the deployment, present again"
                elif last["op"] != "DELETE" and current is None:
                    why = "written by the deployment, deleted since"
                elif last["op"] != "DELETE" and not matches(current, last["new"], changed_columns(last)
                                                            if last["op"] == "UPDATE" else None):
                    why = "no longer holds what the deployment wrote"
                if why and ident not in take:
                    stats["conflicts"] += 1
                    conflicts.append({**_conflict(last, why), "ids": [c["id"] for c in changes]})
                    continue
                where = " AND ".join(f"{qi(k)} = ?" for k in cols)
                stats["deleted"] += conn.execute(f"DELETE FROM main.{qi(table)} WHERE {where}",
                                                 list(key)).rowcount
                names = ", ".join(qi(c) for c in info.writable)
                stats["inserted"] += conn.execute(
                    f"INSERT INTO main.{qi(table)} ({names}) SELECT {names} FROM other.{qi(table)} "
                    f"WHERE {where}", list(key)).rowcount
                stats["restored"] += 1
                restored.append(ident)
            by_trigger = mark_own(conn, log, before_max, tag)
            if restored:
                ledger_ensure(conn)
                ledger_put(conn, "restored", restored, tag)
            access.settle()
            new_fk = fk_guard(conn, fk_before, bool_param(p, "allow_fk_violations"))
    finally:
        conn.close()
    return {"tables": report, "conflicts": conflicts, "conflict_count": len(conflicts), "restored": len(restored),
            "recorded_by_triggers": by_trigger, "mapping": log.mapping(), "guessed": log.guessed,
            "new_fk_violations": new_fk}


def take_param(value: Any) -> list[Any]:
    """A ``take`` list given as JSON text (a choice's value) or a list."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise OpError("parameter 'take' is not a JSON list") from None
    if not isinstance(value, list):
        raise OpError("parameter 'take' must be a list")
    return [v if isinstance(v, (list, dict)) else from_json(v, "take") for v in value]
