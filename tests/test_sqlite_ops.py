"""The SQLite agent's operations, run for real: a SQLite file in tmp_path, the agent started
as ``python3 -I -c <source> <op> <json>`` through a transport (a local persistent bash; one
test also over the test sshd), results read back with Python's own sqlite3.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actions import sqlite_agent
from actions.errors import SqliteOpFailed
from actions.local import LocalTransport
from actions.sqlite import (
    MAX_COMMAND_BYTES,
    SqliteAgentError,
    agent_source,
    build_command,
    parse_result,
    sqlite_op,
)
from actions.sqlite_agent import restore as agent_restore
from actions.sqlite_ops import SqliteOps
from actions.sqlite_schema import (
    CHANGE_HISTORY_SCHEMA,
    COUNTED_TABLES,
    apply_schema,
    read_row,
    record_change,
)
from actions.ssh import SSHTransport
from actions.transport import ShellResult

HOSTILE = (
    "Robert'); DROP TABLE governance_logs; -- \"quoted\" $(touch {canary}) `touch {canary}` "
    "${HOME} \\n backslash\nsecond line\r\n\ttab \x00 NUL \x01 ünïcødé 🚨 ' \" ; |"
)


# ---------------------------------------------------------------------------- helpers


def hostile(canary: Path) -> str:
    """Text that would run ``touch canary`` if anything pasted it into a shell."""
    return HOSTILE.replace("{canary}", str(canary))


@contextlib.contextmanager
def opened(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to ``path`` that is always closed (an open one would block restores)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """All rows of one query, read with the test's own sqlite3."""
    with opened(path) as conn:
        return conn.execute(sql, params).fetchall()


def build_db(path: Path, *, users: bool = True, pad: int = 0) -> None:
    """The plan's tables with a little data, in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with opened(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        apply_schema(conn)
        conn.execute("BEGIN")
        for p in range(1, 4):
            conn.execute(
                "INSERT INTO projects (id, name, description) VALUES (?, ?, ?)",
                (p, f"project {p}", "x" * pad),
            )
            for ph in range(1, 4):
                phase_id = p * 10 + ph
                conn.execute(
                    "INSERT INTO phases (id, project_id, name, position) VALUES (?, ?, ?, ?)",
                    (phase_id, p, f"phase {ph}", ph),
                )
                for s in range(1, 6):
                    conn.execute(
                        "INSERT INTO step_progress (phase_id, step_key, status, notes)"
                        " VALUES (?, ?, ?, ?)",
                        (phase_id, f"step-{s}", "done" if s < 3 else "pending", "n" * pad),
                    )
        for i in range(5):
            conn.execute(
                "INSERT INTO governance_logs (event_type, user_id, action, success, details)"
                " VALUES ('edit', ?, 'update', 1, ?)",
                (f"user{i}", json.dumps({"i": i})),
            )
        if users:
            conn.executemany(
                "INSERT INTO user_permissions (user_id, role, access_level) VALUES (?, ?, ?)",
                USERS,
            )
        conn.execute("COMMIT")


USERS = [
    ("u1", "superuser", "admin"),
    ("u2", "emergency_admin", "admin"),
    ("u3", "editor", "write"),
    ("u4", "viewer", "read_only"),
    ("u5", "editor", "admin"),
    ("u6", None, "write"),
    ("u7", "editor", None),
    ("u8", "superuser", "read_only"),
]


def crash_write(path: Path, statements: list[str]) -> None:
    """Commit ``statements`` in another process that then dies without closing the db:
    the committed rows stay only in the -wal file, like an app killed mid-flight."""
    script = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN')\n"
        "for s in sys.argv[2:]:\n"
        "    c.execute(s)\n"
        "c.execute('COMMIT')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path), *statements], check=True)


def names(folder: Path, pattern: str) -> list[str]:
    """Sorted names of the files in ``folder`` matching ``pattern``."""
    return sorted(p.name for p in folder.glob(pattern))


def size(path: str | Path) -> int:
    """Size of a file, -1 when it does not exist."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def kind_of(excinfo: pytest.ExceptionInfo[SqliteAgentError]) -> str:
    """The agent's one-word reason for a refusal."""
    return excinfo.value.kind


@pytest.fixture
def ops(local_transport: LocalTransport) -> SqliteOps:
    """The agent's operations through a local persistent shell."""
    return SqliteOps(local_transport, timeout=120)


def production_db(folder: Path) -> Path:
    """``production.db`` in ``folder``, built by ``build_db``."""
    db = folder / "production.db"
    build_db(db)
    return db


async def with_backup(ops: SqliteOps, folder: Path) -> tuple[Path, Path]:
    """``production.db`` in ``folder`` and its backup by the agent, ``backup.db``."""
    live = production_db(folder)
    backup = folder / "backup.db"
    await ops.backup(str(live), str(backup))
    return live, backup


# ---------------------------------------------------------------------------- command building


def test_command_quotes_every_part_and_moves_long_params_to_stdin() -> None:
    small = {"db": "a b.db", "record": {"reason": "it's $(rm -rf /)\x00"}}
    command, stdin = build_command("governance_insert", small)
    assert stdin is None
    assert command.startswith("python3 -I -c '")
    assert "\x00" not in command and "\\u0000" in command
    assert command.endswith(" governance_insert '" + json.dumps(small, separators=(",", ":"))
                            .replace("'", "'\"'\"'") + "'")
    big = {"db": "a.db", "record": {"details": "x" * MAX_COMMAND_BYTES}}
    command, stdin = build_command("governance_insert", big)
    assert command.endswith(" governance_insert -")
    assert stdin is not None and json.loads(stdin) == big
    with pytest.raises(ValueError, match="unknown SQLite operation"):
        build_command("drop_everything", {})


