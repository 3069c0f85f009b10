"""The agent's change log: the schema contract, the deployment boundary, the ledger.

Standard library only, like the whole agent.

The change log ("change_log" param, every key optional; what is not given is looked up
among common column names and reported as ``guessed``, never used silently)::

    {"table": "change_history", "shape": "rows" | "columns",
     "table_column": "table_name", "key_column": "record_id", "column_column": null,
     "old_column": "old_values", "new_column": "new_values", "operation_column": "operation",
     "time_column": "changed_at", "marker_column": "deployment",
     "governance_column": "governance_log_id", "order_column": "id"}

Shape "rows": old/new hold JSON objects of the row's columns (whole or partial; blobs as
{"$blob_b64": ...}). Shape "columns": one log row per changed column (column_column names
it), old/new hold that column's values. The row key comes from the JSON row when it holds
the table's key columns, else from key_column (a JSON array for a composite key). The
operation is read from operation_column (INSERT/UPDATE/DELETE, I/U/D, create/...) or, when
there is none, from which of old/new is NULL.

The boundary ("boundary" param, a JSON object or its text; the parts given are ANDed)::

    {"marker": "phase-3.0.0"}           rows carrying the marker, and rows with a NULL marker
                                         inside the marked rows' time span (triggers seldom
                                         know the release)
    {"from": "<time>", "to": "<time>"}  time_column between the two (to: open end)
    {"from_order": 41, "to_order": 90}  order_column in (from_order, to_order]
    {"governance": {"resource_id": "of-bev-phase-3", "details.version": "phase-3.0.0"}}
                                         governance_logs rows matching every field
                                         ("col.path" reads JSON); their ids through
                                         governance_column, and their time span

Row keys: "key_columns" {table: column | [columns]}; else the table's primary key. A table
with neither has no usable key and is refused by name.

The ledger: table ``_rollback_bot_ledger`` (kind, item, tag, value, at) in the target
database, written in the same transaction as the change it records: "undo" (a change id
strategy B undid: never undone twice), "own" (a change-log row written while the rollback
wrote, e.g. by a trigger: never undone, never counted as the deployment's), "restored" (a
row strategy A took from the backup), "access" (the level a row must get back when the
maintenance restriction is lifted, when a strategy changed it under the restriction).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from .base import OpError, Result, from_json, qi
from .schema import TableInfo, resolve_tables, user_tables

LEDGER = "_rollback_bot_ledger"
LOG_ROLES = (
    "table_column", "key_column", "column_column", "old_column", "new_column",
    "operation_column", "time_column", "marker_column", "governance_column", "order_column",
)
#: Common names tried for each role, in order, when the setting is not given.
LOG_GUESSES: dict[str, tuple[str, ...]] = {
    "table_column": ("table_name", "tablename", "table", "tbl", "entity", "entity_type",
                     "object_type", "target_table", "model"),
    "key_column": ("record_id", "row_id", "row_key", "record_key", "entity_id", "object_id",
                   "target_id", "pk", "key"),
    "column_column": ("column_name", "field_name", "field", "attribute", "column"),
    "old_column": ("old_values", "old_value", "old_data", "old_row", "before", "previous",
                   "old"),
    "new_column": ("new_values", "new_value", "new_data", "new_row", "after", "current",
                   "new"),
    "operation_column": ("operation", "op", "action", "change_type", "event", "kind", "type"),
    "time_column": ("changed_at", "created_at", "timestamp", "logged_at", "at", "time", "ts"),
    "marker_column": ("deployment", "deployment_id", "release", "release_tag", "version",
                      "deploy_id", "migration"),
    "governance_column": ("governance_log_id",),
}
OPERATIONS = {"I": "INSERT", "C": "INSERT", "U": "UPDATE", "D": "DELETE", "R": "DELETE"}


def jsonish(value: Any) -> Any:
    """A change-log JSON cell as a Python value (None stays None)."""
    if value is None or isinstance(value, (int, float, bytes)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


class ChangeLog:
    """A target's change log, its columns resolved against the schema."""

    def __init__(self, conn: sqlite3.Connection, spec: Any, schema: str = "main") -> None:
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise OpError("parameter 'change_log' must be an object or null")
        unknown = sorted(set(spec) - {"table", "shape", *LOG_ROLES})
        if unknown:
            raise OpError(f"change_log: unknown key(s) {', '.join(unknown)}")
        name = spec.get("table") or "change_history"
        if not isinstance(name, str):
            raise OpError("change_log.table must be a table name")
        known = {t.lower(): t for t in user_tables(conn, schema)}
        if name.lower() not in known:
            raise OpError(
                f"no change log: table {name!r} does not exist (set change_log.table)",
                "no_change_log",
            )
        self.table = known[name.lower()]
        self.schema = schema
        self.info = TableInfo(conn, self.table, schema)
        self.cols: dict[str, str | None] = {}
        self.guessed: list[str] = []
        have = {c.lower(): c for c in self.info.columns}
        for role in LOG_ROLES:
            given = spec.get(role)
            if given == "":  # said to be absent: not looked for
                self.cols[role] = None
                continue
            if given is not None:
                if not isinstance(given, str) or given.lower() not in have:
                    raise OpError(
                        f"change_log.{role}: {self.table!r} has no column {given!r} "
                        f"(columns: {', '.join(self.info.columns)})",
                        "bad_column",
                    )
                self.cols[role] = have[given.lower()]
                continue
            found = None
            if role == "order_column":
                found = self.info.pk[0] if self.info.rowid_alias else "rowid"
            else:
                found = next((have[g] for g in LOG_GUESSES[role] if g in have), None)
            if found is not None and role != "order_column":
                self.guessed.append(f"change_log.{role}: {found}")
            self.cols[role] = found
        shape = spec.get("shape")
        if shape is None:
            shape = "columns" if self.cols["column_column"] else "rows"
            if self.cols["column_column"]:
                self.guessed.append("change_log.shape: columns")
        if shape not in ("rows", "columns"):
            raise OpError("change_log.shape must be 'rows' or 'columns'")
        if shape == "rows":
            self.cols["column_column"] = None
        self.shape = shape

    def mapping(self) -> Result:
        """The resolved mapping, as the settings would spell it."""
        return {"table": self.table, "shape": self.shape, **self.cols}

    def missing(self, *roles: str) -> list[str]:
        """Roles among ``roles`` that have no column."""
        return [r for r in roles if not self.cols.get(r)]

    def need(self, what: str, *roles: str) -> None:
        """Refuse (kind ``unsupported``) when a role ``what`` needs has no column."""
        gone = self.missing(*roles)
        if gone:
            raise OpError(
                f"{what} needs the change log's {', '.join(gone)}: the table {self.table!r} "
                f"has no such column by a known name; set change_log.{gone[0]}",
                "unsupported",
            )

    def q(self, role: str) -> str:
        """The role's column as an SQL expression on the log table."""
        col = self.cols[role]
        assert col is not None
        return "rowid" if col == "rowid" else qi(col)

    def source(self) -> str:
        """The log table, schema-qualified."""
        return f"{qi(self.schema)}.{qi(self.table)}"

    # ------------------------------------------------------------------ reading

    def read(self, conn: sqlite3.Connection, where: str = "1", args: Iterable[Any] = ()) -> list[Result]:
        """Log rows matching ``where``, oldest first, as change dicts (columns shape merged)."""
        fields = ["order_column", "table_column", "key_column", "column_column", "old_column",
                  "new_column", "operation_column", "time_column", "marker_column",
                  "governance_column"]
        present = [f for f in fields if self.cols.get(f)]
        sql = (f"SELECT {', '.join(self.q(f) for f in present)} FROM {self.source()} "
               f"WHERE {where} ORDER BY {self.q('order_column')}")
        out: list[Result] = []
        for raw in conn.execute(sql, list(args)):
            row = dict(zip(present, raw))  # noqa: B905 -- the agent runs on Python 3.9
            change = self._change(row)
            last = out[-1] if out else None
            if (self.shape == "columns" and last is not None and change["op"] in ("INSERT", "DELETE")
                    and (last["table"], last["key_text"], last["op"], last["time"])
                    == (change["table"], change["key_text"], change["op"], change["time"])):
                for side in ("old", "new"):  # one row per column of one inserted/deleted row
                    if change[side]:
                        last[side] = {**(last[side] or {}), **change[side]}
                last["ids"].append(change["id"])
                continue
            out.append(change)
        return out

    def _change(self, row: Result) -> Result:
        cid = row["order_column"]
        table = row.get("table_column")
        old, new = jsonish(row.get("old_column")), jsonish(row.get("new_column"))
        if self.shape == "rows":
            old, new = self._row_doc(old, cid, "old"), self._row_doc(new, cid, "new")
        else:
            col = row.get("column_column")
            if col is None:  # a whole-row entry of a per-column log (an insert or delete)
                old = self._row_doc(old, cid, "old") if isinstance(old, (dict, str)) else None
                new = self._row_doc(new, cid, "new") if isinstance(new, (dict, str)) else None
            else:
                old = None if row.get("old_column") is None else {str(col): from_json(old, "old")}
                new = None if row.get("new_column") is None else {str(col): from_json(new, "new")}
        raw_op = row.get("operation_column")
        if raw_op is not None and str(raw_op).strip():
            op = OPERATIONS.get(str(raw_op).strip()[:1].upper())
            if op is None:
                raise OpError(f"change {cid}: unknown operation {raw_op!r}", "bad_history")
        elif self.shape == "columns" and row.get("column_column") is not None:
            op = "UPDATE"
        else:
            op = "INSERT" if old is None else "DELETE" if new is None else "UPDATE"
        key = row.get("key_column")
        return {
            "id": cid, "ids": [cid], "table": table, "key_raw": key,
            "key_text": None if key is None else str(key),
            "op": op, "old": old, "new": new, "time": row.get("time_column"),
            "marker": row.get("marker_column"), "governance": row.get("governance_column"),
        }

    def _row_doc(self, doc: Any, cid: Any, side: str) -> dict[str, Any] | None:
        if doc is None:
            return None
        if not isinstance(doc, dict):
            raise OpError(f"change {cid}: {side} values must be a JSON object of column values",
                          "bad_history")
        return {str(k): from_json(v, f"change {cid} {side}") for k, v in doc.items()}


