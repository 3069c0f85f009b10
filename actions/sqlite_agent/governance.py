"""The governance record: one governance_logs row inserted with bound values."""

from __future__ import annotations

import json

from .base import BLOB_KEY, OpError, Params, Result, bool_param, from_json, json_default, path_param, qi, str_param
from .db import connect
from .schema import TableInfo, resolve_tables
from .tx import write_transaction


def op_governance_insert(p: Params) -> Result:
    """Insert one governance_logs row with bound values; objects are stored as JSON text."""
    db = path_param(p, "db")
    record = p.get("record")
    if not isinstance(record, dict) or not record:
        raise OpError("parameter 'record' must be a non-empty object")
    if_absent = bool_param(p, "if_absent")
    conn = connect(db, "rw")
    try:
        table = resolve_tables(conn, [str_param(p, "table", "governance_logs")])[0]
        info = TableInfo(conn, table)
        cols, values = [], []
        for name, value in record.items():
            col = info.column(name)
            if col not in info.writable:
                raise OpError(f"column {col!r} is generated and cannot be written", "bad_column")
            if isinstance(value, list) or (isinstance(value, dict) and set(value) != {BLOB_KEY}):
                value = json.dumps(value, ensure_ascii=False, default=json_default)
            elif isinstance(value, bool):
                value = int(value)
            cols.append(col)
            values.append(from_json(value, f"record[{name!r}]"))
        t = qi(table)
        with write_transaction(conn):
            existing = None
            if if_absent:
                match = " AND ".join(f"{qi(c)} IS ?" for c in cols)
                existing = conn.execute(
                    f"SELECT rowid FROM {t} WHERE {match} LIMIT 1", values
                ).fetchone()
            if existing:
                new_id, inserted = existing[0], False
            else:
                new_id = conn.execute(
                    f"INSERT INTO {t} ({', '.join(qi(c) for c in cols)}) "
                    f"VALUES ({', '.join('?' for _ in cols)})",
                    values,
                ).lastrowid
                inserted = True
    finally:
        conn.close()
    return {"id": new_id, "inserted": inserted, "table": table}
