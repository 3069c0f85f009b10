"""Two databases compared row by row, by key: the diff operation and what selective restore shares."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from .base import OpError, Params, Result, int_param, names_param, path_param, qi, to_json
from .db import attach, connect
from .schema import TableInfo, user_tables
from .tx import read_transaction


def _key_columns(info: TableInfo, spec: Any) -> list[str]:
    if spec is None:
        return list(info.key)
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise OpError(f"key_columns[{info.name!r}] must be a column name or a list of them")
    return ["rowid" if n.lower() == "rowid" else info.column(n, "key column") for n in names]


def sorted_keys(keys: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Row keys in a stable order across value types."""
    return sorted(keys, key=lambda k: [(type(v).__name__, v) for v in k])


def diff_keys(
    conn: sqlite3.Connection, table: str, key: list[str], cols: list[str]
) -> tuple[set[Any], set[Any], set[Any]]:
    """Keys added in main, removed from main, and changed, against schema "other"."""
    t = qi(table)
    kx = ", ".join(qi(k) for k in key)
    sig = ", ".join([kx] + [f"typeof({qi(c)}), {qi(c)} COLLATE BINARY" for c in cols])
    main_keys = f"SELECT {kx} FROM main.{t}"
    other_keys = f"SELECT {kx} FROM other.{t}"
    added = set(conn.execute(f"{main_keys} EXCEPT {other_keys}").fetchall())
    removed = set(conn.execute(f"{other_keys} EXCEPT {main_keys}").fetchall())
    differ = conn.execute(
        f"SELECT {kx} FROM (SELECT {sig} FROM main.{t} EXCEPT SELECT {sig} FROM other.{t})"
    ).fetchall()
    changed = {tuple(k) for k in differ} - added
    return added, removed, changed


class TablePair:
    """One table in "main" and in the attached "other": key and common columns."""

    def __init__(self, conn: sqlite3.Connection, table: str, key_spec: Any) -> None:
        self.info = TableInfo(conn, table, "main")
        theirs = TableInfo(conn, table, "other")
        self.key = _key_columns(self.info, key_spec)
        other_cols = {c.lower() for c in theirs.columns}
        for k in self.key:
            if k != "rowid" and k.lower() not in other_cols:
                raise OpError(f"key column {k!r} of {table!r} is not in the other database")
        self.common = [c for c in self.info.columns if c.lower() in other_cols]
        self.missing = [c for c in self.info.columns if c.lower() not in other_cols]

    def diff(self, conn: sqlite3.Connection) -> tuple[set[Any], set[Any], set[Any]]:
        """Keys added in main, removed from main, and changed (see ``diff_keys``)."""
        return diff_keys(conn, self.info.name, self.key, self.common)


def op_diff(p: Params) -> Result:
    """Rows of db vs other by primary key: per table {added, removed, changed, keys_sample}."""
    db, other = path_param(p, "db"), path_param(p, "other")
    sample = int_param(p, "sample", 20, 0)
    key_spec = p.get("key_columns") or {}
    if not isinstance(key_spec, dict):
        raise OpError("parameter 'key_columns' must be an object or null")
    conn = connect(db, "ro")
    try:
        attach(conn, other)
        with read_transaction(conn):
            requested = names_param(p, "tables")
            mine, theirs = user_tables(conn, "main"), user_tables(conn, "other")
            if requested is None:
                names = sorted(set(mine) | set(theirs))
            else:
                names = []
                for name in requested:
                    hit = [t for t in (*mine, *theirs) if t.lower() == name.lower()]
                    if not hit:
                        raise OpError(f"no such table in either database: {name!r}", "bad_table")
                    names.append(hit[0])
            tables: Result = {}
            for name in names:
                if name not in mine or name not in theirs:
                    tables[name] = {"only_in": "db" if name in mine else "other"}
                    continue
                pair = TablePair(conn, name, key_spec.get(name))
                added, removed, changed = pair.diff(conn)
                keys = sorted_keys(added | removed | changed)[:sample]
                tables[name] = {
                    "added": len(added),
                    "removed": len(removed),
                    "changed": len(changed),
                    "keys_sample": [[to_json(v) for v in k] for k in keys],
                    # Per kind, so a data-loss assessment can tell removed rows from new ones.
                    "added_keys": [[to_json(v) for v in k] for k in sorted_keys(added)[:sample]],
                    "removed_keys": [[to_json(v) for v in k] for k in sorted_keys(removed)[:sample]],
                    "changed_keys": [[to_json(v) for v in k] for k in sorted_keys(changed)[:sample]],
                }
                if pair.missing:
                    tables[name]["columns_only_in_db"] = pair.missing
    finally:
        conn.close()
    identical = all(
        "only_in" not in d and not (d["added"] or d["removed"] or d["changed"])
        for d in tables.values()
    )
    return {"tables": tables, "identical": identical}
