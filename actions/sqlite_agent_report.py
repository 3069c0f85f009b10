"""The agent's read-only reports: strategy support, the point picker, data loss.

Part of the SQLite agent (``actions/sqlite_agent.py``), pasted into its source when it is
sent; standard library only.

``strategy_support`` says which of A, B, C the target's schema allows and, for each it
does not, why and which setting to add; its ``items`` are the strategy choice's options
(``disabled`` holds the reason). ``change_points`` lists deployment boundaries found in
the change log (by marker, else by bursts of changes in time, plus the configured one),
each with what it would undo: counts per table and operation.

``data_loss`` compares the database after a rollback with the one before it (the
emergency backup) and says, per table: ``undone`` rows the deployment wrote that are back
as they were; ``lost`` rows where a legitimate write since the chosen backup (or since the
boundary when there is none) is gone, plus rows that changed with no change-log entry to
explain them (``unexplained``); ``changed`` all rows that differ. Without a usable change
log or boundary, ``undone`` and ``lost`` are null ("unknown"), never "everything lost".
The change log's own table and governance_logs count removed rows inside the boundary
(by time, or by governance id) as undone and others as lost; rows added after are the
rollback's own. Access levels are compared as the restriction will leave them: the
snapshot taken before it (``access.before_snapshot``) against the one the rollback will
put back (``access.after_snapshot``, with the ledger's levels for its tag).
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from actions.sqlite_agent import (
    OpError,
    Params,
    Result,
    TableInfo,
    _attach,
    _diff_keys,
    _int,
    _load_snapshot,
    _path,
    connect,
    from_json,
    qi,
    user_tables,
)
from actions.sqlite_agent_changes import (
    LEDGER,
    ChangeLog,
    _governance_filter,
    _hashable,
    access_overrides,
    boundary_where,
    change_key,
    changed_columns,
    ledger_items,
    matches,
    own_condition,
    parse_boundary,
    read_row,
    table_key,
)
from actions.sqlite_agent_strategies import Deployment, _undoable

# rb:body -- everything below is pasted into the agent's source when it is sent

STRATEGY_LABELS = {"A": "A: Selective rollback", "B": "B: Transaction rollback", "C": "C: Full database restore"}
STRATEGY_TEXT = {
    "A": "restore from the backup only the rows the deployment touched",
    "B": "undo the deployment's recorded changes, newest first",
    "C": "replace the whole database with the chosen backup",
}


def _logged_tables(conn: sqlite3.Connection, log: ChangeLog) -> list[str]:
    if not log.cols.get("table_column"):
        return []
    sql = f"SELECT DISTINCT {log.q('table_column')} FROM {log.source()} LIMIT 1000"
    return sorted(str(r[0]) for r in conn.execute(sql) if r[0] is not None)


def _op_counts(changes: list[Result]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for c in changes:
        per = out.setdefault(str(c["table"]), {})
        per[c["op"]] = per.get(c["op"], 0) + 1
    return out


def _summary(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{t} " + " ".join(f"{op[0]}{n}" for op, n in sorted(ops.items()))
                     for t, ops in sorted(counts.items())) or "nothing"


def op_strategy_support(p: Params) -> Result:
    """Which strategies the schema allows (read-only): {strategies, items, mapping, guessed, tables}."""
    db = _path(p, "db")
    boundary = parse_boundary(p.get("boundary"))
    key_spec = p.get("key_columns") or {}
    conn = connect(db, "ro")
    out: Result = {"mapping": None, "guessed": [], "tables": {}, "boundary": None}
    why: dict[str, str | None] = {"A": None, "B": None, "C": None}
    notes: dict[str, list[str]] = {"A": [], "B": [], "C": []}
    try:
        conn.execute("BEGIN")
        try:
            log = ChangeLog(conn, p.get("change_log"))
        except OpError as exc:
            why["A"] = why["B"] = str(exc)
            log = None
        if log is not None:
            out.update(mapping=log.mapping(), guessed=log.guessed)
            if not log.cols.get("table_column"):
                why["A"] = why["B"] = ("the change log does not say which table a change is to: "
                                       "set change_log.table_column")
            elif not log.cols.get("new_column"):
                why["A"] = why["B"] = "the change log has no new values: set change_log.new_column"
            elif not log.cols.get("old_column"):
                why["B"] = "the change log has no old values: set change_log.old_column"
            if not log.cols.get("key_column") and log.shape == "columns":
                why["A"] = why["B"] = "a per-column change log needs the row key: set change_log.key_column"
            if boundary is None and not any(log.cols.get(r) for r in ("marker_column", "time_column")):
                reason = ("no way to tell the deployment's changes: set boundary (marker, deployed_at, "
                          "governance) or change_log.marker_column / change_log.time_column")
                why["A"] = why["A"] or reason
                why["B"] = why["B"] or reason
            keyless = []
            for name in _logged_tables(conn, log):
                table = next((t for t in user_tables(conn) if t.lower() == name.lower()), None)
                if table is None:
                    out["tables"][name] = {"no_key": "not a table of this database"}
                    continue
                try:
                    out["tables"][table] = {"key": table_key(TableInfo(conn, table), key_spec)}
                except OpError as exc:
                    out["tables"][table] = {"no_key": str(exc)}
                    keyless.append(table)
            if keyless and not why["A"]:
                why["A"] = (f"no usable key for {', '.join(keyless)}: set key_columns."
                            f"{keyless[0]}")
            if keyless:
                notes["B"].append(f"changes to {', '.join(keyless)} cannot be undone (no usable key)")
            logged = ", ".join(sorted(out["tables"])) or "none"
            notes["B"].append(f"undoes only what the change log recorded (tables: {logged}); "
                              "unrecorded writes stay")
            if boundary is not None and not why["B"]:
                try:
                    dep = Deployment(conn, log, boundary, key_spec, need_keys=False)
                    cannot = [c for c in dep.changes if c["table"] in dep.no_key
                              or (c["table"] in dep.keys and _undoable(dep.infos[c["table"]], c))]
                    out["boundary"] = {"changes": len(dep.changes), "counts": _op_counts(dep.changes),
                                       "not_undoable": len(cannot)}
                    if cannot:
                        notes["B"].append(f"{len(cannot)} change(s) of the deployment cannot be undone")
                except OpError as exc:
                    out["boundary"] = {"error": str(exc)}
        conn.execute("COMMIT")
    finally:
        conn.close()
    out["strategies"] = {s: {"ok": why[s] is None, "why": why[s], "notes": notes[s]} for s in "ABC"}
    out["items"] = [
        {"value": s, "label": STRATEGY_LABELS[s] + ("" if why[s] is None else " (unavailable)"),
         "description": STRATEGY_TEXT[s] if why[s] is None else f"unavailable: {why[s]}",
         **({"disabled": why[s]} if why[s] else {}),
         **({"note": "; ".join(notes[s])} if notes[s] else {})}
        for s in "ABC"
    ]
    return out


def op_change_points(p: Params) -> Result:
    """Deployment boundaries found in the change log, newest first, with what each would undo."""
    db = _path(p, "db")
    limit = _int(p, "limit", 10, 1)
    gap = _int(p, "gap_minutes", 10, 1)
    configured = parse_boundary(p.get("boundary"))
    suggest = p.get("suggest_marker")
    key_spec = p.get("key_columns") or {}
    unknown = {"value": "", "label": "Unknown: no deployment boundary",
               "description": "data loss is then reported as unknown"}
    allow_unknown = p.get("allow_unknown") is True
    conn = connect(db, "ro")
    points: list[Result] = []
    try:
        conn.execute("BEGIN")
        try:
            log = ChangeLog(conn, p.get("change_log"))
        except OpError as exc:
            if not allow_unknown:
                raise
            return {"items": [{**unknown, "description": f"{unknown['description']} ({exc})"}],
                    "mapping": None, "guessed": []}
        candidates: list[tuple[str, dict[str, Any]]] = []
        if configured is not None:
            candidates.append(("configured boundary", configured))
        if log.cols.get("marker_column"):
            m, o = log.q("marker_column"), log.q("order_column")
            sql = (f"SELECT {m} FROM {log.source()} WHERE {m} IS NOT NULL GROUP BY {m} "
                   f"ORDER BY max({o}) DESC LIMIT ?")
            candidates += [(f"deployment {r[0]}", {"marker": r[0]})
                           for r in conn.execute(sql, (limit,)) if {"marker": r[0]} != configured]
        elif log.cols.get("time_column"):
            t = log.q("time_column")
            found = conn.execute(f"SELECT {t}, julianday({t}) FROM {log.source()} WHERE julianday({t}) "
                                 f"IS NOT NULL ORDER BY julianday({t}) DESC LIMIT 20000").fetchall()
            times, days = [r[0] for r in found], [r[1] for r in found]
            start = 0
            for i in range(1, len(days) + 1):
                if i == len(days) or (days[i - 1] - days[i]) * 1440 > gap:
                    candidates.append(("changes", {"from": times[i - 1], "to": times[start]}))
                    start = i
                    if len(candidates) >= limit:
                        break
        for name, boundary in candidates[:limit]:
            dep = Deployment(conn, log, boundary, key_spec, need_keys=False)
            if not dep.changes:
                continue
            counts = _op_counts(dep.changes)
            cannot = sum(1 for c in dep.changes if c["table"] in dep.no_key
                         or (c["table"] in dep.keys and _undoable(dep.infos[c["table"]], c)))
            first, last = dep.changes[0]["time"], dep.changes[-1]["time"]
            span = f" {first} to {last}" if first is not None else ""
            point = {
                "value": json.dumps(boundary, ensure_ascii=True, sort_keys=True),
                "label": f"{name}{span}",
                "description": f"undoes {len(dep.changes)}: {_summary(counts)}"
                               + (f"; {cannot} cannot be undone" if cannot else ""),
                "counts": counts, "changes": len(dep.changes), "not_undoable": cannot,
            }
            if (suggest and boundary.get("marker") == suggest) or name == "configured boundary":
                point["suggested"] = "yes"
            points.append(point)
        conn.execute("COMMIT")
    finally:
        conn.close()
    if allow_unknown:
        points.append(unknown)
    elif not points:
        raise OpError(f"the change log {log.table!r} holds no deployment to roll back (no marker, no "
                      "burst of changes); set boundary in the target's settings", "bad_boundary")
    return {"items": points, "mapping": log.mapping(), "guessed": log.guessed}


# ---------------------------------------------------------------------------- data loss


def _levels(path: str | None, conn: sqlite3.Connection, schema: str) -> tuple[dict[Any, Any], Result] | None:
    if not path or not os.path.exists(path):
        return None
    doc = _load_snapshot(path)
    levels = {_hashable(from_json(k, "key")): from_json(v, "level") for k, v in doc["rows"]}
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
        h = _hashable(row[akey])
        if h in levels:
            row[acol] = levels[h]
        out[tuple(row[i] for i in kpos)] = tuple(row)
    return out


def op_data_loss(p: Params) -> Result:
    """Per table: rows undone on purpose, legitimate writes gone, rows changed (see module doc)."""
    after, before = _path(p, "db"), _path(p, "before")
    backup = p.get("backup")
    boundary = parse_boundary(p.get("boundary"))
    key_spec = p.get("key_columns") or {}
    access = p.get("access") or {}
    conn = connect(after, "ro")
    tables: dict[str, Result] = {}
    why_unknown = None
    try:
        _attach(conn, before)
        conn.execute("BEGIN")
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
        conn.execute("COMMIT")
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
        added, removed, changed = _diff_keys(conn, name, key, cols)
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
    h = _hashable(values[akey])
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
        gtable, gargs, gwhere = _governance_filter(conn, boundary["governance"], "other")
        found |= {tuple(r) for r in conn.execute(f"SELECT {kx} FROM {gtable} WHERE {gwhere}", gargs)}
    return found & removed

