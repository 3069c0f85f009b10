"""The drill app's data side: its env file, and the production database it serves, exports and imports.

Stdlib only: it runs on the sandbox target beside ``app.py``, with nothing but ``python3`` >= 3.8.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import urllib.parse
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

ENV_FILE = ".env.production"
DEFAULT_DATABASE_PATH = "databases/production.db"
EXPORT_FORMAT = "orbis-forge-export/1"
BLOB_KEY = "$blob_b64"  # as actions.sqlite_agent writes blobs in JSON


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv file: ``KEY=value`` lines, ``#`` comments, optional quotes; last wins."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (only ever called with names read from the schema)."""
    return '"' + name.replace('"', '""') + '"'


def canonical_tables_hash(tables: dict[str, list[dict[str, Any]]]) -> str:
    """sha256 of the canonical JSON of ``tables`` (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(tables, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def export_document(tables: dict[str, list[dict[str, Any]]], *, exported_at: datetime, exported_by: str,
                    app_version: str) -> dict[str, Any]:
    """The export's document: its format, who exported what version when, row counts, the tables, their hash."""
    return {
        "format": EXPORT_FORMAT,
        "exported_at": exported_at.isoformat(timespec="seconds"),
        "exported_by": exported_by,
        "app_version": app_version,
        "counts": {name: len(rows) for name, rows in tables.items()},
        "tables": tables,
        "sha256": canonical_tables_hash(tables),
    }


def _to_json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {BLOB_KEY: base64.b64encode(value).decode("ascii")}
    return value


def _from_json_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {BLOB_KEY}:
        return base64.b64decode(value[BLOB_KEY])
    if isinstance(value, (dict, list)):
        # A JSON column given as a structure: store its text, as the app writes it.
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


class ImportRejected(Exception):
    """The import body is not acceptable; carries the HTTP status to answer."""

    def __init__(self, status: HTTPStatus, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


class Database:
    """Access to the production database, one short-lived connection per request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keeper: sqlite3.Connection | None = None

    def connect(self) -> sqlite3.Connection:
        """Open the existing database read-write; never create an empty one."""
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def hold_open(self) -> None:
        """Keep one idle connection open for the app's lifetime, like a connection pool."""
        try:
            self._keeper = self.connect()
            # A read opens the -wal and -shm files too, as a pooled connection holds them.
            self._keeper.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            self._keeper = None

    def release(self) -> None:
        """Close the idle connection."""
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    @staticmethod
    def table_names(conn: sqlite3.Connection) -> list[str]:
        """User tables, in name order."""
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        return [str(r[0]) for r in rows]

    @staticmethod
    def columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, int]]:
        """(column name, primary-key position) for ``table``."""
        rows = conn.execute(f"PRAGMA table_info({quote_ident(table)})").fetchall()
        return [(str(r[1]), int(r[5])) for r in rows]

    def health(self) -> tuple[str, dict[str, int]]:
        """Return (quick_check result, record count per table)."""
        conn = self.connect()
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()
            check = str(result[0]) if result else "no result"
            counts = {
                t: int(conn.execute(f"SELECT COUNT(*) FROM {quote_ident(t)}").fetchone()[0])
                for t in self.table_names(conn)
            }
            return check, counts
        finally:
            conn.close()

    def _ordered_rows(self, conn: sqlite3.Connection, table: str) -> list[dict[str, Any]]:
        cols = self.columns(conn, table)
        pk = [name for name, pos in sorted(cols, key=lambda c: c[1]) if pos > 0]
        order = ", ".join(quote_ident(c) for c in pk) if pk else "rowid"
        names = [name for name, _ in cols]
        select = ", ".join(quote_ident(c) for c in names)
        cursor = conn.execute(f"SELECT {select} FROM {quote_ident(table)} ORDER BY {order}")
        return [
            {name: _to_json_value(value) for name, value in zip(names, row)}  # noqa: B905
            for row in cursor
        ]

    def export(self) -> dict[str, list[dict[str, Any]]]:
        """Every table's rows, ordered by primary key, read in one snapshot."""
        conn = self.connect()
        try:
            conn.execute("BEGIN")
            tables = {t: self._ordered_rows(conn, t) for t in self.table_names(conn)}
            conn.execute("COMMIT")
            return tables
        finally:
            conn.close()

    def rows(self, table: str, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` rows of ``table`` by primary key; KeyError for no such table."""
        conn = self.connect()
        try:
            if table not in self.table_names(conn):
                raise KeyError(table)
            return self._ordered_rows(conn, table)[:limit]
        finally:
            conn.close()

    def role_of(self, user_id: str) -> str | None:
        """The user's role in ``user_permissions``, or None when unknown."""
        conn = self.connect()
        try:
            if "user_permissions" not in self.table_names(conn):
                return None
            row = conn.execute("SELECT role FROM user_permissions WHERE user_id = ?", (user_id,)).fetchone()
            return None if row is None else str(row[0])
        finally:
            conn.close()

    def replace_tables(self, tables: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
        """Replace the rows of each given table in one transaction; all or nothing."""
        conn = self.connect()
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            known = set(self.table_names(conn))
            unknown = sorted(set(tables) - known)
            if unknown:
                raise ImportRejected(HTTPStatus.BAD_REQUEST, "unknown tables", tables=unknown)
            columns = {t: {name for name, _ in self.columns(conn, t)} for t in tables}
            for table, rows in tables.items():
                if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                    raise ImportRejected(HTTPStatus.BAD_REQUEST, "rows must be a list of objects", table=table)
                bad = sorted({c for r in rows for c in r} - columns[table])
                if bad:
                    raise ImportRejected(HTTPStatus.BAD_REQUEST, "unknown columns", table=table, columns=bad)
            imported: dict[str, int] = {}
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Parents and children are replaced together; check references at commit.
                conn.execute("PRAGMA defer_foreign_keys = ON")
                for table in tables:
                    conn.execute(f"DELETE FROM {quote_ident(table)}")
                for table, rows in tables.items():
                    for row in rows:
                        names = list(row)
                        sql = (
                            f"INSERT INTO {quote_ident(table)} "
                            f"({', '.join(quote_ident(n) for n in names)}) "
                            f"VALUES ({', '.join('?' for _ in names)})"
                        )
                        conn.execute(sql, [_from_json_value(row[n]) for n in names])
                    imported[table] = len(rows)
                violations = conn.execute("PRAGMA foreign_key_check").fetchall()
                if violations:
                    raise ImportRejected(
                        HTTPStatus.CONFLICT,
                        "foreign key violations",
                        violations=[list(v) for v in violations[:20]],
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return imported
        except sqlite3.Error as exc:
            raise ImportRejected(HTTPStatus.CONFLICT, f"import failed: {exc}") from exc
        finally:
            conn.close()
