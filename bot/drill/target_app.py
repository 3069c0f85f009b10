#!/usr/bin/env python3
"""The drill's "production app": a small stdlib-only HTTP server over the SQLite database.

It stands in for orbis-forge-admin on the sandbox target, so it must run with nothing but
``python3`` >= 3.8 (no project imports, no newer syntax at run time)::

    python3 target_app.py --workdir DIR --port N [--pid-file FILE]
    python3 target_app.py --smoke-test http://127.0.0.1:N [--user emergency_admin]
    python3 target_app.py --wait-http http://127.0.0.1:N/health [--timeout 30]

Like a real app it reads ``.env.production`` once at start: a restart is what applies
``MAINTENANCE_MODE``, ``MAINTENANCE_MESSAGE`` and ``APP_VERSION`` changes.

Endpoints (bound to 127.0.0.1 only):

- ``GET /health``: 200 ``{"status": "ok", "version", "db": "ok", "maintenance",
  "records": {table: n}}``; 503 ``{"status": "maintenance", "message"}`` in maintenance
  mode; 500 ``{"status": "error", ...}`` when the database is missing or fails
  ``PRAGMA quick_check``.
- ``GET /api/json-operations/export`` (header ``X-User-ID`` required, else 401): every
  table's rows plus the sha256 of their canonical JSON.
- ``POST /api/json-operations/import`` (``X-User-ID`` of a superuser or emergency admin):
  a JSON body of the export's shape, or multipart ``file=@export.json`` with
  ``skipHashCheck=false`` as in the plan. Replaces the given tables in one transaction.
- ``GET /api/tables`` and ``GET /api/tables/NAME?limit=N`` (``X-User-ID``): the data views
  a smoke test loads.

In maintenance mode every request answers 503, except those whose ``X-User-ID`` is a
superuser or emergency admin in ``user_permissions`` (the people the plan keeps working).

The app only reads the database, except for an import.
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import hashlib
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ENV_FILE = ".env.production"
DEFAULT_DATABASE_PATH = "databases/production.db"
EXPORT_FORMAT = "orbis-forge-export/1"
#: Roles allowed to import and to work through maintenance mode (the plan restricts the
#: database to these during a rollback).
EXEMPT_ROLES = frozenset({"superuser", "emergency_admin"})
MAX_BODY_BYTES = 64 * 1024 * 1024
BLOB_KEY = "$blob_b64"  # as actions.sqlite_agent writes blobs in JSON
UTC = timezone.utc  # noqa: UP017 - datetime.UTC is 3.11+, the target may be older


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


class AppState:
    """What the app read at start."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = read_env_file(workdir / ENV_FILE)
        self.version = self.env.get("APP_VERSION", "unknown")
        self.maintenance = self.env.get("MAINTENANCE_MODE", "").strip().lower() == "true"
        self.maintenance_message = self.env.get("MAINTENANCE_MESSAGE", "System maintenance in progress.")
        db_path = Path(self.env.get("DATABASE_PATH", DEFAULT_DATABASE_PATH))
        self.db = Database(db_path if db_path.is_absolute() else workdir / db_path)
        self.started_at = time.time()


