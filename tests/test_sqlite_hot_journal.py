"""Read-only operations on a database whose writer was killed mid-transaction.

A real writer process opens the database, writes inside a transaction until its journal
(rollback mode) or WAL holds uncommitted pages, and is killed with SIGKILL. A read-only
open of such a file fails with "attempt to write a readonly database" unless it is
recovered first; every read-only operation of the agent must answer, and see exactly the
committed rows. Counted: how many operations met a hot journal or WAL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actions.local import LocalTransport
from actions.sqlite import sqlite_op

COMMITTED = 200

WRITER = textwrap.dedent("""\
    import os, sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA cache_size = 2")  # spill dirty pages: the journal is really hot
    conn.execute("BEGIN IMMEDIATE")
    for i in range(3000):
        conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(64).hex(),))
    print("writing", flush=True)
    time.sleep(600)
""")


def _make(db: Path, mode: str) -> None:
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_mode = {mode}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, t_id INTEGER REFERENCES t(id))")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(COMMITTED)])
        conn.execute("INSERT INTO c (t_id) VALUES (1)")
        conn.execute("COMMIT")
    finally:
        conn.close()


def _kill_a_writer(db: Path) -> None:
    """Start a writer on ``db``, let it write uncommitted pages, SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _hot(db: Path, mode: str) -> bool:
    side = db.with_name(db.name + ("-wal" if mode == "wal" else "-journal"))
    return side.exists() and side.stat().st_size > 0


READ_ONLY_OPS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = {
    "integrity_check": ({}, lambda r: r["ok"] is True),
    "quick_check": ({}, lambda r: r["ok"] is True),
    "foreign_key_check": ({}, lambda r: r["ok"] is True),
    "record_counts": ({}, lambda r: r["counts"] == {"t": COMMITTED, "c": 1}),
    "query": ({"sql": "SELECT count(*) FROM t"}, lambda r: r["rows"] == [[COMMITTED]]),
    "content_hash": ({}, lambda r: r["counts"] == {"t": COMMITTED, "c": 1}),
    "verify": ({}, lambda r: r["ok"] is True and r["counts"] == {"t": COMMITTED, "c": 1}),
    "diff": ({"other": "clean.db"}, lambda r: r["identical"] is True),
    "diff (other hot)": ({"other": "HOT"}, lambda r: r["identical"] is True),
}


@pytest.mark.parametrize("mode", ["delete", "wal"])
async def test_read_only_ops_after_a_killed_writer(tmp_path: Path, mode: str,
                                                   proof_report: Callable[[str], None]) -> None:
    clean = tmp_path / "clean.db"
    _make(clean, "delete")
    transport = LocalTransport(root=str(tmp_path))
    met_hot = 0
    try:
        for name, (extra, check) in READ_ONLY_OPS.items():
            db = tmp_path / f"{name.split()[0]}-{len(name)}.db"
            _make(db, mode)
            _kill_a_writer(db)
            assert _hot(db, mode), f"{mode}: the killed writer left no hot journal"
            met_hot += 1
            params = {"db": str(db), **extra}
            if params.get("other") == "HOT":  # the hot file as the other side of a diff
                params = {"db": str(clean), "other": str(db)}
            op = name.split()[0]
            res = await sqlite_op(transport, op, params, timeout=120)
            assert check(res), f"{mode} {name}: {res}"
    finally:
        await transport.close()
    assert met_hot == len(READ_ONLY_OPS)
    proof_report(f"hot journal ({mode}): {met_hot} read-only operations on a database whose writer was "
                 f"SIGKILLed mid-transaction, {met_hot} answered with only the committed rows")
