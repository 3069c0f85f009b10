"""rollback-bot's SQLite agent: typed SQLite operations that run ON the target.

Sent by ``actions.sqlite`` and run as ``python3 -I -c <this source> <op> <json params>``
(params ``-`` = read the JSON from stdin). Standard library only, Python 3.9+, imports
nothing from the project. Prints exactly one JSON line on stdout:
``{"ok": true, "op": ..., "result": {...}}`` (exit 0) or
``{"ok": false, "op": ..., "error": "...", "kind": "...", "details": ...}`` (exit 2).

Values are always bound, never pasted into SQL; table and column names are checked against
the schema (sqlite_master, table_xinfo) and quoted as identifiers. Blob values travel in
JSON as {"$blob_b64": "<base64>"}, in both directions.

Content hash ("rbh1"): per table, sha256 over marshal(version 2) of ("rbh1-table", name,
column names), then of every row tuple in a canonical order: ORDER BY the primary key (rows
with a NULL in a non-rowid primary key, and tables without one, are ordered by every column
with BINARY collation, then by every column's typeof). marshal v2 is a typed, exact,
machine-independent encoding (1, '1', 1.0, NULL and x'31' all differ; floats bit-exact;
text as UTF-8) done in C: about twice as fast as building text per value. The total is
sha256 over marshal(("rbh1-db", sorted (name, hexdigest) pairs)). It is independent of the
file layout (page order, free pages, journal mode, header counters), so a backup and its
source hash alike; file sha256 is reported separately for the archive.

verify runs PRAGMA integrity_check on one connection in a thread (SQLite releases the GIL
for the whole check) while the main thread reads the file for sha256 and then computes
the content hash on a second connection: two lanes for the two cores we plan for, rather
than three threads fighting over them. Files the agent owns (a backup it just wrote, a
restore temp copy, an archived backup with no -wal) are opened immutable with mmap.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import marshal
import os
import re
import shutil
import signal
import sqlite3
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

if sys.version_info < (3, 9):  # noqa: UP036 -- the target's Python, not ours: say so plainly
    sys.stdout.write(
        json.dumps(
            {
                "ok": False,
                "op": sys.argv[1] if len(sys.argv) > 1 else "",
                "error": "the SQLite agent needs Python 3.9+ on the target, found "
                + sys.version.split()[0],
                "kind": "unsupported_python",
            }
        )
        + "\n"
    )
    sys.exit(2)

AGENT_VERSION = "2"
HASH_FORMAT = "rbh1"
BLOB_KEY = "$blob_b64"
BUSY_TIMEOUT = 10.0
MMAP_SIZE = 2147418112  # SQLite caps it at its compile-time SQLITE_MAX_MMAP_SIZE anyway
READ_CHUNK = 1 << 20
JOURNAL_MODES = ("delete", "truncate", "persist", "memory", "wal", "off")
SNAPSHOT_FORMAT = "rollback-bot/access-snapshot/1"
HISTORY_COLUMNS = ("id", "table_name", "record_id", "operation", "old_values", "new_values")

Params = dict[str, Any]
Result = dict[str, Any]

#: Fault injection for the proofs, inert unless set: "N:LOG" makes the agent SIGKILL itself at
#: the N-th write point it reaches (0: never; "N:LOG:hold" waits there to be killed instead),
#: appending what happened to LOG. Write points: inside every write transaction (a progress
#: handler) and between the file steps of a restore.
KILL_HOOK_ENV = "ROLLBACK_AGENT_KILL"


class OpError(Exception):
    """An operation refused or failed; ``kind`` says why in one word, ``details`` shows it."""

    def __init__(self, message: str, kind: str = "bad_request", details: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


# ---------------------------------------------------------------------------- kill hook


class _KillHook:
    """Counts write points; kills (or holds) the process at the chosen one."""

    def __init__(self, spec: str) -> None:
        at, _, rest = spec.partition(":")
        self.log, _, mode = rest.partition(":")
        self.at = int(at)
        self.hold = mode == "hold"
        self.count = 0

    def note(self, line: str) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {line}\n")

    def point(self, name: str) -> int:
        self.count += 1
        if self.count == self.at:
            self.note(f"{'held' if self.hold else 'killed'} {self.count} {name}")
            while self.hold:
                time.sleep(1)  # until the test kills this process
            os.kill(os.getpid(), signal.SIGKILL)
        return 0


_HOOK = _KillHook(os.environ[KILL_HOOK_ENV]) if os.environ.get(KILL_HOOK_ENV) else None


def _kill_point(name: str) -> None:
    if _HOOK is not None:
        _HOOK.point(name)


def _watch(conn: sqlite3.Connection) -> None:
    """Make every ~20 SQLite VM steps of ``conn`` a write point (only with the kill hook)."""
    if _HOOK is not None:
        hook = _HOOK
        conn.set_progress_handler(lambda: hook.point("sql"), 20)


# ---------------------------------------------------------------------------- helpers


def _now_iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def _stamp() -> str:
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime())


def qi(name: str) -> str:
    """Quote ``name`` as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _path(p: Params, key: str, required: bool = True) -> str:
    value = p.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or "\0" in value:
        raise OpError(f"parameter {key!r} must be a non-empty path string")
    return os.path.abspath(value)


def _str(p: Params, key: str, default: str | None = None) -> str:
    value = p.get(key, default)
    if not isinstance(value, str) or not value:
        raise OpError(f"parameter {key!r} must be a non-empty string")
    return value


def _bool(p: Params, key: str, default: bool = False) -> bool:
    value = p.get(key, default)
    if not isinstance(value, bool):
        raise OpError(f"parameter {key!r} must be true or false")
    return value


def _int(p: Params, key: str, default: int, low: int = 0) -> int:
    value = p.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OpError(f"parameter {key!r} must be an integer >= {low}")
    return value


def _str_list(p: Params, key: str) -> list[str] | None:
    value = p.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise OpError(f"parameter {key!r} must be a list of names or null")
    return list(value)


def from_json(value: Any, where: str = "value") -> Any:
    """A JSON value as an SQLite value: {"$blob_b64": ...} becomes bytes; no lists or objects."""
    if isinstance(value, dict):
        if set(value) == {BLOB_KEY} and isinstance(value[BLOB_KEY], str):
            try:
                return base64.b64decode(value[BLOB_KEY], validate=True)
            except ValueError as exc:
                raise OpError(f"{where}: bad base64 in {BLOB_KEY}") from exc
        raise OpError(f"{where}: objects are not SQL values (blobs are {{{BLOB_KEY!r}: ...}})")
    if isinstance(value, list):
        raise OpError(f"{where}: lists are not SQL values")
    return value