class Handler(BaseHTTPRequestHandler):
    """Routes the app's few endpoints."""

    server_version = "orbis-forge-admin"
    protocol_version = "HTTP/1.1"
    state: AppState  # set on the subclass built in main()

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stderr (the process manager's error log)."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sys.stderr.write(f"{stamp} {self.address_string()} {format % args}\n")

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _user_id(self) -> str | None:
        value = (self.headers.get("X-User-ID") or "").strip()
        return value or None

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _exempt(self, user: str | None) -> bool:
        """True for a superuser or emergency admin (they work through maintenance mode)."""
        return user is not None and self.state.db.role_of(user) in EXEMPT_ROLES

    def do_GET(self) -> None:
        """Serve /health, the export and the table views."""
        path = self._path()
        user = self._user_id()
        if path == "/health":
            self._health(user)
            return
        if path.startswith("/api/") and user is None:
            self._send_json(401, {"error": "X-User-ID header required"})
            return
        if self.state.maintenance and not self._exempt(user):
            self._maintenance()
        elif path == "/api/json-operations/export":
            self._export(user or "")
        elif path == "/api/tables":
            self._tables()
        elif path.startswith("/api/tables/"):
            self._table_rows(path[len("/api/tables/") :])
        elif path == "/":
            self._send_json(200, {"app": "orbis-forge-admin", "version": self.state.version})
        else:
            self._send_json(404, {"error": "not found", "path": path})

    def do_HEAD(self) -> None:
        """Same as GET without a body."""
        self.do_GET()

    def do_POST(self) -> None:
        """Serve the import."""
        path = self._path()
        if path == "/api/json-operations/import":
            self._import()
        else:
            try:
                self._drain_body()
            except ImportRejected as exc:
                self._send_json(int(exc.status), {"error": str(exc)})
                return
            self._send_json(404, {"error": "not found", "path": path})

    def _maintenance(self) -> None:
        self._send_json(503, {"status": "maintenance", "message": self.state.maintenance_message})

    def _health(self, user: str | None) -> None:
        if self.state.maintenance and not self._exempt(user):
            self._maintenance()
            return
        try:
            check, counts = self.state.db.health()
        except sqlite3.Error as exc:
            self._send_json(500, {"status": "error", "version": self.state.version, "db": str(exc)})
            return
        if check != "ok":
            self._send_json(500, {"status": "error", "version": self.state.version, "db": check})
            return
        self._send_json(
            200,
            {
                "status": "ok",
                "version": self.state.version,
                "db": "ok",
                "maintenance": self.state.maintenance,
                "records": counts,
                "uptime_seconds": round(time.time() - self.state.started_at, 3),
                "pid": os.getpid(),
            },
        )

    def _tables(self) -> None:
        try:
            _check, counts = self.state.db.health()
        except sqlite3.Error as exc:
            self._send_json(500, {"error": str(exc)})
            return
        self._send_json(200, {"tables": counts})

    def _table_rows(self, name: str) -> None:
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        params = urllib.parse.parse_qs(query)
        try:
            limit = max(1, min(500, int(params.get("limit", ["50"])[0])))
        except ValueError:
            self._send_json(400, {"error": "limit must be an integer"})
            return
        try:
            rows = self.state.db.rows(urllib.parse.unquote(name), limit)
        except KeyError:
            self._send_json(404, {"error": "no such table", "table": name})
            return
        except sqlite3.Error as exc:
            self._send_json(500, {"error": str(exc)})
            return
        self._send_json(200, {"table": name, "rows": rows, "limit": limit})

    def _export(self, user: str) -> None:
        try:
            tables = self.state.db.export()
        except sqlite3.Error as exc:
            self._send_json(500, {"error": f"export failed: {exc}"})
            return
        self._send_json(
            200,
            {
                "format": EXPORT_FORMAT,
                "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "exported_by": user,
                "app_version": self.state.version,
                "counts": {t: len(rows) for t, rows in tables.items()},
                "tables": tables,
                "sha256": canonical_tables_hash(tables),
            },
        )

    def _drain_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ImportRejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _parse_import_body(self, raw: bytes) -> tuple[dict[str, Any], bool]:
        """Return (export document, skip_hash_check) from a JSON or multipart body."""
        ctype = self.headers.get("Content-Type", "")
        skip = False
        if ctype.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + raw
            )
            payload: bytes | None = None
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                content = part.get_payload(decode=True)
                if not isinstance(content, bytes):
                    continue
                if name == "file":
                    payload = content
                elif name == "skipHashCheck":
                    skip = content.decode("utf-8").strip().lower() == "true"
            if payload is None:
                raise ImportRejected(HTTPStatus.BAD_REQUEST, "multipart field 'file' missing")
            raw = payload
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ImportRejected(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from exc
        if not isinstance(document, dict) or not isinstance(document.get("tables"), dict):
            raise ImportRejected(HTTPStatus.BAD_REQUEST, "body needs a 'tables' object")
        if "skipHashCheck" in document:
            skip = document["skipHashCheck"] is True or str(document["skipHashCheck"]) == "true"
        return document, skip

    def _import(self) -> None:
        try:
            raw = self._drain_body()
            user = self._user_id()
            if user is None:
                self._send_json(401, {"error": "X-User-ID header required"})
                return
            role = self.state.db.role_of(user)
            if role not in EXEMPT_ROLES:
                self._send_json(403, {"error": "import needs a superuser or emergency_admin", "role": role})
                return
            document, skip = self._parse_import_body(raw)
            tables: dict[str, list[dict[str, Any]]] = document["tables"]
            if not skip:
                expected = document.get("sha256")
                actual = canonical_tables_hash(tables)
                if expected != actual:
                    raise ImportRejected(HTTPStatus.BAD_REQUEST, "hash mismatch", expected=expected, actual=actual)
            imported = self.state.db.replace_tables(tables)
        except ImportRejected as exc:
            self._send_json(int(exc.status), {"error": str(exc), **exc.extra})
            return
        except sqlite3.Error as exc:
            self._send_json(500, {"error": f"import failed: {exc}"})
            return
        self._send_json(
            200,
            {
                "imported": imported,
                "hash_checked": not skip,
                "sha256": canonical_tables_hash(tables),
                "imported_by": user,
            },
        )


def _get_json(url: str, user: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"X-User-ID": user} if user else {})
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return int(resp.status), json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            return int(exc.code), json.loads(body)
        except json.JSONDecodeError:
            return int(exc.code), body