# ---------------------------------------------------------------------------- boundary


def parse_boundary(value: Any) -> dict[str, Any] | None:
    """The boundary param as a dict (JSON text accepted), or None when not given."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise OpError(f"boundary {value[:80]!r} is not a JSON object", "bad_boundary") from None
    if not isinstance(value, dict):
        raise OpError("parameter 'boundary' must be an object", "bad_boundary")
    unknown = sorted(set(value) - {"marker", "from", "to", "from_order", "to_order", "governance",
                                   "label"})
    if unknown:
        raise OpError(f"boundary: unknown key(s) {', '.join(unknown)}", "bad_boundary")
    return {k: v for k, v in value.items() if v is not None and k != "label"}


def governance_filter(conn: sqlite3.Connection, spec: Any, schema: str) -> tuple[str, list[Any], str]:
    """(governance table, args, SQL condition) selecting the governance rows ``spec`` names."""
    if not isinstance(spec, dict) or not spec:
        raise OpError("boundary.governance must be an object of column: value", "bad_boundary")
    table = resolve_tables(conn, ["governance_logs"], schema)[0]
    info = TableInfo(conn, table, schema)
    parts, args = [], []
    for field, want in spec.items():
        col, _, path = str(field).partition(".")
        name = qi(info.column(col, "governance column"))
        if path:
            parts.append(f"json_extract({name}, ?) IS ?")
            args += ["$." + path, from_json(want, f"boundary.governance[{field!r}]")]
        else:
            parts.append(f"{name} IS ?")
            args.append(from_json(want, f"boundary.governance[{field!r}]"))
    return f"{qi(schema)}.{qi(table)}", args, " AND ".join(parts)


def boundary_where(conn: sqlite3.Connection, log: ChangeLog, boundary: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQL condition (and its args) on the log table selecting the deployment's rows."""
    parts: list[str] = []
    args: list[Any] = []
    if "marker" in boundary:
        log.need("a marker boundary", "marker_column")
        m = log.q("marker_column")
        if log.cols.get("time_column"):
            t = log.q("time_column")
            parts.append(f"({m} = ? OR ({m} IS NULL AND julianday({t}) BETWEEN "
                         f"(SELECT min(julianday({t})) FROM {log.source()} WHERE {m} = ?) AND "
                         f"(SELECT max(julianday({t})) FROM {log.source()} WHERE {m} = ?)))")
            args += [boundary["marker"]] * 3
        else:
            parts.append(f"{m} = ?")
            args.append(boundary["marker"])
    for end, op in (("from", ">="), ("to", "<=")):
        if end in boundary:
            log.need("a time boundary", "time_column")
            when = boundary[end]
            if not isinstance(when, str) or conn.execute(
                    "SELECT julianday(?)", (when,)).fetchone()[0] is None:
                raise OpError(f"boundary.{end}: cannot read {when!r} as a date-time", "bad_boundary")
            parts.append(f"julianday({log.q('time_column')}) {op} julianday(?)")
            args.append(when)
    for end, op in (("from_order", ">"), ("to_order", "<=")):
        if end in boundary:
            value = boundary[end]
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise OpError(f"boundary.{end} must be an integer", "bad_boundary")
            parts.append(f"{log.q('order_column')} {op} ?")
            args.append(value)
    if "governance" in boundary:
        gtable, gargs, gwhere = governance_filter(conn, boundary["governance"], log.schema)
        ginfo = TableInfo(conn, gtable.split(".")[1].strip('"'), log.schema)
        either = []
        if log.cols.get("governance_column"):
            either.append(f"{log.q('governance_column')} IN (SELECT rowid FROM {gtable} WHERE {gwhere})")
            args += gargs
        ts = next((c for c in ginfo.columns if c.lower() == "timestamp"), None)
        if ts and log.cols.get("time_column"):
            t = log.q("time_column")
            either.append(f"julianday({t}) BETWEEN (SELECT min(julianday({qi(ts)})) FROM {gtable} "
                          f"WHERE {gwhere}) AND (SELECT max(julianday({qi(ts)})) FROM {gtable} "
                          f"WHERE {gwhere})")
            args += gargs + gargs
        if not either:
            raise OpError("a governance boundary needs change_log.governance_column or "
                          "change_log.time_column", "unsupported")
        parts.append("(" + " OR ".join(either) + ")")
    if not parts:
        raise OpError("the boundary is empty: give marker, from/to, from_order/to_order or "
                      "governance", "bad_boundary")
    # Never NULL: a NULL marker outside the span must read as "not the deployment's" under NOT.
    return "coalesce((" + " AND ".join(parts) + "), 0)", args
