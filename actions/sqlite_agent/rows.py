"""The agent's rows: the ledger, row keys, value comparison, access levels under the
restriction, and the boundary's changes grouped by row.

The ledger, row keys and access parameters are described in ``changes``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from typing import Any

from .base import OpError, Result, from_json, key_of, now_iso, qi, to_json
from .changes import LEDGER, ChangeLog, boundary_where, jsonish
from .files import load_snapshot
from .schema import TableInfo, resolve_tables, user_tables

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
    now = now_iso()
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
    parsed = jsonish(raw)
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
        if not os.path.exists(path):
            return  # never restricted: nothing to lift
        doc = load_snapshot(path)
        self.table = resolve_tables(conn, [doc["table"]])[0]
        info = TableInfo(conn, self.table)
        self.key, self.column = info.column(doc["key"], "key column"), info.column(doc["column"])
        self.role = info.column(spec.get("role_column") or "role", "role column")
        self.level = from_json(spec.get("level", "read_only"), "level")
        self.exempt = spec.get("exempt_roles", ["superuser", "emergency_admin"])
        self.tag = doc.get("tag")
        self.real: dict[Any, Any] = {}
        for raw_key, raw_level in doc["rows"]:
            self.real[hashable(from_json(raw_key, "key"))] = from_json(raw_level, "level")
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
            h = hashable(key)
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


def hashable(value: Any) -> Any:
    """A key value as a dict key (see ``key_of``)."""
    return key_of(value)


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
        out[hashable(key)] = from_json(json.loads(value), "level")
    return out


# ---------------------------------------------------------------------------- the deployment's rows

RECORD_TABLE = "governance_logs"


class Deployment:
    """The boundary's changes, grouped by the row they touched."""

    def __init__(self, conn: sqlite3.Connection, log: ChangeLog, boundary: dict[str, Any],
                 key_spec: Any, *, need_keys: bool = True) -> None:
        self.log = log
        where, args = boundary_where(conn, log, boundary)
        own, own_args = own_condition(conn, log)
        self.changes = log.read(conn, f"({where}) AND {own}", [*args, *own_args])
        self.ids = {c["id"] for c in self.changes}
        self.infos: dict[str, TableInfo] = {}
        self.keys: dict[str, list[str]] = {}
        self.no_key: dict[str, str] = {}
        self.rows: dict[tuple[str, tuple[Any, ...]], list[Result]] = {}
        #: Changes to governance_logs: the audit record of what happened, kept by A and B.
        self.records: list[Result] = []
        known = {t.lower(): t for t in user_tables(conn, log.schema)}
        for change in list(self.changes):
            name = change["table"]
            if not isinstance(name, str) or name.lower() not in known:
                raise OpError(f"change {change['id']}: no such table {name!r}", "bad_table")
            table = known[name.lower()]
            if table.lower() in (log.table.lower(), LEDGER.lower()):
                raise OpError(f"change {change['id']}: cannot undo changes to the change log itself")
            change["table"] = table
            if table.lower() == RECORD_TABLE:
                self.records.append(change)
                self.changes.remove(change)
                continue
            if table not in self.infos:
                self.infos[table] = TableInfo(conn, table, log.schema)
                try:
                    self.keys[table] = table_key(self.infos[table], key_spec)
                except OpError as exc:
                    if need_keys:
                        raise
                    self.no_key[table] = str(exc)
            for side in ("old", "new"):  # every named column must be one of the table's
                for name in change[side] or {}:
                    if name.lower() != "rowid":
                        self.infos[table].column(name)
            if table in self.keys:
                change["key"] = change_key(change, self.keys[table])
                self.rows.setdefault((table, change["key"]), []).append(change)

    def later_elsewhere(self, conn: sqlite3.Connection) -> dict[tuple[str, tuple[Any, ...]], Result]:
        """For each touched row, the first change outside the boundary after the deployment's last."""
        if not self.changes:
            return {}
        first = min(c["id"] for c in self.changes)
        own, own_args = own_condition(conn, self.log)
        later = self.log.read(conn, f"{self.log.q('order_column')} > ? AND {own}", [first, *own_args])
        out: dict[tuple[str, tuple[Any, ...]], Result] = {}
        lows = {t.lower(): t for t in self.infos}
        for change in later:
            if change["id"] in self.ids or not isinstance(change["table"], str):
                continue
            table = lows.get(change["table"].lower())
            if table is None or table not in self.keys:
                continue
            try:
                key = change_key(change, self.keys[table])
            except OpError:
                continue
            mine = self.rows.get((table, key))
            if mine and change["id"] > mine[-1]["id"] and (table, key) not in out:
                out[(table, key)] = change
        return out