def smoke_test(base_url: str, user: str) -> int:
    """Check the app's core features over HTTP; print one line per check; 0 when all pass."""
    base = base_url.rstrip("/")
    results: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    try:
        status, body = _get_json(base + "/health", user)
        ok = status == 200 and isinstance(body, dict) and body.get("status") == "ok"
        version = body.get("version") if isinstance(body, dict) else None
        check("health", ok, f"{status} version={version}")
        status, _body = _get_json(base + "/api/json-operations/export", None)
        check("authorization enforced", status == 401, f"export without X-User-ID -> {status}")
        status, body = _get_json(base + "/api/tables", user)
        counts = body.get("tables", {}) if isinstance(body, dict) else {}
        check("data tables load", status == 200 and bool(counts), f"{status} {counts}")
        for table in sorted(counts)[:6]:
            status, body = _get_json(f"{base}/api/tables/{table}?limit=5", user)
            rows = body.get("rows") if isinstance(body, dict) else None
            check(f"table {table}", status == 200 and isinstance(rows, list), f"{status}")
        status, body = _get_json(base + "/api/json-operations/export", user)
        ok = status == 200 and isinstance(body, dict)
        same = ok and body.get("sha256") == canonical_tables_hash(body.get("tables", {}))
        check("export hash verifies", bool(same), f"{status}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        check("reachable", False, f"{type(exc).__name__}: {exc}")
    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


def wait_http(url: str, timeout: float) -> int:
    """Wait until ``url`` answers with any HTTP status (the app listens); 0, or 1 on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() >= deadline:
                print(f"{url} not answering after {timeout} s: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.1)
            continue
        print(f"{url} answers {status}")
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: --workdir and --port to serve; or --smoke-test URL to check an app."""
    parser = argparse.ArgumentParser(description="orbis-forge-admin (drill target app)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=None, help="default: PORT from the env file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pid-file", type=Path, default=None, help="written once listening")
    parser.add_argument("--smoke-test", metavar="BASE_URL", default=None, help="check a running app instead of serving")
    parser.add_argument("--user", default="emergency_admin", help="X-User-ID for --smoke-test")
    parser.add_argument("--wait-http", metavar="URL", default=None, help="wait until URL answers, then exit")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for --wait-http")
    args = parser.parse_args(argv)
    if args.smoke_test is None and args.wait_http is None and args.workdir is None:
        parser.error("--workdir is required to serve")
    return args


def main(argv: list[str] | None = None) -> int:
    """Read the env file, listen, serve until SIGTERM/SIGINT."""
    args = parse_args(argv)
    if args.smoke_test is not None:
        return smoke_test(args.smoke_test, args.user)
    if args.wait_http is not None:
        return wait_http(args.wait_http, args.timeout)
    workdir: Path = args.workdir.resolve()
    os.chdir(workdir)
    state = AppState(workdir)
    port = args.port if args.port is not None else int(state.env.get("PORT", "3000"))
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((args.host, port), handler)
    server.daemon_threads = True
    state.db.hold_open()

    def _shutdown(signum: int, _frame: object) -> None:
        # shutdown() blocks until serve_forever returns: call it off the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    if args.pid_file is not None:
        tmp = args.pid_file.with_name(args.pid_file.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n", encoding="utf-8")
        tmp.replace(args.pid_file)
    sys.stderr.write(
        f"orbis-forge-admin {state.version} listening on {args.host}:{port} maintenance={state.maintenance}\n"
    )
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        state.db.release()
        if args.pid_file is not None:
            try:
                if args.pid_file.read_text(encoding="utf-8").strip() == str(os.getpid()):
                    args.pid_file.unlink()
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