def test_agent_fits_on_a_command_line_and_imports_only_the_standard_library() -> None:
    source = agent_source()
    assert source.isascii()  # argv is decoded with the target's locale
    assert len(build_command("verify", {"db": "x"})[0].encode()) < MAX_COMMAND_BYTES - 10_000
    imported = set(re.findall(r"^(?:from|import) ([\w.]+)", source, re.M))
    assert not {m for m in imported if m.split(".")[0] in {"actions", "bot", "handlers"}}
    parts = {path.stem for path in Path(sqlite_agent.__file__).parent.glob("*.py")}
    for module in imported:
        if module.startswith("."):  # a module of the agent's own package
            assert module[1:] in parts, module
            continue
        assert module.split(".")[0] in sys.stdlib_module_names or module == "__future__"


def test_parse_result_reports_missing_or_failed_answers() -> None:
    with pytest.raises(SqliteAgentError) as excinfo:
        parse_result("verify", ShellResult(127, "", "bash: python3: command not found\n", 0.01))
    assert excinfo.value.kind == "no_result" and excinfo.value.outcome_unknown
    assert "command not found" in excinfo.value.detail
    assert isinstance(excinfo.value, SqliteOpFailed) and excinfo.value.op == "verify"

    noisy = "motd banner\n{not json\n" + json.dumps({"ok": True, "result": {"a": 1}}) + "\n"
    assert parse_result("verify", ShellResult(0, noisy, "", 0.01)) == {"a": 1}

    refused = json.dumps({"ok": False, "error": "nope", "kind": "in_use", "details": [1]})
    with pytest.raises(SqliteAgentError) as excinfo:
        parse_result("restore", ShellResult(2, refused + "\n", "warning: x", 0.01))
    assert excinfo.value.kind == "in_use" and excinfo.value.details == [1]
    assert "nope" in str(excinfo.value) and "warning: x" in excinfo.value.detail


# ---------------------------------------------------------------------------- checks and counts


async def test_checks_counts_and_bad_table_names(ops: SqliteOps, tmp_path: Path) -> None:
    db = production_db(tmp_path)
    assert await ops.integrity_check(str(db)) == {"ok": True, "messages": ["ok"]}
    assert (await ops.integrity_check(str(db), quick=True))["ok"]
    assert await ops.foreign_key_check(str(db)) == {"ok": True, "violations": [], "count": 0}

    with opened(db) as conn:  # foreign keys are off by default: an orphan gets in
        conn.execute("INSERT INTO phases (project_id, name, position) VALUES (999, 'orphan', 1)")
    fk = await ops.foreign_key_check(str(db))
    assert not fk["ok"] and fk["count"] == 1
    assert fk["violations"][0]["table"] == "phases" and fk["violations"][0]["parent"] == "projects"

    counts = (await ops.record_counts(str(db), list(COUNTED_TABLES)))["counts"]
    assert counts == {"projects": 3, "phases": 10, "step_progress": 45, "governance_logs": 5}
    every = (await ops.record_counts(str(db)))["counts"]
    assert set(every) == {
        "projects", "phases", "step_progress", "governance_logs", "change_history",
        "user_permissions",
    }
    # Names are matched against sqlite_master, never pasted.
    for bad in ("projects; DROP TABLE projects", 'projects"--', "sqlite_master", "nope"):
        with pytest.raises(SqliteAgentError) as excinfo:
            await ops.record_counts(str(db), [bad])
        assert kind_of(excinfo) == "bad_table"
        assert "no such table" in str(excinfo.value) and "projects" in str(excinfo.value)
    assert rows(db, "SELECT count(*) FROM projects") == [(3,)]
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.record_counts(str(tmp_path / "missing.db"))
    assert kind_of(excinfo) == "not_found"
    assert not (tmp_path / "missing.db").exists()  # never creates a database


