"""The agent's read-only reports: strategy support and the point picker.

``strategy_support`` says which of A, B, C the target's schema allows and, for each it
does not, why and which setting to add; its ``items`` are the strategy choice's options
(``disabled`` holds the reason). ``change_points`` lists deployment boundaries found in
the change log (by marker, else by bursts of changes in time, plus the configured one),
each with what it would undo: counts per table and operation.

``data_loss`` is in ``loss``.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .base import OpError, Params, Result, int_param, path_param
from .changes import ChangeLog, parse_boundary
from .db import connect
from .rows import Deployment, table_key
from .schema import TableInfo, user_tables
from .strategies import undoable
from .tx import read_transaction

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
    db = path_param(p, "db")
    boundary = parse_boundary(p.get("boundary"))
    key_spec = p.get("key_columns") or {}
    conn = connect(db, "ro")
    out: Result = {"mapping": None, "guessed": [], "tables": {}, "boundary": None}
    why: dict[str, str | None] = {"A": None, "B": None, "C": None}
    notes: dict[str, list[str]] = {"A": [], "B": [], "C": []}
    try:
        with read_transaction(conn):
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
                                  or (c["table"] in dep.keys and undoable(dep.infos[c["table"]], c))]
                        out["boundary"] = {"changes": len(dep.changes), "counts": _op_counts(dep.changes),
                                           "not_undoable": len(cannot)}
                        if cannot:
                            notes["B"].append(f"{len(cannot)} change(s) of the deployment cannot be undone")
                    except OpError as exc:
                        out["boundary"] = {"error": str(exc)}
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
    db = path_param(p, "db")
    limit = int_param(p, "limit", 10, 1)
    gap = int_param(p, "gap_minutes", 10, 1)
    configured = parse_boundary(p.get("boundary"))
    suggest = p.get("suggest_marker")
    key_spec = p.get("key_columns") or {}
    unknown = {"value": "", "label": "Unknown: no deployment boundary",
               "description": "data loss is then reported as unknown"}
    allow_unknown = p.get("allow_unknown") is True
    conn = connect(db, "ro")
    points: list[Result] = []
    try:
        with read_transaction(conn):
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
                             or (c["table"] in dep.keys and undoable(dep.infos[c["table"]], c)))
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
    finally:
        conn.close()
    if allow_unknown:
        points.append(unknown)
    elif not points:
        raise OpError(f"the change log {log.table!r} holds no deployment to roll back (no marker, no "
                      "burst of changes); set boundary in the target's settings", "bad_boundary")
    return {"items": points, "mapping": log.mapping(), "guessed": log.guessed}
