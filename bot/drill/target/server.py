"""The drill app's HTTP side: its few endpoints over the database, maintenance mode, the import.

Stdlib only: it runs on the sandbox target beside ``app.py``, with nothing but ``python3`` >= 3.8.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import sqlite3
import sys
import time
import urllib.parse
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from bot.drill.target import data
else:  # a script in the target's bin/, beside data.py
    import data

#: Roles allowed to import and to work through maintenance mode (the plan restricts the
#: database to these during a rollback).
EXEMPT_ROLES = frozenset({"superuser", "emergency_admin"})
MAX_BODY_BYTES = 64 * 1024 * 1024
UTC = timezone.utc  # noqa: UP017 - datetime.UTC is 3.11+, the target may be older


class AppState:
    """What the app read at start."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = data.read_env_file(workdir / data.ENV_FILE)
        self.version = self.env.get("APP_VERSION", "unknown")
        self.maintenance = self.env.get("MAINTENANCE_MODE", "").strip().lower() == "true"
        self.maintenance_message = self.env.get("MAINTENANCE_MESSAGE", "System maintenance in progress.")
        db_path = Path(self.env.get("DATABASE_PATH", data.DEFAULT_DATABASE_PATH))
        self.db = data.Database(db_path if db_path.is_absolute() else workdir / db_path)
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
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

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
            except data.ImportRejected as exc:
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
        self._send_json(200, data.export_document(tables, exported_at=datetime.now(UTC), exported_by=user,
                                             app_version=self.state.version))

    def _drain_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise data.ImportRejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
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
                raise data.ImportRejected(HTTPStatus.BAD_REQUEST, "multipart field 'file' missing")
            raw = payload
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise data.ImportRejected(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from exc
        if not isinstance(document, dict) or not isinstance(document.get("tables"), dict):
            raise data.ImportRejected(HTTPStatus.BAD_REQUEST, "body needs a 'tables' object")
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
                actual = data.canonical_tables_hash(tables)
                if expected != actual:
                    raise data.ImportRejected(HTTPStatus.BAD_REQUEST, "hash mismatch", expected=expected, actual=actual)
            imported = self.state.db.replace_tables(tables)
        except data.ImportRejected as exc:
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
                "sha256": data.canonical_tables_hash(tables),
                "imported_by": user,
            },
        )
