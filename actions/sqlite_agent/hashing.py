"""The content hash ("rbh1") and verify: integrity check, file sha256 and content hash at once.

Content hash: per table, sha256 over marshal(version 2) of ("rbh1-table", name, column
names), then of every row tuple in a canonical order: ORDER BY the primary key (rows with a
NULL in a non-rowid primary key, and tables without one, are ordered by every column with
BINARY collation, then by every column's typeof). marshal v2 is a typed, exact,
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

import hashlib
import marshal
import sqlite3
import time
from collections.abc import Sequence

from .base import (
    HASH_FORMAT,
    OpError,
    Params,
    Result,
    bool_param,
    existing_file,
    names_param,
    path_param,
    qi,
    str_param,
)
from .checks import check_messages, table_counts
from .db import connect
from .files import Background, file_sha256
from .schema import TableInfo, resolve_tables
from .tx import read_transaction


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
        with read_transaction(conn):
            names = resolve_tables(conn, tables)
            hashes: dict[str, str] = {}
            counts: dict[str, int] = {}
            for name in names:
                hashes[name], counts[name] = table_hash(conn, name)
    finally:
        conn.close()
    return {"tables": hashes, "counts": counts, "total": _total(hashes), "format": HASH_FORMAT}


def op_content_hash(p: Params) -> Result:
    """Logical content hash: {tables: {name: sha256hex}, total, counts, format}."""
    return content_hash(path_param(p, "db"), names_param(p, "tables"), immutable=bool_param(p, "immutable"))


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
    lane = Background(_check_then_sha256, path, check, immutable, hashed)
    sha_main = None if hashed else file_sha256(path)
    out: Result = {"content_hash": None, "tables": {}, "counts": {}}
    try:
        if hashed:
            done = content_hash(path, immutable=immutable)
            out.update(content_hash=done["total"], tables=done["tables"], counts=done["counts"])
        else:
            out["counts"] = table_counts(path, None, immutable)
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
    messages = check_messages(path, check, 100, immutable)
    return messages, file_sha256(path) if with_sha else None


def op_verify(p: Params) -> Result:
    """integrity_check + content hash + file sha256 + counts of one database file."""
    db = path_param(p, "db")
    check = str_param(p, "check", "integrity_check")
    if check not in ("integrity_check", "quick_check"):
        raise OpError("parameter 'check' must be 'integrity_check' or 'quick_check'")
    return verify_file(
        existing_file(db),
        immutable=bool_param(p, "immutable"),
        check=check,
        hashed=bool_param(p, "content_hash", True),
    )
