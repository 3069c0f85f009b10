#!/usr/bin/env python3
"""The drill's "production app": a small stdlib-only HTTP server over the SQLite database.

It stands in for orbis-forge-admin on the sandbox target, so it must run with nothing but
``python3`` >= 3.8 (no imports but its neighbours ``server`` and ``data``, no newer syntax at
run time)::

    python3 app.py --workdir DIR --port N [--pid-file FILE]
    python3 app.py --smoke-test http://127.0.0.1:N [--user emergency_admin]
    python3 app.py --wait-http http://127.0.0.1:N/health [--timeout 30]

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
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from bot.drill.target.data import canonical_tables_hash
    from bot.drill.target.server import AppState, Handler
else:  # a script in the target's bin/, beside data.py and server.py
    from data import canonical_tables_hash
    from server import AppState, Handler


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