async def test_unknown_params_and_ops_are_refused(local_transport: LocalTransport, tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    build_db(db)
    with pytest.raises(SqliteAgentError) as excinfo:
        await sqlite_op(local_transport, "record_counts", {"db": str(db), "tabels": []}, timeout=30)
    assert kind_of(excinfo) == "bad_request" and "tabels" in str(excinfo.value)
    # An op name the client does not know never reaches the target.
    with pytest.raises(ValueError):
        await sqlite_op(local_transport, "vacuum", {"db": str(db)}, timeout=30)


# ---------------------------------------------------------------------------- query


async def test_query_binds_params_and_stays_read_only(ops: SqliteOps, tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    build_db(db)
    injected = "x' OR '1'='1'; DROP TABLE projects; --"
    got = await ops.query(str(db), "SELECT id FROM projects WHERE name = ?", [injected])
    assert got["rows"] == [] and got["columns"] == ["id"]
    got = await ops.query(
        str(db), "SELECT id, name FROM projects WHERE id >= :low ORDER BY id", {"low": 2}
    )
    assert got["rows"] == [[2, "project 2"], [3, "project 3"]] and not got["truncated"]
    got = await ops.query(str(db), "SELECT id FROM step_progress ORDER BY id", max_rows=4)
    assert len(got["rows"]) == 4 and got["truncated"]

    for sql in ("DELETE FROM projects", "ATTACH DATABASE 'x.db' AS x"):
        with pytest.raises(SqliteAgentError) as excinfo:
            await ops.query(str(db), sql)
        assert kind_of(excinfo) == "sqlite"
    with pytest.raises(SqliteAgentError, match="one statement"):
        await ops.query(str(db), "SELECT 1; DROP TABLE projects", write=True)
    assert not (tmp_path / "x.db").exists()
    assert rows(db, "SELECT count(*) FROM projects") == [(3,)]

    blob = bytes(range(256))
    wrote = await ops.query(
        str(db),
        "INSERT INTO projects (name, description) VALUES (?, ?)",
        [injected, blob],
        write=True,
    )
    assert wrote["rowcount"] == 1 and wrote["lastrowid"] == 4
    assert rows(db, "SELECT name, description FROM projects WHERE id = 4") == [(injected, blob)]
    back = await ops.query(str(db), "SELECT description FROM projects WHERE id = 4")
    assert base64.b64decode(back["rows"][0][0]["$blob_b64"]) == blob


# ---------------------------------------------------------------------------- content hash


async def test_content_hash_is_typed_and_layout_independent(ops: SqliteOps, tmp_path: Path) -> None:
    hashes = set()
    for value in (1, "1", 1.0, None, b"1", 2, "1 ", 1.0000000000000002):
        db = tmp_path / f"v{len(hashes)}.db"
        with opened(db) as conn:
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
            conn.execute("INSERT INTO t VALUES (1, ?)", (value,))
        hashes.add((await ops.content_hash(str(db)))["total"])
    assert len(hashes) == 8  # 1, '1', 1.0, NULL, x'31', ... all differ

    # Same rows, other insertion order, other page layout, other journal mode: same hash.
    data = [(i, f"name {i}", random.random(), os.urandom(8)) for i in range(500)]
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    for path, order, mode in ((one, data, "wal"), (two, list(reversed(data)), "delete")):
        with opened(path) as conn:
            conn.execute(f"PRAGMA journal_mode = {mode}")
            conn.execute("PRAGMA page_size = 1024" if mode == "delete" else "SELECT 1")
            conn.execute(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT COLLATE NOCASE, r REAL, b)"
            )
            conn.execute("CREATE TABLE nokey (a, b)")  # no primary key: ordered by every column
            conn.execute("CREATE TABLE textkey (k TEXT PRIMARY KEY, v) ")
            conn.execute("CREATE TABLE wr (a, b, PRIMARY KEY (a, b)) WITHOUT ROWID")
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", order)
            conn.executemany("INSERT INTO nokey VALUES (?, ?)", [(r[0] % 7, r[1]) for r in order])
            conn.executemany("INSERT INTO textkey VALUES (?, ?)", [(r[1], r[0]) for r in order])
            conn.execute("INSERT INTO textkey VALUES (NULL, 1)")  # NULL keys are allowed here
            conn.execute("INSERT INTO textkey VALUES (NULL, 2)")
            conn.executemany("INSERT INTO wr VALUES (?, ?)", [(r[0] % 3, r[0]) for r in order])
            conn.execute("COMMIT")
    with opened(two) as conn:
        conn.execute("DELETE FROM t WHERE id < 0")
        conn.execute("VACUUM")
    first, second = await ops.content_hash(str(one)), await ops.content_hash(str(two))
    assert first == second
    assert first["counts"] == {"nokey": 500, "t": 500, "textkey": 502, "wr": 500}
    assert (await ops.content_hash(str(one), ["t"]))["tables"] == {"t": first["tables"]["t"]}
    with opened(two) as conn:
        conn.execute("UPDATE t SET b = ? WHERE id = 250", (b"changed!",))
    assert (await ops.content_hash(str(two)))["tables"]["t"] != first["tables"]["t"]


async def test_content_hash_reads_text_that_is_not_utf8(ops: SqliteOps, tmp_path: Path) -> None:
    db = tmp_path / "latin1.db"
    with opened(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t VALUES (1, CAST(x'ff00fe' AS TEXT))")
    before = await ops.content_hash(str(db))
    with opened(db) as conn:
        conn.execute("UPDATE t SET v = CAST(x'ff00fd' AS TEXT)")
    assert (await ops.content_hash(str(db)))["total"] != before["total"]


# ---------------------------------------------------------------------------- backup, verify


async def test_backup_finishes_under_a_busy_writer_and_is_consistent(ops: SqliteOps, tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    with opened(db) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount INTEGER, pad BLOB)")
        conn.execute("CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 1), n, total)")
        conn.execute("BEGIN")
        conn.execute(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)"
            " INSERT INTO ledger (amount, pad) SELECT i % 97, randomblob(300) FROM s"
        )
        conn.execute("INSERT INTO totals SELECT 1, count(*), sum(amount) FROM ledger")
        conn.execute("COMMIT")

    stop = threading.Event()
    warmed_up = threading.Event()  # the writer is really busy before the backup starts
    committed = [0]
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            with opened(db) as conn:
                while not stop.is_set():
                    amount = random.randrange(1000)
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(
                        "INSERT INTO ledger (amount, pad) VALUES (?, randomblob(300))", (amount,)
                    )
                    conn.execute("UPDATE totals SET n = n + 1, total = total + ?", (amount,))
                    conn.execute("COMMIT")
                    committed[0] += 1
                    if committed[0] >= 20:
                        warmed_up.set()
                    time.sleep(0.003)
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)
            warmed_up.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        await asyncio.to_thread(warmed_up.wait, 60)
        dest = tmp_path / "emergency_backup.db"
        committed_at_start = committed[0]
        result = await ops.backup(str(db), str(dest), verify=True)
        committed_at_end = committed[0]
    finally:
        stop.set()
        thread.join()
    assert not failures
    assert committed_at_end > committed_at_start >= 20  # it wrote while the backup ran

    verified = result["verify"]
    assert verified["ok"] and verified["integrity"] == ["ok"]
    assert result["file_sha256"] == verified["file_sha256"]
    assert result["bytes"] == dest.stat().st_size
    # A consistent snapshot: every transaction is in it whole or not at all.
    (n, total), = rows(dest, "SELECT n, total FROM totals")
    assert rows(dest, "SELECT count(*), sum(amount) FROM ledger") == [(n, total)]
    assert n == verified["counts"]["ledger"] and 20_000 <= n <= 20_000 + committed_at_end
    assert (await ops.content_hash(str(dest)))["total"] == verified["content_hash"]
    assert (await ops.verify(str(dest)))["content_hash"] == verified["content_hash"]
    # Archived as one self-contained file in rollback-journal mode.
    assert dest.read_bytes()[18:20] == b"\x01\x01"
    assert names(tmp_path, "emergency_backup*") == ["emergency_backup.db"]

    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.backup(str(db), str(dest))
    assert kind_of(excinfo) == "exists"
    plain = await ops.backup(str(db), str(tmp_path / "second.db"))
    assert "verify" not in plain and len(plain["file_sha256"]) == 64