def to_json(value: Any) -> Any:
    """An SQLite value as JSON: bytes become {"$blob_b64": ...}."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BLOB_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return to_json(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _uri(path: str, mode: str, immutable: bool) -> str:
    uri = Path(path).as_uri() + "?mode=" + mode
    return uri + "&immutable=1" if immutable else uri


def connect(
    path: str, mode: str = "ro", *, immutable: bool = False, timeout: float = BUSY_TIMEOUT
) -> sqlite3.Connection:
    """Open an existing database (never creates one); ``mode`` is "ro" or "rw".

    A read-only open of a database a killed writer left with a hot journal or WAL fails
    with "attempt to write a readonly database" (recovery writes): recover it first.
    """
    _existing(path)
    conn = sqlite3.connect(
        _uri(path, mode, immutable), uri=True, timeout=timeout, isolation_level=None
    )
    if mode == "ro" and not immutable:
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc):
                return conn  # the caller's first statement says what is wrong, as before
            conn.close()
            _recover(path, timeout, exc)
            conn = sqlite3.connect(
                _uri(path, mode, False), uri=True, timeout=timeout, isolation_level=None
            )
        except sqlite3.DatabaseError:
            return conn
    if mode == "ro" or immutable:
        conn.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
    return conn


def _recover(path: str, timeout: float, why: Exception) -> None:
    """Roll back a hot journal (or rebuild a WAL's index) with a read-write open."""
    try:
        rw = sqlite3.connect(_uri(path, "rw", False), uri=True, timeout=timeout)
        try:
            rw.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            rw.close()
    except sqlite3.Error as exc:
        raise OpError(
            f"database {path} was left mid-write by a killed writer and needs recovery, "
            f"which needs write access: {exc} (read-only open: {why})",
            "needs_recovery",
        ) from None


def _existing(path: str) -> str:
    if not os.path.isfile(path):
        raise OpError(f"database not found: {path}", "not_found")
    return path


def _has_wal(path: str) -> bool:
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _publish(partial: str, dest: str) -> None:
    """Move ``partial`` to ``dest`` atomically, never replacing an existing ``dest``."""
    try:
        os.link(partial, dest)
    except FileExistsError:
        raise OpError(f"refusing to overwrite existing file: {dest}", "exists") from None
    except OSError:  # no hard links here: check, then rename
        if os.path.exists(dest):
            raise OpError(f"refusing to overwrite existing file: {dest}", "exists") from None
        os.rename(partial, dest)
    else:
        os.unlink(partial)
    _fsync_dir(os.path.dirname(dest))


def _write_json_atomic(path: str, doc: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def file_sha256(path: str) -> tuple[str, int]:
    """sha256 hex digest and size of a file (hashlib releases the GIL on each chunk)."""
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


class _Background:
    """Runs ``fn(*args)`` in a thread; ``get()`` returns its result or raises its error."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._result = fn(*args)
        except BaseException as exc:
            self._error = exc

    def get(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


# ---------------------------------------------------------------------------- schema


def user_tables(conn: sqlite3.Connection, schema: str = "main") -> list[str]:
    """Ordinary tables of ``schema`` (no sqlite_* tables, no virtual tables), sorted."""
    rows = conn.execute(
        f"SELECT name FROM {qi(schema)}.sqlite_master WHERE type = 'table' "
        "AND lower(substr(name, 1, 7)) <> 'sqlite_' "
        "AND upper(substr(ltrim(sql), 1, 14)) <> 'CREATE VIRTUAL' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows]


def resolve_tables(
    conn: sqlite3.Connection, tables: Sequence[str] | None, schema: str = "main"
) -> list[str]:
    """The requested tables by their schema spelling (every user table for None)."""
    known = user_tables(conn, schema)
    if tables is None:
        return known
    by_lower = {t.lower(): t for t in known}
    out: list[str] = []
    for name in tables:
        if not isinstance(name, str) or name.lower() not in by_lower:
            raise OpError(
                f"no such table: {name!r} (tables: {', '.join(known) or 'none'})",
                "bad_table",
            )
        if by_lower[name.lower()] not in out:
            out.append(by_lower[name.lower()])
    return out


class TableInfo:
    """Columns, primary key and rowid facts of one table."""

    def __init__(self, conn: sqlite3.Connection, table: str, schema: str = "main") -> None:
        self.name = table
        try:
            rows = conn.execute(f"PRAGMA {qi(schema)}.table_xinfo({qi(table)})").fetchall()
        except sqlite3.OperationalError:  # SQLite < 3.26
            rows = [(*r, 0) for r in conn.execute(f"PRAGMA {qi(schema)}.table_info({qi(table)})")]
        if not rows:
            raise OpError(f"no such table: {table!r}", "bad_table")
        #: Columns that SELECT * returns (stored and generated).
        self.columns = [r[1] for r in rows if r[6] in (0, 2, 3)]
        #: Columns an INSERT may name (no generated columns).
        self.writable = [r[1] for r in rows if r[6] == 0]
        self.types = {r[1]: (r[2] or "") for r in rows}
        self.pk = [r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]
        #: Stored columns an INSERT must give a value for (NOT NULL, no default, no rowid alias).
        self.notnull_no_default = [
            r[1] for r in rows
            if r[3] and r[4] is None and r[6] == 0
            and not (len(self.pk) == 1 and r[5] and (r[2] or "").strip().upper() == "INTEGER")
        ]
        sql = conn.execute(
            f"SELECT sql FROM {qi(schema)}.sqlite_master WHERE type = 'table' AND name = ?",
            (table,),
        ).fetchone()
        self.without_rowid = bool(
            sql and re.search(r"\bWITHOUT\s+ROWID\s*;?\s*$", sql[0] or "", re.I)
        )
        self.rowid_alias = (
            len(self.pk) == 1
            and self.types[self.pk[0]].strip().upper() == "INTEGER"
            and not self.without_rowid
        )
        #: Columns that identify a row: the primary key, else the rowid.
        self.key = list(self.pk) if self.pk else ["rowid"]

    def column(self, name: str, what: str = "column") -> str:
        """``name`` as spelled in the schema, or a clear error."""
        for col in self.columns:
            if col.lower() == str(name).lower():
                return col
        raise OpError(
            f"table {self.name!r} has no {what} {name!r} (columns: {', '.join(self.columns)})",
            "bad_column",
        )


# ---------------------------------------------------------------------------- checks


def _check_messages(path: str, pragma: str, max_errors: int, immutable: bool) -> list[str]:
    try:
        conn = connect(path, "ro", immutable=immutable)
        try:
            rows = conn.execute(f"PRAGMA {pragma}({int(max_errors)})").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [f"{type(exc).__name__}: {exc}"]
    return [str(r[0]) for r in rows]


def _fk_violations(conn: sqlite3.Connection, schema: str = "main") -> list[dict[str, Any]]:
    rows = conn.execute(f"PRAGMA {qi(schema)}.foreign_key_check").fetchall()
    return [{"table": r[0], "rowid": r[1], "parent": r[2], "fkid": r[3]} for r in rows]


def op_integrity_check(p: Params) -> Result:
    """PRAGMA integrity_check: {ok, messages}."""
    db = _existing(_path(p, "db"))
    msgs = _check_messages(
        db, "integrity_check", _int(p, "max_errors", 100, 1), _bool(p, "immutable")
    )
    return {"ok": msgs == ["ok"], "messages": msgs}


def op_quick_check(p: Params) -> Result:
    """PRAGMA quick_check: {ok, messages}."""
    db = _existing(_path(p, "db"))
    msgs = _check_messages(db, "quick_check", _int(p, "max_errors", 100, 1), _bool(p, "immutable"))
    return {"ok": msgs == ["ok"], "messages": msgs}


def op_foreign_key_check(p: Params) -> Result:
    """PRAGMA foreign_key_check: {ok, violations: [{table, rowid, parent, fkid}], count}."""
    limit = _int(p, "max_rows", 1000, 1)
    conn = connect(_path(p, "db"))
    try:
        found = _fk_violations(conn)
    finally:
        conn.close()
    return {"ok": not found, "violations": found[:limit], "count": len(found)}


def _counts(path: str, tables: Sequence[str] | None, immutable: bool = False) -> dict[str, int]:
    conn = connect(path, "ro", immutable=immutable)
    try:
        conn.execute("BEGIN")
        names = resolve_tables(conn, tables)
        counts = {t: conn.execute(f"SELECT count(*) FROM {qi(t)}").fetchone()[0] for t in names}
        conn.execute("COMMIT")
    finally:
        conn.close()
    return counts


def op_record_counts(p: Params) -> Result:
    """Row counts per table, all read in one transaction: {counts: {table: n}}."""
    return {"counts": _counts(_path(p, "db"), _str_list(p, "tables"))}


# ---------------------------------------------------------------------------- query


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
    db = _path(p, "db")
    sql = _str(p, "sql")
    bound = _bind(p.get("params"))
    max_rows = _int(p, "max_rows", 1000, 0)
    write = _bool(p, "write")
    conn = connect(db, "rw" if write else "ro")
    conn.text_factory = lambda b: b.decode("utf-8", "replace")
    try:
        if not write:
            conn.execute("PRAGMA query_only = 1")
            conn.set_authorizer(_deny_attach)
        else:
            conn.execute("BEGIN IMMEDIATE")
        try:
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
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return out


# ---------------------------------------------------------------------------- hashing


def _surrogate_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _row_queries(info: TableInfo) -> list[str]:
    t = qi(info.name)
    every = ", ".join(
        [f"{qi(c)} COLLATE BINARY" for c in info.columns]
        + [f"typeof({qi(c)})" for c in info.columns]
    )
    if not info.pk:
        return [f"SELECT * FROM {t} ORDER BY {every}"]
    order = ", ".join(qi(c) for c in info.pk)
    if info.rowid_alias or info.without_rowid:  # unique and never NULL
        return [f"SELECT * FROM {t} ORDER BY {order}"]
    present = " AND ".join(f"{qi(c)} IS NOT NULL" for c in info.pk)
    return [
        f"SELECT * FROM {t} WHERE {present} ORDER BY {order}",
        f"SELECT * FROM {t} WHERE NOT ({present}) ORDER BY {every}",
    ]


def table_hash(conn: sqlite3.Connection, table: str) -> tuple[str, int]:
    """Content hash and row count of one table (see the module docstring)."""
    info = TableInfo(conn, table)
    queries = _row_queries(info)
    dumps = marshal.dumps
    for attempt in (0, 1):
        digest = hashlib.sha256()
        digest.update(dumps(("rbh1-table", table, tuple(info.columns)), 2))
        update = digest.update
        count = 0
        try:
            for sql in queries:
                for row in conn.execute(sql):
                    update(dumps(row, 2))
                    count += 1
            return digest.hexdigest(), count
        except sqlite3.OperationalError as exc:
            if attempt or "decode" not in str(exc).lower():
                raise
            conn.text_factory = _surrogate_text  # text that is not UTF-8: exact, slower
        finally:
            if attempt:
                conn.text_factory = str
    raise AssertionError("unreachable")


def _total(hashes: dict[str, str]) -> str:
    pairs = tuple(sorted(hashes.items()))
    return hashlib.sha256(marshal.dumps(("rbh1-db", pairs), 2)).hexdigest()


def content_hash(
    path: str, tables: Sequence[str] | None = None, *, immutable: bool = False
) -> Result:
    """{tables: {name: hex}, counts: {name: n}, total: hex, format} in one read transaction."""
    conn = connect(path, "ro", immutable=immutable)
    try:
        conn.execute("BEGIN")
        names = resolve_tables(conn, tables)
        hashes: dict[str, str] = {}
        counts: dict[str, int] = {}
        for name in names:
            hashes[name], counts[name] = table_hash(conn, name)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"tables": hashes, "counts": counts, "total": _total(hashes), "format": HASH_FORMAT}


def op_content_hash(p: Params) -> Result:
    """Logical content hash: {tables: {name: sha256hex}, total, counts, format}."""
    return content_hash(_path(p, "db"), _str_list(p, "tables"), immutable=_bool(p, "immutable"))


def verify_file(
    path: str, *, immutable: bool, check: str = "integrity_check", hashed: bool = True
) -> Result:
    """Integrity check then file sha256 (one thread) beside the content hash (main thread).

    With ``hashed=False`` the content hash is skipped (content_hash null, counts by count(*))
    and the file sha256 runs on the main thread beside the check.
    """
    started = time.monotonic()
    # Two balanced lanes: the check and the file hash together cost about what the content
    # hash costs; both release the GIL (SQLite and hashlib), so the lanes overlap.
    lane = _Background(_check_then_sha256, path, check, immutable, hashed)
    sha_main = None if hashed else file_sha256(path)
    out: Result = {"content_hash": None, "tables": {}, "counts": {}}
    try:
        if hashed:
            done = content_hash(path, immutable=immutable)
            out.update(content_hash=done["total"], tables=done["tables"], counts=done["counts"])
        else:
            out["counts"] = _counts(path, None, immutable)
    except (sqlite3.DatabaseError, OpError, UnicodeDecodeError) as exc:
        # A damaged schema can hold names that are not UTF-8: unreadable, so not verified.
        out["content_hash_error"] = f"{type(exc).__name__}: {exc}"
    messages, sha_lane = lane.get()
    sha, size = sha_main or sha_lane
    ok = messages == ["ok"] and "content_hash_error" not in out
    out.update(
        ok=ok,
        check=check,
        integrity=messages,
        file_sha256=sha,
        bytes=size,
        path=path,
        format=HASH_FORMAT,
        duration=round(time.monotonic() - started, 3),
    )
    return out


def _check_then_sha256(
    path: str, check: str, immutable: bool, with_sha: bool
) -> tuple[list[str], tuple[str, int] | None]:
    """The check's messages, then (when asked) the file's sha256 and size."""
    messages = _check_messages(path, check, 100, immutable)
    return messages, file_sha256(path) if with_sha else None


def op_verify(p: Params) -> Result:
    """integrity_check + content hash + file sha256 + counts of one database file."""
    db = _path(p, "db")
    check = _str(p, "check", "integrity_check")
    if check not in ("integrity_check", "quick_check"):
        raise OpError("parameter 'check' must be 'integrity_check' or 'quick_check'")
    return verify_file(
        _existing(db),
        immutable=_bool(p, "immutable"),
        check=check,
        hashed=_bool(p, "content_hash", True),
    )


# ---------------------------------------------------------------------------- backup


def _snapshot_to(src: sqlite3.Connection, partial: str) -> None:
    """A consistent copy of ``src`` at ``partial`` (rollback-journal mode, fsynced)."""
    for stale in (partial, partial + "-journal", partial + "-wal", partial + "-shm"):
        _unlink(stale)
    dst = sqlite3.connect(partial, isolation_level=None)
    try:
        dst.execute("PRAGMA journal_mode = OFF")
        dst.execute("PRAGMA synchronous = OFF")
        src.backup(dst, pages=-1)  # one step: one read transaction, so it ends under writers
        dst.execute("PRAGMA journal_mode = DELETE")  # archives are single self-contained files
    finally:
        dst.close()
    _fsync_file(partial)


def op_backup(p: Params) -> Result:
    """Consistent snapshot via the backup API to dest (.partial, fsync, no-clobber rename)."""
    db = _path(p, "db")
    dest = _path(p, "dest")
    verify = _bool(p, "verify")
    hashed = _bool(p, "content_hash", True)
    if_exists = _str(p, "if_exists", "fail")
    if if_exists not in ("fail", "keep"):
        raise OpError("parameter 'if_exists' is 'fail' or 'keep'")
    if os.path.lexists(dest):
        if if_exists == "fail":
            raise OpError(f"refusing to overwrite existing file: {dest}", "exists")
        # Only a finished backup is ever published under dest (.partial, then a no-clobber
        # link), so an existing dest is a whole earlier run of this same step: keep it.
        out_kept: Result = {"path": dest, "existing": True, "backup_seconds": 0.0}
        out_kept["file_sha256"], out_kept["bytes"] = file_sha256(dest)
        out_kept["duration"] = 0.0
        return out_kept
    if not os.path.isdir(os.path.dirname(dest)):
        raise OpError(f"destination directory does not exist: {os.path.dirname(dest)}", "not_found")
    started = time.monotonic()
    src = connect(db, "rw")
    try:
        src.execute("PRAGMA query_only = 1")
        src.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
        partial = dest + ".partial"
        try:
            _snapshot_to(src, partial)
            _kill_point("backup:partial")
            _publish(partial, dest)
        except BaseException:
            _unlink(partial)
            raise
    finally:
        src.close()
    copied = time.monotonic() - started
    out: Result = {"path": dest, "backup_seconds": round(copied, 3)}
    if verify:
        checked = verify_file(dest, immutable=True, hashed=hashed)
        out.update(verify=checked, file_sha256=checked["file_sha256"], bytes=checked["bytes"])
    else:
        out["file_sha256"], out["bytes"] = file_sha256(dest)
    out["duration"] = round(time.monotonic() - started, 3)
    return out


def op_list_backups(p: Params) -> Result:
    """Backup files in dir matching pattern, newest first: {backups: [{path, name, ...}]}."""
    folder = _path(p, "dir")
    pattern = _str(p, "pattern", "*.db")
    limit = _int(p, "limit", 100, 1)
    if "/" in pattern:
        raise OpError("parameter 'pattern' is a file name pattern, without '/'")
    if not os.path.isdir(folder):
        raise OpError(f"no such directory: {folder}", "not_found")
    found = []
    for name in os.listdir(folder):
        if not fnmatch.fnmatchcase(name, pattern) or name.endswith(
            ("-wal", "-shm", "-journal", ".partial", ".tmp")
        ):
            continue
        path = os.path.join(folder, name)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):  # never open a FIFO or a device
                continue
            with open(path, "rb") as f:
                header = f.read(16)
        except OSError:
            continue
        found.append(
            {
                "path": path,
                "name": name,
                "bytes": st.st_size,
                "mtime": st.st_mtime,
                "mtime_iso": _now_iso(st.st_mtime),
                "sqlite": header == b"SQLite format 3\x00",
                "has_wal": _has_wal(path),
            }
        )
    found.sort(key=lambda b: (b["mtime"], b["name"]), reverse=True)
    return {"backups": found[:limit], "total": len(found), "dir": folder}


# ---------------------------------------------------------------------------- restore


def holders(path: str) -> list[dict[str, Any]]:
    """Other processes that have ``path`` (or its -wal) open, from /proc (Linux; else [])."""
    wanted = set()
    for candidate in (path, path + "-wal"):
        if os.path.exists(candidate):
            wanted.add(os.path.realpath(candidate))
    if not wanted or not os.path.isdir("/proc"):
        return []
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            links = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        if wanted.intersection(links):
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            found.append({"pid": int(pid), "comm": comm})
    return found


def _refuse_if_held(db: str) -> None:
    held = holders(db)
    if held:
        who = ", ".join(f"pid {h['pid']} ({h['comm']})" for h in held)
        raise OpError(
            f"database {db} is open in another process: {who}; stop it before a full restore",
            "in_use",
            held,
        )


def _live_state(db: str) -> Result:
    state: Result = {"journal_mode": None, "content_hash": None}
    try:
        conn = connect(db, "ro")
        try:
            state["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0].lower()
        finally:
            conn.close()
        state["content_hash"] = content_hash(db)["total"]
    except (sqlite3.DatabaseError, OpError) as exc:
        state["error"] = f"{type(exc).__name__}: {exc}"
    return state


def _unique_path(folder: str, stem: str, suffix: str) -> str:
    path = os.path.join(folder, stem + suffix)
    n = 1
    while os.path.lexists(path) or os.path.lexists(path + ".partial"):
        path = os.path.join(folder, f"{stem}_{n}{suffix}")
        n += 1
    return path


def _copy_live(db: str, folder: str) -> Result:
    """Checkpoint the live db and keep a consistent copy of it as <stem>_corrupted_<UTC>.db."""
    stem = os.path.splitext(os.path.basename(db))[0]
    dest = _unique_path(folder, f"{stem}_corrupted_{_stamp()}", ".db")
    out: Result = {"path": dest}
    conn = connect(db, "rw")
    try:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                out["checkpoint"] = list(
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                )
            _snapshot_to(conn, dest + ".partial")
            _kill_point("restore:live_copy_partial")
            _publish(dest + ".partial", dest)
            out["method"] = "backup_api"
        except sqlite3.DatabaseError as exc:  # too damaged to read: keep the raw files
            _unlink(dest + ".partial")
            out["backup_api_error"] = f"{type(exc).__name__}: {exc}"
            shutil.copyfile(db, dest + ".partial")
            _fsync_file(dest + ".partial")
            _publish(dest + ".partial", dest)
            if _has_wal(db):
                shutil.copyfile(db + "-wal", dest + "-wal")
                _fsync_file(dest + "-wal")
            out["method"] = "raw_copy"
    finally:
        conn.close()
    out["file_sha256"], out["bytes"] = file_sha256(dest)
    return out


def _prepare_temp(backup: str, tmp: str, expected: Result, full: bool) -> Result:
    """Copy the verified backup to ``tmp`` and prove the copy equals it."""
    _unlink(tmp)
    if _has_wal(backup):  # committed pages still in its WAL: copy through SQLite
        src = connect(backup, "ro")
        try:
            _snapshot_to(src, tmp)
        finally:
            src.close()
        full = True
    else:
        shutil.copyfile(backup, tmp)
        _fsync_file(tmp)
    _kill_point("restore:temp_copy")
    if full:
        checked = verify_file(tmp, immutable=True)
        if not checked["ok"] or checked["content_hash"] != expected["content_hash"]:
            raise OpError(
                "the copy of the backup does not verify", "copy_failed", checked["integrity"]
            )
        return {"method": "full", "file_sha256": checked["file_sha256"]}
    sha, _size = file_sha256(tmp)
    if sha != expected["file_sha256"]:
        raise OpError("the copy of the backup differs from the backup", "copy_failed")
    quick = _check_messages(tmp, "quick_check", 10, True)
    if quick != ["ok"]:
        raise OpError("the copy of the backup fails quick_check", "copy_failed", quick)
    return {"method": "sha256", "file_sha256": sha}


def _release_live(db: str) -> str | None:
    """Prove no other connection holds the live db; return the mode to put back on failure.

    Leaving WAL mode needs every other connection gone (an idle one too); a rollback-journal
    database only shows readers inside a transaction, hence the /proc look as well. A file
    too damaged to open is left to the /proc look alone.
    """
    conn = connect(db, "rw", timeout=2.0)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0].lower()
        if mode == "wal":
            now = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0].lower()
            if now != "delete":
                raise sqlite3.OperationalError("database is locked")
            return "wal"
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        return None
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            return None
        raise OpError(
            f"database {db} is in use by another connection ({exc}); stop it first", "in_use"
        ) from None
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


def _set_journal_mode(db: str, mode: str) -> str:
    conn = connect(db, "rw")
    try:
        return str(conn.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0]).lower()
    finally:
        conn.close()


def _journal_mode_param(p: Params) -> str | None:
    mode = p.get("journal_mode")
    if mode is None:
        return None
    if not isinstance(mode, str) or mode.lower() not in JOURNAL_MODES:
        raise OpError(f"parameter 'journal_mode' must be one of {', '.join(JOURNAL_MODES)}")
    return mode.lower()


def op_restore(p: Params) -> Result:
    """Full restore of db from backup: verify, keep a copy of the live db, copy, swap.

    (1) The backup must pass integrity_check (and equal expect_content_hash) before anything
    is touched. (2) The live db is checkpointed and copied with the backup API to
    <stem>_corrupted_<UTC>.db (raw files if it is too damaged to read): the plan's `mv` would
    move it away before a verified copy exists. (3) The backup is copied to a temp file beside
    the live db and proven equal (file sha256 equal to the verified backup's + quick_check,
    or a full verify when verify_copy="full" or the backup has a -wal). (4) Nothing else may
    hold the live db (/proc, and leaving WAL mode); stale -wal/-shm/-journal go; os.replace.
    (5) The journal mode is set (the live db's, or the one asked for).
    Re-run safe: when the live content hash already equals the backup's, only the journal
    mode is set and already_restored is true; after a crash before the swap the live db is
    unchanged (a second corrupted copy may be kept), after it the content already matches.
    """
    started = time.monotonic()
    db = _path(p, "db")
    backup = _path(p, "backup")
    folder = _path(p, "corrupted_dir", required=False) or os.path.dirname(db)
    expect = p.get("expect_content_hash")
    if expect is not None and not isinstance(expect, str):
        raise OpError("parameter 'expect_content_hash' must be a hex string or null")
    wanted_mode = _journal_mode_param(p)
    verify_copy = _str(p, "verify_copy", "sha256")
    if verify_copy not in ("sha256", "full"):
        raise OpError("parameter 'verify_copy' must be 'sha256' or 'full'")
    if not os.path.isfile(backup):
        raise OpError(f"backup not found: {backup}", "not_found")
    live_exists = os.path.exists(db)
    if live_exists and os.path.samefile(db, backup):
        raise OpError("backup and db are the same file")
    if not os.path.isdir(folder):
        raise OpError(f"corrupted_dir does not exist: {folder}", "not_found")
    if not os.path.isdir(os.path.dirname(db)) or (live_exists and not os.path.isfile(db)):
        raise OpError(f"{db} is not a database file in an existing directory", "not_found")
    if live_exists:
        _refuse_if_held(db)

    # (1) verify the backup before touching anything; meanwhile read the live db's state.
    live_job = _Background(_live_state, db) if live_exists else None
    checked = verify_file(backup, immutable=not _has_wal(backup))
    live = live_job.get() if live_job else {"journal_mode": None, "content_hash": None}
    if not checked["ok"]:
        raise OpError(
            f"backup {backup} fails verification; nothing was changed",
            "integrity_failed",
            {"integrity": checked["integrity"][:20], "error": checked.get("content_hash_error")},
        )
    if expect is not None and expect != checked["content_hash"]:
        raise OpError(
            f"backup content hash {checked['content_hash']} is not the expected {expect}; "
            "nothing was changed",
            "hash_mismatch",
        )
    mode = wanted_mode or (live["journal_mode"] if live["journal_mode"] in JOURNAL_MODES else "wal")
    out: Result = {
        "restored_from": backup,
        "db": db,
        "content_hash": checked["content_hash"],
        "backup_file_sha256": checked["file_sha256"],
        "counts": checked["counts"],
        "live_before": live,
    }

    # Re-run after completion: the live db already holds the backup's content.
    if live["content_hash"] == checked["content_hash"]:
        out.update(
            already_restored=True,
            corrupted_copy=None,
            journal_mode=_set_journal_mode(db, mode),
            file_sha256=file_sha256(db)[0],
            duration=round(time.monotonic() - started, 3),
        )
        return out

    # (2) keep a consistent copy of the live db, while (3) copying + checking the backup.
    tmp = os.path.join(os.path.dirname(db), f".{os.path.basename(db)}.restore-{os.getpid()}.tmp")
    for stale in os.listdir(os.path.dirname(db)):
        if stale.startswith(f".{os.path.basename(db)}.restore-") and stale.endswith(".tmp"):
            _unlink(os.path.join(os.path.dirname(db), stale))
    copy_job = _Background(_copy_live, db, folder) if live_exists else None
    try:
        try:
            out["copy"] = _prepare_temp(backup, tmp, checked, verify_copy == "full")
        finally:
            corrupted = copy_job.get() if copy_job else None
        out["corrupted_copy"] = corrupted["path"] if corrupted else None
        out["corrupted"] = corrupted
        _kill_point("restore:copied")

        # (4) nobody else may hold the live db; then drop its stale files and swap.
        put_back = _release_live(db) if live_exists else None
        _kill_point("restore:released")
        try:
            if live_exists:
                _refuse_if_held(db)
            removed = []
            for suffix in ("-wal", "-shm", "-journal"):
                if _unlink(db + suffix):
                    removed.append(suffix)
                    _kill_point("restore:removed" + suffix)
            os.replace(tmp, db)
            _kill_point("restore:replaced")
        except BaseException:
            if put_back and os.path.exists(db):
                _set_journal_mode(db, put_back)  # the live db is as it was
            raise
        _fsync_dir(os.path.dirname(db))
    except BaseException:
        _unlink(tmp)
        raise
    out["removed"] = [db + s for s in removed]

    # (5) the journal mode the app expects; a last cheap look at the result.
    conn = connect(db, "rw")
    try:
        out["journal_mode"] = str(
            conn.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0]
        ).lower()
        _kill_point("restore:journal_mode")
        out["quick_check"] = [r[0] for r in conn.execute("PRAGMA quick_check(10)")]
        out["foreign_key_violations"] = len(_fk_violations(conn))
    finally:
        conn.close()
    out.update(
        already_restored=False,
        file_sha256=file_sha256(db)[0],
        duration=round(time.monotonic() - started, 3),
    )
    return out


# ---------------------------------------------------------------------------- access


def _key_of(value: Any) -> Any:
    return ("b", bytes(value)) if isinstance(value, (bytes, bytearray)) else value


def _load_snapshot(path: str) -> Result:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise OpError(f"snapshot not found: {path}", "not_found") from None
    except ValueError as exc:
        raise OpError(f"snapshot {path} is not valid JSON: {exc}", "bad_snapshot") from None
    if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
        raise OpError(f"{path} is not an access snapshot ({SNAPSHOT_FORMAT})", "bad_snapshot")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2 for r in rows):
        raise OpError(f"snapshot {path}: 'rows' must be [[key, level], ...]", "bad_snapshot")
    return doc


def _access_names(conn: sqlite3.Connection, p: Params, doc: Result | None) -> tuple[str, ...]:
    """(table, key column, level column), checked against the schema and the snapshot."""
    defaults = {"table": "user_permissions", "key": "user_id", "column": "access_level"}
    names = []
    for field, default in defaults.items():
        given = p.get(field)
        if doc is not None:
            if given is not None and str(given).lower() != str(doc.get(field)).lower():
                raise OpError(
                    f"snapshot was taken for {field} {doc.get(field)!r}, not {given!r}",
                    "bad_snapshot",
                )
            given = doc.get(field)
        value = default if given is None else given
        if not isinstance(value, str) or not value:
            raise OpError(f"parameter {field!r} must be a non-empty name")
        names.append(value)
    table = resolve_tables(conn, [names[0]])[0]
    info = TableInfo(conn, table)
    return table, info.column(names[1], "key column"), info.column(names[2])


def _own_log(conn: sqlite3.Connection, p: Params) -> tuple[Any, Any]:
    """The change log (``change_log`` param, else change_history when it exists) and its newest
    order value, so rows a trigger writes for the bot's own change are marked as the rollback's."""
    spec = p.get("change_log")
    try:
        log = ChangeLog(conn, spec)
    except OpError:
        if spec:
            raise
        return None, None
    return log, log_max(conn, log)


def op_restrict_access(p: Params) -> Result:
    """Save every row's level to the snapshot file FIRST, then restrict non-exempt rows."""
    db = _path(p, "db")
    snapshot = _path(p, "snapshot")
    level = from_json(p.get("level", "read_only"), "level")
    exempt = p.get("exempt_roles", ["superuser", "emergency_admin"])
    if not isinstance(exempt, list) or not all(isinstance(r, str) for r in exempt):
        raise OpError("parameter 'exempt_roles' must be a list of strings")
    tag = p.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise OpError("parameter 'tag' must be a string (e.g. the incident id) or null")
    conn = connect(db, "rw")
    try:
        table, key, column = _access_names(conn, p, None)
        role = TableInfo(conn, table).column(_str(p, "role_column", "role"), "role column")
        t, k, c, r = qi(table), qi(key), qi(column), qi(role)
        conn.execute("BEGIN IMMEDIATE")  # nobody adds a row between snapshot and update
        _watch(conn)
        try:
            log, log_before = _own_log(conn, p)
            rows = conn.execute(f"SELECT {k}, {c} FROM {t} ORDER BY {k}").fetchall()
            keys = [_key_of(row[0]) for row in rows]
            if any(row[0] is None for row in rows) or len(set(keys)) != len(keys):
                raise OpError(f"{table}.{key} must be unique and not NULL to key a snapshot")
            kept = 0
            if os.path.exists(snapshot):  # a re-run: keep the originals already saved
                doc = _load_snapshot(snapshot)
                _access_names(conn, {"table": table, "key": key, "column": column}, doc)
                if doc.get("db") != db or doc.get("tag") != tag:
                    raise OpError(
                        f"snapshot {snapshot} belongs to another run (db {doc.get('db')!r}, "
                        f"tag {doc.get('tag')!r}); refusing to mix up original levels",
                        "bad_snapshot",
                    )
                known = {_key_of(from_json(row[0])) for row in doc["rows"]}
                kept = len(known)
                new = [row for row in rows if _key_of(row[0]) not in known]
                if new:
                    doc["rows"].extend([to_json(v) for v in row] for row in new)
                    doc["merged_at"] = _now_iso()
                    _write_json_atomic(snapshot, doc)
            else:
                new = rows
                doc = {
                    "format": SNAPSHOT_FORMAT,
                    "db": db,
                    "table": table,
                    "key": key,
                    "column": column,
                    "created_at": _now_iso(),
                    "tag": tag,
                    "rows": [[to_json(v) for v in row] for row in rows],
                }
                _write_json_atomic(snapshot, doc)
            _kill_point("restrict:snapshot_saved")
            marks = ", ".join("?" for _ in exempt)
            cur = conn.execute(
                f"UPDATE {t} SET {c} = ? WHERE {r} IS NULL OR {r} NOT IN ({marks})",
                [level, *exempt],
            )
            if log is not None:  # history a trigger wrote for the restriction is ours
                mark_own(conn, log, log_before, tag)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return {
        "restricted": cur.rowcount,
        "snapshot": snapshot,
        "saved": len(new),
        "already_saved": kept,
        "rows": len(rows),
        "exempt_roles": exempt,
    }


def op_restore_access(p: Params) -> Result:
    """Set every row's level back to exactly the value saved in the snapshot (``prefer_snapshot``
    when that file exists), or the level a strategy recorded for the row in the ledger."""
    db = _path(p, "db")
    snapshot = _path(p, "snapshot")
    preferred = _path(p, "prefer_snapshot", required=False)
    if preferred and os.path.exists(preferred):  # a full restore's snapshot of the restored levels
        snapshot = preferred
    doc = _load_snapshot(snapshot)
    conn = connect(db, "rw")
    try:
        table, key, column = _access_names(conn, p, doc)
        t, k, c = qi(table), qi(key), qi(column)
        restored, missing, changed = 0, [], 0
        conn.execute("BEGIN IMMEDIATE")
        _watch(conn)
        try:
            log, log_before = _own_log(conn, p)
            # Levels a strategy put back under the restriction (the ledger) win over the
            # snapshot: after the rollback, access levels are the chosen point's.
            overrides = access_overrides(conn, doc.get("tag"))
            rows = [[from_json(k, "key"), from_json(v, "level")] for k, v in doc["rows"]]
            seen = set()
            for i, (value, _level) in enumerate(rows):
                seen.add(_key_of(value))
                if _key_of(value) in overrides:
                    rows[i][1] = overrides[_key_of(value)]
            rows += [[k[1] if isinstance(k, tuple) else k, v] for k, v in overrides.items() if k not in seen]
            for value, level in rows:
                raw_key = to_json(value)
                cur = conn.execute(
                    f"UPDATE {t} SET {c} = ? WHERE {k} = ? AND {c} IS NOT ?", (level, value, level)
                )
                if cur.rowcount:
                    changed += cur.rowcount
                    restored += 1
                elif conn.execute(f"SELECT 1 FROM {t} WHERE {k} = ?", (value,)).fetchone():
                    restored += 1
                else:
                    missing.append(raw_key)
            total = conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            if log is not None:
                mark_own(conn, log, log_before, doc.get("tag"))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return {
        "restored": restored,
        "changed": changed,
        "missing": missing,
        "not_in_snapshot": total - restored,
        "snapshot": snapshot,
    }


# ---------------------------------------------------------------------------- diff, selective


def _attach(conn: sqlite3.Connection, path: str, alias: str = "other") -> None:
    if not os.path.isfile(path):
        raise OpError(f"database not found: {path}", "not_found")
    if os.path.exists(path + "-journal"):  # maybe hot: roll it back before reading
        connect(path, "ro").close()
    quiet = not _has_wal(path) and not os.path.exists(path + "-journal")
    conn.execute(f"ATTACH DATABASE ? AS {qi(alias)}", (_uri(path, "ro", quiet),))


def _key_columns(info: TableInfo, spec: Any) -> list[str]:
    if spec is None:
        return list(info.key)
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise OpError(f"key_columns[{info.name!r}] must be a column name or a list of them")
    return ["rowid" if n.lower() == "rowid" else info.column(n, "key column") for n in names]


def _sorted_keys(keys: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(keys, key=lambda k: [(type(v).__name__, v) for v in k])


def _diff_keys(
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


class _Pair:
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
        """Keys added in main, removed from main, and changed (see ``_diff_keys``)."""
        return _diff_keys(conn, self.info.name, self.key, self.common)


def op_diff(p: Params) -> Result:
    """Rows of db vs other by primary key: per table {added, removed, changed, keys_sample}."""
    db, other = _path(p, "db"), _path(p, "other")
    sample = _int(p, "sample", 20, 0)
    key_spec = p.get("key_columns") or {}
    if not isinstance(key_spec, dict):
        raise OpError("parameter 'key_columns' must be an object or null")
    conn = connect(db, "ro")
    try:
        _attach(conn, other)
        conn.execute("BEGIN")
        requested = _str_list(p, "tables")
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
            pair = _Pair(conn, name, key_spec.get(name))
            added, removed, changed = pair.diff(conn)
            keys = _sorted_keys(added | removed | changed)[:sample]
            tables[name] = {
                "added": len(added),
                "removed": len(removed),
                "changed": len(changed),
                "keys_sample": [[to_json(v) for v in k] for k in keys],
                # Per kind, so a data-loss assessment can tell removed rows from new ones.
                "added_keys": [[to_json(v) for v in k] for k in _sorted_keys(added)[:sample]],
                "removed_keys": [[to_json(v) for v in k] for k in _sorted_keys(removed)[:sample]],
                "changed_keys": [[to_json(v) for v in k] for k in _sorted_keys(changed)[:sample]],
            }
            if pair.missing:
                tables[name]["columns_only_in_db"] = pair.missing
        conn.execute("COMMIT")
    finally:
        conn.close()
    identical = all(
        "only_in" not in d and not (d["added"] or d["removed"] or d["changed"])
        for d in tables.values()
    )
    return {"tables": tables, "identical": identical}


def _fk_guard(conn: sqlite3.Connection, before: list[dict[str, Any]], allow: bool) -> int:
    seen = {tuple(v.values()) for v in before}
    new = [v for v in _fk_violations(conn) if tuple(v.values()) not in seen]
    if new and not allow:
        raise OpError(
            f"the change would add {len(new)} foreign key violation(s); rolled back",
            "fk_violation",
            new[:20],
        )
    return len(new)


def op_selective_restore(p: Params) -> Result:
    """Strategy A: restore rows from a backup: those a boundary's changes touched (with
    ``boundary``; see ``actions/sqlite_agent_strategies.py``), or chosen keys, or every
    differing row of ``tables``."""
    if p.get("boundary") is not None:
        return selective_by_log(p)
    db, backup = _path(p, "db"), _path(p, "backup")
    requested = _str_list(p, "tables")
    if not requested:
        raise OpError("parameter 'tables' must name at least one table")
    keys_by_table = p.get("keys")
    key_spec = p.get("key_columns") or {}
    if keys_by_table is not None and not isinstance(keys_by_table, dict):
        raise OpError("parameter 'keys' must be an object {table: [key, ...]} or null")
    if not isinstance(key_spec, dict):
        raise OpError("parameter 'key_columns' must be an object or null")
    allow_fk = _bool(p, "allow_fk_violations")
    conn = connect(db, "rw")
    try:
        _attach(conn, backup)
        tables = resolve_tables(conn, requested)
        in_backup = {t.lower() for t in user_tables(conn, "other")}
        for table in tables:
            if table.lower() not in in_backup:
                raise OpError(f"table {table!r} is not in the backup {backup}", "bad_table")
        conn.execute("BEGIN IMMEDIATE")
        _watch(conn)
        try:
            fk_before = _fk_violations(conn)
            report: Result = {}
            for table in tables:
                report[table] = _restore_rows(
                    conn, table, (keys_by_table or {}).get(table), key_spec.get(table),
                    explicit=keys_by_table is not None,
                )
            new_fk = _fk_guard(conn, fk_before, allow_fk)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return {"tables": report, "new_fk_violations": new_fk}


def _restore_rows(
    conn: sqlite3.Connection, table: str, keys: Any, key_spec: Any, *, explicit: bool
) -> Result:
    pair = _Pair(conn, table, key_spec)
    info, key = pair.info, pair.key
    if explicit:
        if not isinstance(keys, list):
            raise OpError(f"keys[{table!r}] must be a list of key values")
        wanted = []
        for i, k in enumerate(keys):
            values = k if isinstance(k, list) else [k]
            if len(values) != len(key):
                raise OpError(f"keys[{table!r}][{i}] must have {len(key)} value(s): {key}")
            wanted.append(tuple(from_json(v, f"keys[{table!r}][{i}]") for v in values))
    else:
        added, removed, changed = pair.diff(conn)
        wanted = _sorted_keys(added | removed | changed)
    kcols = [f"k{i}" for i in range(len(key))]
    conn.execute("DROP TABLE IF EXISTS temp._rb_keys")
    conn.execute(f"CREATE TEMP TABLE _rb_keys ({', '.join(kcols)})")
    conn.executemany(
        f"INSERT INTO temp._rb_keys VALUES ({', '.join('?' for _ in kcols)})", wanted
    )
    kx = ", ".join(qi(k) for k in key)
    match = f"({kx}) IN (SELECT {', '.join(kcols)} FROM temp._rb_keys)"
    t = qi(table)
    cols = [c for c in info.writable if c in pair.common]
    if "rowid" in key and not info.rowid_alias:
        cols = ["rowid", *cols]
    names = ", ".join(qi(c) for c in cols)
    deleted = conn.execute(f"DELETE FROM main.{t} WHERE {match}").rowcount
    inserted = conn.execute(
        f"INSERT INTO main.{t} ({names}) SELECT {names} FROM other.{t} WHERE {match}"
    ).rowcount
    conn.execute("DROP TABLE temp._rb_keys")
    out: Result = {"restored": len(wanted), "deleted": deleted, "inserted": inserted}
    if pair.missing:
        out["columns_not_in_backup"] = pair.missing
    return out


# ---------------------------------------------------------------------------- governance


def op_governance_insert(p: Params) -> Result:
    """Insert one governance_logs row with bound values; objects are stored as JSON text."""
    db = _path(p, "db")
    record = p.get("record")
    if not isinstance(record, dict) or not record:
        raise OpError("parameter 'record' must be a non-empty object")
    if_absent = _bool(p, "if_absent")
    conn = connect(db, "rw")
    try:
        table = resolve_tables(conn, [_str(p, "table", "governance_logs")])[0]
        info = TableInfo(conn, table)
        cols, values = [], []
        for name, value in record.items():
            col = info.column(name)
            if col not in info.writable:
                raise OpError(f"column {col!r} is generated and cannot be written", "bad_column")
            if isinstance(value, list) or (isinstance(value, dict) and set(value) != {BLOB_KEY}):
                value = json.dumps(value, ensure_ascii=False, default=_json_default)
            elif isinstance(value, bool):
                value = int(value)
            cols.append(col)
            values.append(from_json(value, f"record[{name!r}]"))
        t = qi(table)
        conn.execute("BEGIN IMMEDIATE")
        _watch(conn)
        try:
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
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return {"id": new_id, "inserted": inserted, "table": table}


# ---------------------------------------------------------------------------- change log
# The change log, strategies A/B over it and the read-only reports live in their own modules;
# ``actions.sqlite.agent_source`` pastes their bodies in place of these imports. Import them
# through this module (they import it back), e.g. ``from actions.sqlite_agent import LEDGER``.

from actions.sqlite_agent_changes import LEDGER, ChangeLog  # noqa: E402, F401 rb:inline
from actions.sqlite_agent_loss import op_data_loss  # noqa: E402 rb:inline
from actions.sqlite_agent_report import op_change_points, op_strategy_support  # noqa: E402 rb:inline
from actions.sqlite_agent_rows import access_overrides, log_max, mark_own  # noqa: E402 rb:inline
from actions.sqlite_agent_strategies import op_transaction_rollback, selective_by_log  # noqa: E402 rb:inline

# ---------------------------------------------------------------------------- main

OPS: dict[str, tuple[Callable[[Params], Result], frozenset[str]]] = {
    "integrity_check": (op_integrity_check, frozenset({"db", "max_errors", "immutable"})),
    "quick_check": (op_quick_check, frozenset({"db", "max_errors", "immutable"})),
    "foreign_key_check": (op_foreign_key_check, frozenset({"db", "max_rows"})),
    "record_counts": (op_record_counts, frozenset({"db", "tables"})),
    "query": (op_query, frozenset({"db", "sql", "params", "max_rows", "write"})),
    "content_hash": (op_content_hash, frozenset({"db", "tables", "immutable"})),
    "verify": (op_verify, frozenset({"db", "immutable", "check", "content_hash"})),
    "backup": (op_backup, frozenset({"db", "dest", "verify", "content_hash", "if_exists"})),
    "list_backups": (op_list_backups, frozenset({"dir", "pattern", "limit"})),
    "restore": (
        op_restore,
        frozenset(
            {"db", "backup", "corrupted_dir", "expect_content_hash", "journal_mode", "verify_copy"}
        ),
    ),
    "restrict_access": (
        op_restrict_access,
        frozenset(
            {
                "db", "table", "key", "column", "level", "exempt_roles", "role_column",
                "snapshot", "tag", "change_log",
            }
        ),
    ),
    "restore_access": (
        op_restore_access,
        frozenset({"db", "table", "key", "column", "snapshot", "prefer_snapshot", "change_log"}),
    ),
    "selective_restore": (
        op_selective_restore,
        frozenset(
            {
                "db", "backup", "tables", "keys", "key_columns", "allow_fk_violations",
                "change_log", "boundary", "take", "access", "tag",
            }
        ),
    ),
    "diff": (op_diff, frozenset({"db", "other", "tables", "key_columns", "sample"})),
    "transaction_rollback": (
        op_transaction_rollback,
        frozenset(
            {
                "db", "since_id", "since_time", "history_table", "deployment",
                "ignore_drift", "allow_fk_violations", "change_log", "boundary", "key_columns",
                "take", "on_conflict", "access", "tag",
            }
        ),
    ),
    "strategy_support": (
        op_strategy_support,
        frozenset({"db", "change_log", "boundary", "key_columns"}),
    ),
    "change_points": (
        op_change_points,
        frozenset(
            {
                "db", "change_log", "boundary", "key_columns", "limit", "gap_minutes",
                "suggest_marker", "allow_unknown",
            }
        ),
    ),
    "data_loss": (
        op_data_loss,
        frozenset({"db", "before", "backup", "change_log", "boundary", "key_columns", "access"}),
    ),
    "governance_insert": (op_governance_insert, frozenset({"db", "record", "table", "if_absent"})),
}


def run(op: str, params: Any) -> Result:
    """Run one operation on already-decoded params (raises OpError / sqlite3.Error)."""
    if op not in OPS:
        raise OpError(f"unknown operation {op!r} (known: {', '.join(sorted(OPS))})", "bad_op")
    if not isinstance(params, dict):
        raise OpError("params must be a JSON object")
    fn, allowed = OPS[op]
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise OpError(f"unknown parameter(s) for {op}: {', '.join(unknown)}")
    return fn(params)


def main(argv: list[str]) -> int:
    """Entry point: ``<op> <json|->``; prints one JSON line; exit 0 ok, 2 refused/failed."""
    op = argv[0] if argv else ""
    started = time.monotonic()
    try:
        if len(argv) != 2:
            raise OpError("usage: python3 -c <agent> OP PARAMS_JSON|-", "bad_op")
        raw = sys.stdin.read() if argv[1] == "-" else argv[1]
        try:
            params = json.loads(raw)
        except ValueError as exc:
            raise OpError(f"params are not valid JSON: {exc}") from None
        doc: Result = {"ok": True, "op": op, "result": run(op, params)}
        code = 0
    except OpError as exc:
        doc = {"ok": False, "op": op, "error": str(exc), "kind": exc.kind, "details": exc.details}
        code = 2
    except sqlite3.Error as exc:
        doc = {"ok": False, "op": op, "error": f"{type(exc).__name__}: {exc}", "kind": "sqlite"}
        code = 2
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        doc = {"ok": False, "op": op, "error": f"{type(exc).__name__}: {exc}", "kind": "internal"}
        code = 2
    doc["agent_version"] = AGENT_VERSION
    doc["seconds"] = round(time.monotonic() - started, 3)
    if _HOOK is not None:
        _HOOK.note(f"passed {_HOOK.count} {op}")
    sys.stdout.write(json.dumps(doc, ensure_ascii=True, default=_json_default) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
