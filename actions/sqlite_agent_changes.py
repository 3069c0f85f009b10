"""The agent's change log: the schema contract, the deployment boundary, the ledger.

Part of the SQLite agent (``actions/sqlite_agent.py``): when the agent is sent to a target
this module's body is pasted into it (``actions.sqlite.agent_source``), so it stays
standard library only and uses the agent's helpers by name.

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

from actions.sqlite_agent import (
    OpError,
    Result,
    TableInfo,
    _key_of,
    _load_snapshot,
    _now_iso,
    from_json,
    qi,
    resolve_tables,
    to_json,
    user_tables,
)

# rb:body -- everything below is pasted into the agent's source when it is sent

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


def _jsonish(value: Any) -> Any:
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
        old, new = _jsonish(row.get("old_column")), _jsonish(row.get("new_column"))
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


def _governance_filter(conn: sqlite3.Connection, spec: Any, schema: str) -> tuple[str, list[Any], str]:
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
        gtable, gargs, gwhere = _governance_filter(conn, boundary["governance"], log.schema)
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


# ---------------------------------------------------------------------------- ledger


def ledger_exists(conn: sqlite3.Connection, schema: str = "main") -> bool:
    """True when the database holds the rollback ledger."""
    return LEDGER.lower() in {t.lower() for t in user_tables(conn, schema)}


def ledger_ensure(conn: sqlite3.Connection) -> None:
    """Create the ledger (inside the caller's write transaction)."""
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {qi(LEDGER)} (kind TEXT NOT NULL, item TEXT NOT NULL, "
        "tag TEXT, value TEXT, at TEXT NOT NULL, PRIMARY KEY (kind, item))"
    )


def ledger_items(conn: sqlite3.Connection, kind: str, schema: str = "main") -> set[str]:
    """Items of one kind recorded in the ledger."""
    if not ledger_exists(conn, schema):
        return set()
    sql = f"SELECT item FROM {qi(schema)}.{qi(LEDGER)} WHERE kind = ?"
    return {str(r[0]) for r in conn.execute(sql, (kind,))}


def ledger_put(conn: sqlite3.Connection, kind: str, items: Iterable[str], tag: Any,
               value: Any = None) -> None:
    """Record items (replacing the value of an existing one)."""
    now = _now_iso()
    conn.executemany(
        f"INSERT OR REPLACE INTO {qi(LEDGER)} (kind, item, tag, value, at) VALUES (?, ?, ?, ?, ?)",
        [(kind, item, tag, value, now) for item in items],
    )


def log_item(log: ChangeLog, cid: Any) -> str:
    """The ledger item naming one change-log row."""
    return f"{log.table}:{cid}"


def own_condition(conn: sqlite3.Connection, log: ChangeLog) -> tuple[str, list[Any]]:
    """SQL condition leaving out change-log rows the rollback wrote itself."""
    if not ledger_exists(conn, log.schema):
        return "1", []
    return (f"NOT ((? || ':' || {log.q('order_column')}) IN (SELECT item FROM "
            f"{qi(log.schema)}.{qi(LEDGER)} WHERE kind = 'own'))", [log.table])


def log_max(conn: sqlite3.Connection, log: ChangeLog) -> Any:
    """The newest order value of the log (None when empty)."""
    return conn.execute(f"SELECT max({log.q('order_column')}) FROM {log.source()}").fetchone()[0]


def mark_own(conn: sqlite3.Connection, log: ChangeLog, before: Any, tag: Any) -> int:
    """Record as the rollback's own the log rows written since ``before`` (we hold the lock)."""
    where, args = (f"{log.q('order_column')} > ?", [before]) if before is not None else ("1", [])
    ids = [r[0] for r in conn.execute(f"SELECT {log.q('order_column')} FROM {log.source()} WHERE {where}",
                                      args)]
    if ids:
        ledger_ensure(conn)
        ledger_put(conn, "own", [log_item(log, i) for i in ids], tag)
    return len(ids)


# ---------------------------------------------------------------------------- row keys


def table_key(info: TableInfo, key_spec: Any) -> list[str]:
    """The columns that identify a row: key_columns[table], else the primary key; else refuse."""
    spec = key_spec.get(info.name) if isinstance(key_spec, dict) else None
    if spec is None and isinstance(key_spec, dict):
        spec = next((v for k, v in key_spec.items() if str(k).lower() == info.name.lower()), None)
    if spec is not None:
        names = [spec] if isinstance(spec, str) else spec
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise OpError(f"key_columns[{info.name!r}] must be a column name or a list of them")
        return [info.column(n, "key column") for n in names]
    if info.pk:
        return list(info.pk)
    raise OpError(
        f"table {info.name!r} has no usable key (no primary key): set key_columns.{info.name} "
        "to columns that identify a row",
        "no_key",
    )


def change_key(change: Result, key: list[str]) -> tuple[Any, ...]:
    """The changed row's key values, from its JSON row or the key column."""
    for doc in (change["new"], change["old"]) if change["op"] != "DELETE" else (change["old"], change["new"]):
        if doc:
            low = {k.lower(): v for k, v in doc.items()}
            if all(k.lower() in low for k in key):
                return tuple(low[k.lower()] for k in key)
    raw = change["key_raw"]
    if raw is None:
        raise OpError(f"change {change['id']}: no key for the {change['table']!r} row", "bad_history")
    if len(key) == 1:
        return (from_json(raw, "key"),)
    parsed = _jsonish(raw)
    if isinstance(parsed, list) and len(parsed) == len(key):
        return tuple(from_json(v, "key") for v in parsed)
    raise OpError(f"change {change['id']}: key {raw!r} is not a JSON array of {len(key)} values "
                  f"({', '.join(key)})", "bad_history")


def key_text(table: str, key: tuple[Any, ...]) -> str:
    """A row's identity as stable text (ledger items, listings)."""
    return json.dumps([table, *[to_json(v) for v in key]], ensure_ascii=True, sort_keys=True)


def same_value(current: Any, recorded: Any) -> bool:
    """Equal as SQL values; text recorded for a number (a per-column log) compares by text."""
    if isinstance(current, (bytes, bytearray)) or isinstance(recorded, (bytes, bytearray)):
        return isinstance(current, (bytes, bytearray)) and isinstance(recorded, (bytes, bytearray)) \
            and bytes(current) == bytes(recorded)
    if current is None or recorded is None:
        return current is None and recorded is None
    if isinstance(current, str) != isinstance(recorded, str):
        return str(current) == str(recorded) or _num(current) == _num(recorded)
    return bool(current == recorded)


def _num(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return ("not a number", value)


def read_row(conn: sqlite3.Connection, schema: str, info: TableInfo, key: list[str],
             values: tuple[Any, ...]) -> dict[str, Any] | None:
    """The row with this key as {lower column: value}, or None."""
    where = " AND ".join(f"{qi(k)} = ?" for k in key)
    got = conn.execute(f"SELECT * FROM {qi(schema)}.{qi(info.name)} WHERE {where}", list(values)).fetchone()
    return None if got is None else {c.lower(): got[i] for i, c in enumerate(info.columns)}


def matches(row: dict[str, Any] | None, doc: dict[str, Any] | None, columns: set[str] | None = None) -> bool:
    """``row`` holds ``doc``'s values (only ``columns`` when given); a None doc matches any row."""
    if row is None:
        return False
    for name, value in (doc or {}).items():
        low = name.lower()
        if (columns is None or low in columns) and low in row and not same_value(row[low], value):
            return False
    return True


def changed_columns(change: Result) -> set[str]:
    """Columns an UPDATE changed (both sides given and different), lower case."""
    old, new = change["old"] or {}, change["new"] or {}
    lo, ln = {k.lower(): v for k, v in old.items()}, {k.lower(): v for k, v in new.items()}
    if not ln:
        return set(lo)
    return {c for c in ln if c not in lo or not same_value(lo[c], ln[c])} or set(ln)


# ---------------------------------------------------------------------------- access levels


class AccessOverlay:
    """A strategy's view of the access table while the maintenance restriction holds.

    ``lift`` puts every row's real level back (the snapshot's, or a later one the ledger
    holds) inside the caller's transaction; ``settle`` records in the ledger the level a
    row must get when the restriction is lifted wherever the strategy changed it, and
    restricts again the same way ``restrict_access`` does.
    """

    def __init__(self, conn: sqlite3.Connection, spec: Any) -> None:
        self.conn = conn
        self.active = False
        if spec is None:
            return
        if not isinstance(spec, dict):
            raise OpError("parameter 'access' must be an object or null")
        path = spec.get("snapshot")
        if not isinstance(path, str) or not path:
            raise OpError("access.snapshot must be the restriction's snapshot path")
        import os as _os

        if not _os.path.exists(path):
            return  # never restricted: nothing to lift
        doc = _load_snapshot(path)
        self.table = resolve_tables(conn, [doc["table"]])[0]
        info = TableInfo(conn, self.table)
        self.key, self.column = info.column(doc["key"], "key column"), info.column(doc["column"])
        self.role = info.column(spec.get("role_column") or "role", "role column")
        self.level = from_json(spec.get("level", "read_only"), "level")
        self.exempt = spec.get("exempt_roles", ["superuser", "emergency_admin"])
        self.tag = doc.get("tag")
        self.real: dict[Any, Any] = {}
        for raw_key, raw_level in doc["rows"]:
            self.real[_hashable(from_json(raw_key, "key"))] = from_json(raw_level, "level")
        self.overrides = access_overrides(conn, self.tag)
        self.real.update(self.overrides)
        self.active = True

    def lift(self) -> None:
        """Give every row its real level (inside the transaction)."""
        if not self.active:
            return
        t, k, c = qi(self.table), qi(self.key), qi(self.column)
        for key, level in self.real.items():
            self.conn.execute(f"UPDATE {t} SET {c} = ? WHERE {k} = ? AND {c} IS NOT ?",
                              (level, _unhash(key), level))

    def settle(self) -> int:
        """Record changed real levels in the ledger, then restrict again; returns rows recorded."""
        if not self.active:
            return 0
        t, k, c, r = qi(self.table), qi(self.key), qi(self.column), qi(self.role)
        changed = []
        for key, level in self.conn.execute(f"SELECT {k}, {c} FROM {t}").fetchall():
            h = _hashable(key)
            if h not in self.real or not same_value(self.real[h], level):
                changed.append((h, level))
        if changed:
            ledger_ensure(self.conn)
            for h, level in changed:
                item = json.dumps([self.tag, to_json(_unhash(h))], ensure_ascii=True)
                ledger_put(self.conn, "access", [item], self.tag,
                           json.dumps(to_json(level), ensure_ascii=True))
        marks = ", ".join("?" for _ in self.exempt)
        self.conn.execute(f"UPDATE {t} SET {c} = ? WHERE {r} IS NULL OR {r} NOT IN ({marks})",
                          [self.level, *self.exempt])
        return len(changed)


def _hashable(value: Any) -> Any:
    return _key_of(value)


def _unhash(value: Any) -> Any:
    return value[1] if isinstance(value, tuple) and value[:1] == ("b",) else value


def access_overrides(conn: sqlite3.Connection, tag: Any, schema: str = "main") -> dict[Any, Any]:
    """Levels the ledger holds for rows of the restriction tagged ``tag``: {key: level}."""
    if not ledger_exists(conn, schema):
        return {}
    out: dict[Any, Any] = {}
    sql = f"SELECT item, value FROM {qi(schema)}.{qi(LEDGER)} WHERE kind = 'access' AND tag IS ?"
    for item, value in conn.execute(sql, (tag,)):
        key = from_json(json.loads(item)[1], "key")
        out[_hashable(key)] = from_json(json.loads(value), "level")
    return out