async def test_verify_reports_damage_without_raising(ops: SqliteOps, tmp_path: Path) -> None:
    db = tmp_path / "damaged.db"
    build_db(db, pad=3000)
    backup = tmp_path / "b.db"
    await ops.backup(str(db), str(backup))
    _garble_pages(backup)
    checked = await ops.verify(str(backup))
    assert not checked["ok"] and checked["integrity"] != ["ok"]
    fast = await ops.verify(str(db), content_hash=False)
    assert fast["ok"] and fast["content_hash"] is None and fast["counts"]["projects"] == 3


async def test_list_backups_newest_first(ops: SqliteOps, tmp_path: Path) -> None:
    folder = tmp_path / "databases"
    build_db(folder / "production.db")
    for age, name in ((300, "production_backup_a.db"), (100, "production_backup_b.db")):
        await ops.backup(str(folder / "production.db"), str(folder / name))
        os.utime(folder / name, (time.time() - age, time.time() - age))
    (folder / "production_backup_c.db").write_bytes(b"not a database")
    (folder / "production_backup_b.db-wal").write_bytes(b"")
    got = await ops.list_backups(str(folder), "production_backup_*")
    assert [b["name"] for b in got["backups"]] == [
        "production_backup_c.db", "production_backup_b.db", "production_backup_a.db",
    ]
    assert [b["sqlite"] for b in got["backups"]] == [False, True, True]
    assert got["backups"][1]["bytes"] == (folder / "production_backup_b.db").stat().st_size
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", got["backups"][0]["mtime_iso"])
    with pytest.raises(SqliteAgentError):
        await ops.list_backups(str(folder), "../*")


# ---------------------------------------------------------------------------- full restore


