"""One SQL statement with bound parameters: read-only, or one write transaction."""

from __future__ import annotations

import sqlite3
from contextlib import nullcontext
from typing import Any

from .base import OpError, Params, Result, bool_param, from_json, int_param, path_param, str_param, to_json
from .db import connect
from .tx import write_transaction


def _bind(params: Any) -> Any:
    if params is None:
        return ()
    if isinstance(params, list):
        return [from_json(v, f"params[{i}]") for i, v in enumerate(params)]
    if isinstance(params, dict):
        return {str(k): from_json(v, f"params[{k!r}]") for k, v in params.items()}
    raise OpError("parameter 'params' must be a list, an object or null")


def _deny_attach(action: int, *_: Any) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def op_query(p: Params) -> Result:
    """One SQL statement with bound params: read-only unless write=true (then one transaction)."""
    db = path_param(p, "db")
    sql = str_param(p, "sql")
    bound = _bind(p.get("params"))
    max_rows = int_param(p, "max_rows", 1000, 0)
    write = bool_param(p, "write")
    conn = connect(db, "rw" if write else "ro")
    conn.text_factory = lambda b: b.decode("utf-8", "replace")
    try:
        if not write:
            conn.execute("PRAGMA query_only = 1")
            conn.set_authorizer(_deny_attach)
        with write_transaction(conn) if write else nullcontext(conn):
            cur = conn.execute(sql, bound)
            columns = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchmany(max_rows + 1) if columns else []
            if write and columns:
                cur.fetchall()  # run a RETURNING statement to its end
            out: Result = {
                "columns": columns,
                "rows": [[to_json(v) for v in r] for r in rows[:max_rows]],
                "truncated": len(rows) > max_rows,
            }
            if write:
                out["rowcount"] = cur.rowcount
                out["lastrowid"] = cur.lastrowid
    finally:
        conn.close()
    return out