def _garble_pages(path: Path) -> None:
    """Overwrite the b-tree page headers of most pages: structural damage, as disks do it."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(page, len(data), page):
        data[start : start + 12] = b"\xa5" * 12
    path.write_bytes(bytes(data))


def _dir_state(folder: Path) -> dict[str, str]:
    """File names in ``folder`` with the sha256 of each database file (-shm content is
    SQLite's shared memory: readers may touch it)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.suffix == ".db" else ""
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


async def test_full_restore_end_to_end_and_rerun(ops: SqliteOps, tmp_path: Path) -> None:
    folder = tmp_path / "databases"
    live = folder / "production.db"
    build_db(live)
    pre = folder / "production_backup_20250730_110000.db"
    good = (await ops.backup(str(live), str(pre), verify=True))["verify"]["content_hash"]

    # The bad deployment's rows are committed but live only in the -wal (app killed).
    crash_write(
        live,
        [
            "UPDATE projects SET status = 'broken'",
            "DELETE FROM step_progress WHERE id % 2 = 0",
            "INSERT INTO projects (name) VALUES ('phase 3 junk')",
        ],
    )
    assert size(f"{live}-wal") > 0 and size(f"{live}-shm") >= 0
    bad = (await ops.content_hash(str(live)))["total"]
    assert bad != good

    corrupted_dir = tmp_path / "corrupted"
    corrupted_dir.mkdir()
    result = await ops.restore(str(live), str(pre), corrupted_dir=str(corrupted_dir))
    assert result["already_restored"] is False
    assert result["content_hash"] == good and result["journal_mode"] == "wal"
    assert result["quick_check"] == ["ok"] and result["foreign_key_violations"] == 0
    assert set(result["removed"]) <= {f"{live}-shm", f"{live}-wal", f"{live}-journal"}
    # The corrupted state is kept, WAL rows included (copied, not moved away).
    corrupted = Path(str(result["corrupted_copy"]))
    assert corrupted.parent == corrupted_dir
    assert re.fullmatch(r"production_corrupted_\d{8}_\d{6}\.db", corrupted.name)
    assert (await ops.content_hash(str(corrupted)))["total"] == bad
    # The live file: no stale -wal/-shm, WAL mode, the backup's content, no temp left over.
    assert size(f"{live}-wal") == size(f"{live}-shm") == -1
    assert live.read_bytes()[18:20] == b"\x02\x02"
    assert not [p for p in os.listdir(folder) if ".restore-" in p or p.endswith(".partial")]
    assert (await ops.verify(str(live)))["content_hash"] == good
    assert rows(live, "PRAGMA journal_mode") == [("wal",)]
    assert rows(live, "SELECT count(*) FROM projects WHERE status = 'broken'") == [(0,)]

    # Running it again changes nothing and keeps no second copy.
    again = await ops.restore(str(live), str(pre), corrupted_dir=str(corrupted_dir))
    assert again["already_restored"] is True and again["corrupted_copy"] is None
    assert again["content_hash"] == good
    assert [p.name for p in corrupted_dir.iterdir()] == [corrupted.name]
    assert (await ops.content_hash(str(live)))["total"] == good


async def test_restore_over_a_wrecked_or_missing_live_db_from_a_backup_with_a_wal(
    ops: SqliteOps, tmp_path: Path
) -> None:
    folder = tmp_path / "databases"
    backup = folder / "production_backup.db"
    build_db(backup)
    # Committed rows that exist only in the backup's -wal: a plain cp would lose them.
    crash_write(backup, ["INSERT INTO projects (name) VALUES ('only in the wal')"])
    wanted = (await ops.content_hash(str(backup)))["total"]

    live = folder / "production.db"
    live.write_bytes(os.urandom(3 * 4096))  # severe corruption: not even a database
    wreck = hashlib.sha256(live.read_bytes()).hexdigest()
    result = await ops.restore(str(live), str(backup), journal_mode="wal")
    assert result["content_hash"] == wanted and result["copy"]["method"] == "full"
    assert result["corrupted"] is not None and result["corrupted"]["method"] == "raw_copy"
    assert result["corrupted"]["file_sha256"] == wreck
    assert rows(live, "SELECT count(*) FROM projects WHERE name = 'only in the wal'") == [(1,)]

    for leftover in (live, Path(f"{live}-wal"), Path(f"{live}-shm")):
        leftover.unlink(missing_ok=True)  # the plan's `mv` already took it away
    again = await ops.restore(str(live), str(backup), verify_copy="full")
    assert again["corrupted_copy"] is None and again["journal_mode"] == "wal"
    assert (await ops.verify(str(live)))["content_hash"] == wanted


async def test_restore_refuses_a_bad_backup_and_leaves_the_live_db_alone(ops: SqliteOps, tmp_path: Path) -> None:
    folder = tmp_path / "databases"
    live = folder / "production.db"
    build_db(live, pad=3000)
    backup = tmp_path / "backup.db"
    await ops.backup(str(live), str(backup))
    backup_bytes = backup.read_bytes()
    with opened(live) as conn:
        conn.execute("UPDATE projects SET status = 'broken'")
    live_hash = (await ops.content_hash(str(live)))["total"]
    before = _dir_state(folder)

    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(backup_bytes[: len(backup_bytes) // 2])
    garbled = tmp_path / "garbled.db"
    garbled.write_bytes(backup_bytes)
    _garble_pages(garbled)
    not_sqlite = tmp_path / "header.db"
    not_sqlite.write_bytes(b"\0" * 100 + backup_bytes[100:])
    for bad in (truncated, garbled, not_sqlite):
        with pytest.raises(SqliteAgentError) as excinfo:
            await ops.restore(str(live), str(bad), corrupted_dir=str(tmp_path))
        assert kind_of(excinfo) == "integrity_failed", bad.name
        assert "nothing was changed" in str(excinfo.value)
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.restore(str(live), str(backup), expect_content_hash="0" * 64)
    assert kind_of(excinfo) == "hash_mismatch"

    assert _dir_state(folder) == before
    assert not names(tmp_path, "production_corrupted_*")
    assert (await ops.content_hash(str(live)))["total"] == live_hash


async def test_restore_refuses_while_another_process_holds_the_db(ops: SqliteOps, tmp_path: Path) -> None:
    live, backup = await with_backup(ops, tmp_path)
    with opened(live) as conn:
        conn.execute("UPDATE projects SET status = 'broken'")
    reader = sqlite3.connect(live)
    try:
        reader.execute("SELECT count(*) FROM projects").fetchone()
        with pytest.raises(SqliteAgentError) as excinfo:
            await ops.restore(str(live), str(backup))
        assert kind_of(excinfo) == "in_use"
        assert os.getpid() in [h["pid"] for h in excinfo.value.details]
        assert reader.execute("SELECT count(*) FROM projects WHERE status = 'broken'").fetchone()
    finally:
        reader.close()
    assert not glob.glob(str(tmp_path / "production_corrupted_*"))
    done = await ops.restore(str(live), str(backup))
    assert done["already_restored"] is False
    assert rows(live, "SELECT count(*) FROM projects WHERE status = 'broken'") == [(0,)]


def test_release_check_sees_an_idle_wal_connection(tmp_path: Path) -> None:
    """The last guard before the swap: leaving WAL mode needs every other connection gone."""
    live = tmp_path / "w.db"
    build_db(live)
    other = sqlite3.connect(live)
    try:
        other.execute("SELECT 1 FROM projects").fetchone()
        with pytest.raises(sqlite_agent.OpError) as excinfo:
            agent_restore._release_live(str(live))
        assert excinfo.value.kind == "in_use"
    finally:
        other.close()
    assert rows(live, "PRAGMA journal_mode") == [("wal",)]
    assert agent_restore._release_live(str(live)) == "wal"
    assert rows(live, "PRAGMA journal_mode") == [("delete",)]


# ---------------------------------------------------------------------------- access


async def test_restrict_and_restore_access_round_trip(ops: SqliteOps, tmp_path: Path) -> None:
    db = production_db(tmp_path)
    snapshot = tmp_path / "access_snapshot.json"
    original = rows(db, "SELECT user_id, role, access_level FROM user_permissions ORDER BY id")

    first = await ops.restrict_access(str(db), str(snapshot), tag="RB-20261125-0001")
    assert first["saved"] == 8 and first["already_saved"] == 0 and first["restricted"] == 5
    after = dict(rows(db, "SELECT user_id, access_level FROM user_permissions"))
    assert after == {
        "u1": "admin", "u2": "admin", "u3": "read_only", "u4": "read_only",
        "u5": "read_only", "u6": "read_only", "u7": "read_only", "u8": "read_only",
    }  # exempt roles untouched; a NULL role is not exempt
    saved = json.loads(snapshot.read_text())
    assert saved["table"] == "user_permissions" and len(saved["rows"]) == 8
    assert ["u7", None] in saved["rows"] and ["u3", "write"] in saved["rows"]

    # A re-run (a retried step) must not overwrite the originals with "read_only".
    with opened(db) as conn:
        conn.execute("INSERT INTO user_permissions (user_id, role, access_level)"
                     " VALUES ('u9', 'editor', 'admin')")
    with pytest.raises(SqliteAgentError) as excinfo:  # another incident's snapshot
        await ops.restrict_access(str(db), str(snapshot), tag="RB-20261125-0002")
    assert kind_of(excinfo) == "bad_snapshot"
    second = await ops.restrict_access(str(db), str(snapshot), tag="RB-20261125-0001")
    assert second["saved"] == 1 and second["already_saved"] == 8
    resaved = json.loads(snapshot.read_text())
    assert resaved["rows"][:8] == saved["rows"] and resaved["rows"][8] == ["u9", "admin"]

    restored = await ops.restore_access(str(db), str(snapshot))
    assert restored["restored"] == 9 and restored["missing"] == []
    assert restored["not_in_snapshot"] == 0
    final = rows(db, "SELECT user_id, role, access_level FROM user_permissions ORDER BY id")
    assert final == [*original, ("u9", "editor", "admin")]
    again = await ops.restore_access(str(db), str(snapshot))
    assert again["changed"] == 0

    with opened(db) as conn:
        conn.execute("DELETE FROM user_permissions WHERE user_id = 'u4'")
    assert (await ops.restore_access(str(db), str(snapshot)))["missing"] == ["u4"]


async def test_access_ops_refuse_bad_names(ops: SqliteOps, tmp_path: Path) -> None:
    db = production_db(tmp_path)
    snapshot = str(tmp_path / "s.json")
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.restrict_access(str(db), snapshot, table='user_permissions"; DROP TABLE x; --')
    assert kind_of(excinfo) == "bad_table"
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.restrict_access(str(db), snapshot, column="access_level = 'admin', role")
    assert kind_of(excinfo) == "bad_column"
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.restrict_access(str(db), snapshot, key="role")  # not unique
    assert "unique" in str(excinfo.value)
    assert size(snapshot) == -1
    assert rows(db, "SELECT count(*) FROM user_permissions WHERE access_level = 'read_only'") == [
        (2,)
    ]
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.restore_access(str(db), snapshot)
    assert kind_of(excinfo) == "not_found"


# ---------------------------------------------------------------------------- strategy A


async def test_selective_restore_by_keys(ops: SqliteOps, tmp_path: Path) -> None:
    live, backup = await with_backup(ops, tmp_path)
    with opened(live) as conn:
        conn.execute("UPDATE projects SET status = 'broken' WHERE id IN (1, 3)")
        conn.execute("UPDATE projects SET id = 4 WHERE id = 2")  # keys 2 and 4 both differ
        conn.execute("INSERT INTO projects (id, name) VALUES (99, 'junk')")

    result = await ops.selective_restore(
        str(live), str(backup), ["projects"], keys={"projects": [1, 2, 4, 99]}
    )
    assert result["tables"]["projects"] == {"restored": 4, "deleted": 3, "inserted": 2}
    assert rows(live, "SELECT id, status FROM projects ORDER BY id") == [
        (1, "active"), (2, "active"), (3, "broken"),  # 3 was not chosen
    ]
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.selective_restore(str(live), str(backup), ["projects"], keys={"projects": [3]},
                                    key_columns={"projects": "name; DROP TABLE projects"})
    assert kind_of(excinfo) == "bad_column"
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.selective_restore(str(live), str(backup), ["sqlite_master"])
    assert kind_of(excinfo) == "bad_table"


async def test_selective_restore_refuses_new_fk_violations(ops: SqliteOps, tmp_path: Path) -> None:
    live, backup = await with_backup(ops, tmp_path)
    with opened(live) as conn:
        conn.execute("INSERT INTO projects (id, name) VALUES (7, 'new')")
        conn.execute("INSERT INTO phases (project_id, name, position) VALUES (7, 'p', 1)")
    before = (await ops.content_hash(str(live)))["total"]
    with pytest.raises(SqliteAgentError) as excinfo:  # would orphan the new phase
        await ops.selective_restore(str(live), str(backup), ["projects"], keys={"projects": [7]})
    assert kind_of(excinfo) == "fk_violation"
    assert (await ops.content_hash(str(live)))["total"] == before
    forced = await ops.selective_restore(
        str(live), str(backup), ["projects"], keys={"projects": [7]}, allow_fk_violations=True
    )
    assert forced["new_fk_violations"] == 1


async def test_diff_then_selective_restore_of_every_difference(ops: SqliteOps, tmp_path: Path) -> None:
    live, backup = await with_backup(ops, tmp_path)
    with opened(live) as conn:
        conn.execute("UPDATE step_progress SET status = 'failed' WHERE id IN (3, 4)")
        conn.execute("UPDATE step_progress SET notes = 5 WHERE id = 6")  # '5' vs 5 differ too
        conn.execute("DELETE FROM step_progress WHERE id IN (10, 11, 12)")
        conn.execute(
            "INSERT INTO step_progress (id, phase_id, step_key) VALUES (1000, 11, 'new')"
        )
        conn.execute("UPDATE projects SET name = 'renamed' WHERE id = 1")
    diff = await ops.diff(str(live), str(backup))
    assert not diff["identical"]
    steps = diff["tables"]["step_progress"]
    assert (steps["added"], steps["removed"], steps["changed"]) == (1, 3, 3)
    assert steps["keys_sample"] == [[3], [4], [6], [10], [11], [12], [1000]]
    assert diff["tables"]["projects"]["changed"] == 1
    assert diff["tables"]["phases"] == {
        "added": 0, "removed": 0, "changed": 0, "keys_sample": [],
        "added_keys": [], "removed_keys": [], "changed_keys": [],
    }
    assert steps["added_keys"] == [[1000]]
    assert len(steps["removed_keys"]) == 3 and len(steps["changed_keys"]) == 3

    result = await ops.selective_restore(str(live), str(backup), ["step_progress"])
    assert result["tables"]["step_progress"] == {"restored": 7, "deleted": 4, "inserted": 6}
    live_hash = (await ops.content_hash(str(live), ["step_progress"]))["tables"]
    backup_hash = (await ops.content_hash(str(backup), ["step_progress"]))["tables"]
    assert live_hash == backup_hash
    after = await ops.diff(str(live), str(backup), ["step_progress", "projects"])
    assert after["tables"]["step_progress"]["changed"] == 0
    assert after["tables"]["projects"]["changed"] == 1  # not chosen, not touched


# ---------------------------------------------------------------------------- strategy B


def _deploy(db: Path) -> int:
    """A bad deployment that records every change in change_history; returns the last id
    before it. Several changes hit the same rows, so the undo order matters."""
    with opened(db) as conn:
        (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM change_history").fetchone()
        conn.execute("BEGIN")
        gl = conn.execute(
            "INSERT INTO governance_logs (event_type, action, details) VALUES ('deploy', 'x', ?)",
            ('{"phase": 3}',),
        ).lastrowid
        new = read_row(conn, "governance_logs", "id", gl)
        record_change(conn, "governance_logs", gl, "INSERT", None, new, deployment="phase-3")

        for status in ("editing", "broken"):
            old = read_row(conn, "projects", "id", 1)
            conn.execute(
                "UPDATE projects SET status = ?, description = ?, updated_at = 'now' WHERE id = 1",
                (status, "it's \"inline\" edited"),
            )
            new = read_row(conn, "projects", "id", 1)
            record_change(conn, "projects", 1, "UPDATE", old, new, governance_log_id=gl,
                          deployment="phase-3")

        pid = conn.execute("INSERT INTO projects (name) VALUES ('phase 3 project')").lastrowid
        record_change(conn, "projects", pid, "INSERT", None, read_row(conn, "projects", "id", pid),
                      deployment="phase-3")
        old = read_row(conn, "projects", "id", pid)
        conn.execute("UPDATE projects SET status = 'live' WHERE id = ?", (pid,))
        record_change(conn, "projects", pid, "UPDATE", old, read_row(conn, "projects", "id", pid),
                      deployment="phase-3")

        for step_id in (1, 2):  # update, then delete the same row; row 2 holds a blob
            old = read_row(conn, "step_progress", "id", step_id)
            conn.execute("UPDATE step_progress SET status = 'gone' WHERE id = ?", (step_id,))
            new = read_row(conn, "step_progress", "id", step_id)
            record_change(conn, "step_progress", step_id, "UPDATE", old, new, deployment="phase-3")
            conn.execute("DELETE FROM step_progress WHERE id = ?", (step_id,))
            record_change(conn, "step_progress", step_id, "DELETE", new, None, deployment="phase-3")

        old = read_row(conn, "user_permissions", "user_id", "u3")
        conn.execute("UPDATE user_permissions SET user_id = 'u3-renamed' WHERE user_id = 'u3'")
        new = read_row(conn, "user_permissions", "user_id", "u3-renamed")
        record_change(conn, "user_permissions", old["id"], "UPDATE", old, new, deployment="phase-3")
        conn.execute("COMMIT")
    return int(last)


async def test_transaction_rollback_undoes_newest_first(ops: SqliteOps, tmp_path: Path) -> None:
    db = production_db(tmp_path)
    with opened(db) as conn:
        conn.execute("UPDATE step_progress SET notes = ? WHERE id = 2", (b"\x00\xffblob",))
        conn.execute("UPDATE projects SET description = 1.5 WHERE id = 1")
    clean = await ops.content_hash(str(db))
    since = _deploy(db)
    assert (await ops.content_hash(str(db)))["total"] != clean["total"]

    result = await ops.transaction_rollback(str(db), since_id=since)
    assert result["undone"] == 9 and result["recorded_by_triggers"] == 0
    assert result["kept_records"] == 1  # the deployment's governance row stays: the audit record
    ids = [r["id"] for r in result["undone_rows"]]
    assert ids == sorted(ids, reverse=True) and min(ids) == since + 2
    assert result["by_table"] == {
        "user_permissions": {"INSERT": 0, "UPDATE": 1, "DELETE": 0},
        "step_progress": {"INSERT": 0, "UPDATE": 2, "DELETE": 2},
        "projects": {"INSERT": 1, "UPDATE": 3, "DELETE": 0},
    }
    data = ["projects", "phases", "step_progress", "user_permissions"]
    assert (await ops.content_hash(str(db), data))["tables"] == {t: clean["tables"][t] for t in data}
    assert rows(db, "SELECT notes FROM step_progress WHERE id = 2") == [(b"\x00\xffblob",)]
    again = await ops.transaction_rollback(str(db), since_id=since)  # the ledger: never twice
    assert again["undone"] == 0 and again["already_undone"] == 9 and not again["conflicts"]


async def test_transaction_rollback_since_time_and_deployment(ops: SqliteOps, tmp_path: Path) -> None:
    db = production_db(tmp_path)
    with opened(db) as conn:
        for when, deployment, status in (
            ("2025-07-30T11:00:00.000Z", "phase-2", "old"),
            ("2025-07-30T12:30:00.000Z", "phase-3", "new"),
        ):
            old = read_row(conn, "projects", "id", 3)
            conn.execute("UPDATE projects SET status = ? WHERE id = 3", (status,))
            record_change(conn, "projects", 3, "UPDATE", old, read_row(conn, "projects", "id", 3),
                          changed_at=when, deployment=deployment)
    result = await ops.transaction_rollback(str(db), since_time="2025-07-30 12:00:00")
    assert result["undone"] == 1 and result["undone_rows"][0]["deployment"] == "phase-3"
    assert rows(db, "SELECT status FROM projects WHERE id = 3") == [("old",)]
    assert rows(db, "SELECT count(*) FROM change_history") == [(2,)]  # the history is kept
    with pytest.raises(SqliteAgentError, match="cannot read 'not a time'"):
        await ops.transaction_rollback(str(db), since_time="not a time")
    with pytest.raises(SqliteAgentError, match="exactly one"):
        await ops.transaction_rollback(str(db), since_id=0, since_time="2025-01-01")


async def test_transaction_rollback_stops_on_drift_and_bad_history(ops: SqliteOps, tmp_path: Path) -> None:
    db = production_db(tmp_path)
    since = _deploy(db)
    with opened(db) as conn:  # a change the history does not know about
        conn.execute("UPDATE projects SET status = 'hotfixed' WHERE id = 1")
    before = await ops.content_hash(str(db))
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.call("transaction_rollback", {"db": str(db), "since_id": since, "on_conflict": "stop"})
    assert kind_of(excinfo) == "conflict"
    assert excinfo.value.details[0]["table"] == "projects"
    assert await ops.content_hash(str(db)) == before  # nothing changed, history kept
    forced = await ops.transaction_rollback(str(db), since_id=since, ignore_drift=True)
    assert forced["undone"] == 9

    for table, old in (
        ("projects; DROP TABLE projects", {"id": 1}),
        ("projects", {"id": 1, "status = 'x', name": "y"}),
        ("change_history", {"id": 1}),
    ):
        with opened(db) as conn:
            (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM change_history").fetchone()
            record_change(conn, table, 1, "UPDATE", old, {"id": 1})
        with pytest.raises(SqliteAgentError) as excinfo:
            await ops.transaction_rollback(str(db), since_id=last)
        assert kind_of(excinfo) in ("bad_table", "bad_column", "bad_request"), table
        with opened(db) as conn:
            conn.execute("DELETE FROM change_history WHERE id > ?", (last,))
    assert rows(db, "SELECT count(*) FROM projects") == [(3,)]


def test_change_history_schema_has_the_columns_the_agent_reads(tmp_path: Path) -> None:
    with opened(tmp_path / "h.db") as conn:
        conn.execute(CHANGE_HISTORY_SCHEMA.replace("REFERENCES governance_logs(id)", ""))
        columns = {r[1] for r in conn.execute("PRAGMA table_info(change_history)")}
    assert set(sqlite_agent.HISTORY_COLUMNS) | {"changed_at", "deployment"} <= columns


# ---------------------------------------------------------------------------- governance


async def test_governance_insert_stores_hostile_text_verbatim(ops: SqliteOps, tmp_path: Path) -> None:
    db = production_db(tmp_path)
    canary = tmp_path / "pwned"
    reason = hostile(canary)
    record = {
        "event_type": "emergency_rollback",
        "user_id": "emergency_admin'; --",
        "user_role": "incident_commander",
        "resource_type": "production_deployment",
        "resource_id": "of-bev-phase-3",
        "action": "rollback_deployment",
        "success": True,
        "details": {"rollback_reason": reason, "database_restoration": {"integrity": True}},
        "runtime_context": {"incident_commander": reason, "rollback_team": ["a", "b"]},
    }
    got = await ops.governance_insert(str(db), record)
    assert got["inserted"] and got["table"] == "governance_logs"
    (user_id, success, details, context), = rows(
        db,
        "SELECT user_id, success, details, runtime_context FROM governance_logs WHERE id = ?",
        (got["id"],),
    )
    assert user_id == "emergency_admin'; --" and success == 1
    assert json.loads(details) == record["details"]
    assert json.loads(context)["incident_commander"] == reason
    assert not canary.exists()
    assert rows(db, "SELECT count(*) FROM governance_logs") == [(6,)]

    again = await ops.governance_insert(str(db), record, if_absent=True)
    assert again == {"id": got["id"], "inserted": False, "table": "governance_logs"}
    with pytest.raises(SqliteAgentError) as excinfo:
        await ops.governance_insert(str(db), {"action": "x", "event_type); DROP TABLE x; --": 1})
    assert kind_of(excinfo) == "bad_column"


async def test_long_params_go_through_stdin(ops: SqliteOps, tmp_path: Path) -> None:
    db = production_db(tmp_path)
    long_text = (hostile(tmp_path / "pwned") + "\n") * 1200
    assert len(long_text) > MAX_COMMAND_BYTES
    got = await ops.governance_insert(
        str(db), {"event_type": "e", "action": "a", "details": long_text}
    )
    assert rows(db, "SELECT details FROM governance_logs WHERE id = ?", (got["id"],)) == [
        (long_text,)
    ]
    assert not (tmp_path / "pwned").exists()


async def test_over_each_transport(transport: LocalTransport | SSHTransport, tmp_path: Path) -> None:
    db = production_db(tmp_path)
    ops = SqliteOps(transport, timeout=60, cwd=str(tmp_path))
    assert (await ops.integrity_check("production.db"))["ok"]
    reason = hostile(tmp_path / "pwned")
    got = await ops.governance_insert(
        "production.db", {"event_type": "e", "action": "a", "details": {"reason": reason}}
    )
    (details,) = rows(db, "SELECT details FROM governance_logs WHERE id = ?", (got["id"],))[0]
    assert json.loads(details) == {"reason": reason}
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------- other Pythons


def _python(version: str) -> str | None:
    """A Python ``version`` interpreter on this machine (pyenv or PATH), if there is one."""
    pyenv = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python3")))
    for candidate in [*pyenv, shutil.which(f"python{version}")]:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.mark.parametrize("version", ["3.9", "3.13"])
async def test_agent_runs_on_other_pythons_with_the_same_hashes(
    local_transport: LocalTransport, tmp_path: Path, version: str
) -> None:
    python = _python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    db = production_db(tmp_path)
    with opened(db) as conn:
        conn.execute("UPDATE step_progress SET notes = ? WHERE id = 2", (b"\x00\xff",))
        conn.execute("UPDATE projects SET description = 0.1 WHERE id = 1")
    other = SqliteOps(local_transport, python=python)
    ours = SqliteOps(local_transport)
    assert await other.content_hash(str(db)) == await ours.content_hash(str(db))
    backup = await other.backup(str(db), str(tmp_path / "b.db"), verify=True)
    assert backup["verify"]["content_hash"] == (await ours.content_hash(str(db)))["total"]
    since = _deploy(db)
    assert (await other.transaction_rollback(str(db), since_id=since))["undone"] == 9
    data = ["projects", "phases", "step_progress", "user_permissions"]
    assert (await other.content_hash(str(db), data)) == (await ours.content_hash(str(tmp_path / "b.db"), data))
    restored = await other.restore(str(db), str(tmp_path / "b.db"))  # the history B kept goes too
    assert restored["already_restored"] is False
    assert restored["content_hash"] == backup["verify"]["content_hash"]


async def test_agent_says_plainly_when_the_target_python_is_too_old(
    local_transport: LocalTransport, tmp_path: Path
) -> None:
    python = _python("3.8")
    if python is None:
        pytest.skip("no Python 3.8 on this machine")
    with pytest.raises(SqliteAgentError) as excinfo:
        await SqliteOps(local_transport, python=python).verify(str(tmp_path / "x.db"))
    assert kind_of(excinfo) == "unsupported_python" and "3.8" in str(excinfo.value)
