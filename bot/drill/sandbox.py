"""The drill's production sandbox: a real target to run the rollback plan against.

``build_sandbox(root)`` lays out, under ``root``::

    app/                         the app's working directory (the plan's cwd)
      .env.production            APP_VERSION=phase-3.0.0, DATABASE_PATH, PORT, ...
      databases/production.db    live database, WAL mode, the bad deployment applied
      databases/production_backup_<ts>.db   pre-deployment backup (the right one)
      databases/production_backup_<ts>.db   an older backup (a decoy: choosing it loses data)
      pre_deployment_export.json the backup's content in the app's export format
    bin/target_app.py, bin/procman.py      stdlib-only scripts run on the target
    run/orbis-forge-admin.pid    written by the app once it listens
    procman/ (or pm2/)           the process manager's home; the app runs under it

The tables are exactly ``actions.sqlite_schema``'s. Everything is deterministic for a given
``seed`` and ``now``. The bad "Phase 3 deployment" changes, inserts and deletes rows of
projects, phases and step_progress, and grants admin to two read-only users; the app records
every change in change_history (full old and new rows as JSON, deployment 'phase-3.0.0')
under governance_logs rows of its own, while user_permissions is logged by triggers (no
deployment marker). Ordinary activity before it is recorded too (deployments 'phase-2.3.0',
'phase-2.4.1'). People keep working between the backup and the deployment and after it,
one of them on a row the deployment changed (``bot/drill/sandbox_story.py``): no strategy
gets "nothing lost" or "access levels equal" by construction, and the drill's verdict checks
each strategy's exact result and data-loss figures.

The deployment is applied after the app starts and holds the database open, so its commit
sits in ``production.db-wal`` (copying the main file alone would lose it, as on a busy
server).

The build is synchronous and blocking; from async code use ``build_sandbox_async`` or
``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from actions import sqlite_schema
from actions.sqlite_agent import content_hash
from bot.drill import target_app
from bot.drill.sandbox_story import TRIGGERS, Story, Write

APP_NAME = "orbis-forge-admin"
DEPLOYMENT_VERSION = "phase-3.0.0"
PREVIOUS_VERSION = "phase-2.4.1"
OLDER_VERSION = "phase-2.3.0"
ENV_FILE = ".env.production"
DATABASES_DIR = "databases"
DB_RELATIVE = f"{DATABASES_DIR}/production.db"
BACKUP_PATTERN = "production_backup_*.db"
EXPORT_USER = "emergency_admin"
DEPLOY_USER = "deploy-bot"
MAINTENANCE_MESSAGE = "System maintenance in progress. Please try again in 30 minutes."
PRE_DEPLOYMENT_EXPORT = "pre_deployment_export.json"
#: Tables the bad deployment changes through the app (it also changes user_permissions).
DEPLOYMENT_TABLES = ("projects", "phases", "step_progress")
#: Unix socket paths are limited to 107 bytes; pm2 puts its sockets in PM2_HOME.
_MAX_PM2_HOME = 80

ProcessManager = Literal["auto", "pm2", "procman"]


class SandboxError(RuntimeError):
    """The sandbox could not be built, started or stopped."""


# ----------------------------------------------------------------------------- result


@dataclass
class Sandbox:
    """A built and running sandbox target, and what the drill checks against."""

    root: Path
    workdir: Path
    bin_dir: Path
    env_path: Path
    db_path: Path
    backup_path: Path
    decoy_backup_path: Path
    pre_deployment_export_path: Path
    port: int
    health_url: str
    export_url: str
    import_url: str
    app_name: str
    process_manager: Literal["pm2", "procman"]
    pm_home: Path
    pm_start: str
    pm_stop: str
    pm_restart: str
    pm_status: str
    app_pid_file: Path
    python: str
    app_rollback_command: str
    smoke_test_command: str
    deployment_version: str
    previous_version: str
    built_at: datetime
    #: change_history rows the bad deployment wrote (one per changed, inserted, deleted row).
    deployment_change_count: int
    #: Keys (as text) of the rows the deployment touched, per table; includes its own
    #: governance_logs and change_history rows.
    deployment_keys: dict[str, set[str]]
    #: ``actions.sqlite_agent.content_hash`` of the pre-deployment backup:
    #: {"tables": {name: hex}, "counts": {name: n}, "total": hex, "format": "rbh1"}.
    backup_content_hash: dict[str, Any]
    #: The same for the live database right after the deployment.
    live_content_hash: dict[str, Any]
    #: user_id -> access_level when the incident begins, before any rollback step (the
    #: deployment's escalation and people's changes included): what an abort puts back.
    original_access_levels: dict[str, str]
    #: People's writes around the deployment and what each strategy must leave behind.
    story: Story = field(default_factory=Story)
    #: The backup plus only the people's writes (as if the deployment never ran).
    intended_path: Path | None = None
    #: The live database as it was when the incident began.
    incident_path: Path | None = None
    _manager: _Manager | None = field(default=None, repr=False)
    _cleanup_dirs: list[Path] = field(default_factory=list, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def settings(self) -> dict[str, Any]:
        """Target settings for the runbook (the keys of ``bot.core.targets.TargetSettings``)."""
        return {
            # The deployment's changes carry its marker (or, written by a trigger, fall inside its
            # span), and its governance entries name its version.
            "boundary": {"marker": self.deployment_version,
                         "governance": {"details.version": self.deployment_version}},
            "workdir": str(self.workdir),
            "app_name": self.app_name,
            "db_path": DB_RELATIVE,
            "databases_dir": DATABASES_DIR,
            "backup_pattern": BACKUP_PATTERN,
            "env_file": ENV_FILE,
            "health_url": self.health_url,
            "export_url": self.export_url,
            "import_url": self.import_url,
            "export_user": EXPORT_USER,
            "pm_start": self.pm_start,
            "pm_stop": self.pm_stop,
            "pm_restart": self.pm_restart,
            "pm_status": self.pm_status,
            "python": self.python,
            "maintenance_message": MAINTENANCE_MESSAGE,
            "app_rollback_command": self.app_rollback_command,
            "previous_version": self.previous_version,
            "deployed_version": self.deployment_version,
            "smoke_test_command": self.smoke_test_command,
        }

    def app_pid(self) -> int | None:
        """Pid of the running app (from the pid file it writes once listening), or None."""
        try:
            pid = int(self.app_pid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def stop(self) -> None:
        """Stop the app and the process manager (``pm2 kill`` for pm2); idempotent."""
        if self._stopped:
            return
        pid = self.app_pid()
        try:
            if self._manager is not None:
                self._manager.kill()
        finally:
            # Last resort for an app the manager lost track of: it is ours to end.
            if pid is not None and _pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _wait_port_closed(self.port, timeout=10)
            for d in self._cleanup_dirs:
                shutil.rmtree(d, ignore_errors=True)
            self._stopped = True

    async def astop(self) -> None:
        """``stop`` from async code, off the event loop."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pm2() -> str | None:
    """pm2 from ``$ROLLBACK_BOT_PM2`` (the binary, or a dir with node_modules/.bin/pm2),
    else from PATH."""
    hint = os.environ.get("ROLLBACK_BOT_PM2")
    if hint:
        base = Path(hint)
        for candidate in (base, base / "node_modules" / ".bin" / "pm2", base / "bin" / "pm2"):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("pm2")


def _python3() -> str:
    """The target's ``python3``, by the path it resolves to.

    Version managers put a shell-script shim first on the PATH (pyenv's costs ~80 ms a
    start); the sandbox names the interpreter behind it, as an operator would configure a
    real server's ``python`` setting.
    """
    if not shutil.which("python3"):
        return sys.executable
    try:
        found = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "python3"
    return found or "python3"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] not in ("Z", "X")


def _run(
    argv: list[str], *, timeout: float, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxError(f"{shlex.join(argv)} timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        raise SandboxError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}")
    return proc


def _wait_http(url: str, *, timeout: float) -> int:
    """Wait until ``url`` answers at all; return its status."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            time.sleep(0.1)
    raise SandboxError(f"{url} did not answer within {timeout} s: {last}")


def _wait_port_closed(port: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.1)
    return False


def _stamp(t: datetime) -> str:
    """The schema's timestamp text: ISO 8601 UTC with milliseconds."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- data


_PROJECT_NAMES = (
    "OrbisForge Core",
    "BackEnd Visibility",
    "Runtime Status Dashboard",
    "Data Integrity Tools",
    "Governance Ledger",
    "MemoryPlugin Anchors",
    "DriveMemory Archive",
    "Admin Console",
    "Audit Trail",
    "Partner Onboarding",
    "Billing Reconciliation",
    "Field Operations",
)
_PHASE_NAMES = ("Discovery", "Design", "Build", "UAT", "Release", "Hypercare")
_STEP_NAMES = (
    "define-acceptance-criteria",
    "schema-review",
    "api-contract-sign-off",
    "implement-endpoints",
    "integration-tests",
    "security-review",
    "load-test",
    "migration-dry-run",
    "uat-sign-off",
    "release-notes",
    "runbook-update",
    "stakeholder-demo",
)
_PEOPLE = (
    "alice.nguyen",
    "ben.okafor",
    "carla.reyes",
    "dev.patel",
    "elena.novak",
    "farid.haddad",
    "grace.kim",
    "hugo.martin",
    "ines.costa",
    "jamal.wright",
    "kaori.sato",
    "liam.byrne",
)
#: (role, access_level) of the ordinary users, cycled: a mix the plan's restriction touches.
_ROLE_MIX = (
    ("admin", "admin"),
    ("project_manager", "read_write"),
    ("engineer", "read_write"),
    ("engineer", "read_write"),
    ("analyst", "read_only"),
    ("viewer", "read_only"),
    ("analyst", "read_write"),
    ("admin", "admin"),
)


class _Writer:
    """Writes rows of the plan's tables and, inside a deployment, their change_history rows
    (full old and new rows, through ``actions.sqlite_schema.record_change``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.deployment: str | None = None
        self.log_id: int | None = None
        self.user: str | None = None
        self.changes: list[int] = []
        self.touched: dict[str, set[str]] = {}

    def row(self, table: str, key: int) -> dict[str, Any]:
        """The full row of ``table`` with id ``key``."""
        return sqlite_schema.read_row(self.conn, table, "id", key)

    def ids(self, sql: str, params: tuple[Any, ...] = ()) -> list[int]:
        """The first column of a query, as ints."""
        return [int(r[0]) for r in self.conn.execute(sql, params)]

    def _record(
        self, table: str, key: int, op: str, old: dict[str, Any] | None, new: dict[str, Any] | None, at: str
    ) -> None:
        if self.deployment is None:
            return
        if table == "user_permissions":  # logged by the table's triggers
            self.touched.setdefault(table, set()).add(str(key))
            return
        change_id = sqlite_schema.record_change(
            self.conn,
            table,
            key,
            op,
            old,
            new,
            governance_log_id=self.log_id,
            deployment=self.deployment,
            changed_by=self.user,
            changed_at=at,
        )
        self.changes.append(change_id)
        self.touched.setdefault(table, set()).add(str(key))

    def insert(self, table: str, values: dict[str, Any], at: str) -> int:
        """Insert a row; returns its id."""
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = self.conn.execute(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', list(values.values()))
        assert cur.lastrowid is not None
        key = cur.lastrowid
        self._record(table, key, "INSERT", None, self.row(table, key), at)
        return key

    def update(self, table: str, key: int, values: dict[str, Any], at: str) -> None:
        """Update one row by id."""
        old = self.row(table, key)
        sets = ", ".join(f"{c} = ?" for c in values)
        self.conn.execute(f'UPDATE "{table}" SET {sets} WHERE id = ?', [*values.values(), key])
        self._record(table, key, "UPDATE", old, self.row(table, key), at)

    def delete(self, table: str, key: int, at: str) -> None:
        """Delete one row by id."""
        old = self.row(table, key)
        self.conn.execute(f'DELETE FROM "{table}" WHERE id = ?', (key,))
        self._record(table, key, "DELETE", old, None, at)

    def step_key(self, phase_id: int, name: str) -> str:
        """A step_key not yet used in the phase: ``NN-name``."""
        used = {
            str(r[0]) for r in self.conn.execute("SELECT step_key FROM step_progress WHERE phase_id = ?", (phase_id,))
        }
        n = len(used) + 1
        while f"{n:02d}-{name}" in used:
            n += 1
        return f"{n:02d}-{name}"

    def log(
        self,
        at: str,
        event_type: str,
        user_id: str,
        user_role: str,
        resource: tuple[str, str],
        action: str,
        details: dict[str, Any],
        *,
        phase: str,
        success: bool = True,
    ) -> int:
        """Append a governance_logs row; returns its id."""
        cur = self.conn.execute(
            "INSERT INTO governance_logs (timestamp, event_type, user_id, user_role, resource_type, "
            "resource_id, action, success, details, runtime_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                at,
                event_type,
                user_id,
                user_role,
                resource[0],
                resource[1],
                action,
                1 if success else 0,
                _json(details),
                _json({"environment": "production", "phase": phase}),
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid


@dataclass(frozen=True)
class _Timeline:
    """When things happened, relative to the build's ``now`` (UTC)."""

    now: datetime

    @property
    def created(self) -> datetime:
        """The system went live."""
        return self.now - timedelta(days=30)

    @property
    def previous_deploy(self) -> datetime:
        """phase-2.4.1 was deployed."""
        return self.now - timedelta(days=12)

    @property
    def decoy_backup(self) -> datetime:
        """An older backup (the wrong choice)."""
        return self.now - timedelta(days=3, hours=2)

    @property
    def quiet_from(self) -> datetime:
        """Ordinary activity ends: the last hours hold only the deployment."""
        return self.now - timedelta(hours=3)

    @property
    def backup(self) -> datetime:
        """The pre-deployment backup."""
        return self.now - timedelta(minutes=55)

    @property
    def deploy(self) -> datetime:
        """The Phase 3 deployment starts."""
        return self.now - timedelta(minutes=50)


def _users(w: _Writer, t: _Timeline) -> dict[str, str]:
    """user_permissions: an emergency admin, superusers, a mix of roles and access levels."""
    at = _stamp(t.created)
    people: list[tuple[str, str, str]] = [
        (EXPORT_USER, "emergency_admin", "admin"),
        ("ops.superuser", "superuser", "admin"),
        ("cto.office", "superuser", "admin"),
        (DEPLOY_USER, "service", "read_write"),
    ]
    people += [(person, *_ROLE_MIX[i % len(_ROLE_MIX)]) for i, person in enumerate(_PEOPLE)]
    for user_id, role, level in people:
        w.insert(
            "user_permissions",
            {"user_id": user_id, "role": role, "access_level": level, "granted_by": "cto.office", "updated_at": at},
            at,
        )
    return {user_id: level for user_id, _role, level in people}


def _step_status(rng: random.Random, phase_status: str) -> str:
    if phase_status in ("completed", "pending"):
        return phase_status
    return rng.choice(("pending", "in_progress", "in_progress", "completed", "completed", "blocked"))


def _initial_load(w: _Writer, rng: random.Random, t: _Timeline, rows: int) -> list[int]:
    """Projects, their phases and steps as they stood at go-live; returns the step ids."""
    phases: list[tuple[int, str, str]] = []
    for p in range(max(4, rows // 25)):
        created = _stamp(t.created + timedelta(hours=p * 7))
        name = _PROJECT_NAMES[p % len(_PROJECT_NAMES)]
        if p >= len(_PROJECT_NAMES):
            name = f"{name} {p // len(_PROJECT_NAMES) + 1}"
        status = rng.choice(("active", "active", "active", "on_hold", "completed"))
        project_id = w.insert(
            "projects",
            {
                "name": name,
                "description": f"{name}: OF-BEV programme workstream",
                "status": status,
                "created_at": created,
                "updated_at": created,
            },
            created,
        )
        n_phases = rng.randint(3, 6)
        done = n_phases if status == "completed" else rng.randint(0, n_phases - 1)
        for position in range(1, n_phases + 1):
            phase_status = "completed" if position <= done else "in_progress" if position == done + 1 else "pending"
            phase_id = w.insert(
                "phases",
                {
                    "project_id": project_id,
                    "name": f"Phase {position} - {_PHASE_NAMES[position - 1]}",
                    "position": position,
                    "status": phase_status,
                    "created_at": created,
                    "updated_at": created,
                },
                created,
            )
            phases.append((phase_id, phase_status, created))
    steps: list[int] = []
    per_phase, extra = divmod(rows, len(phases))
    for i, (phase_id, phase_status, created) in enumerate(phases):
        for s in range(per_phase + (1 if i < extra else 0)):
            name = _STEP_NAMES[s % len(_STEP_NAMES)]
            values = {
                "phase_id": phase_id,
                "step_key": w.step_key(phase_id, name),
                "status": _step_status(rng, phase_status),
                "assignee": rng.choice(_PEOPLE),
                "notes": None,
                "updated_at": created,
            }
            steps.append(w.insert("step_progress", values, created))
    return steps


def _activity(
    w: _Writer, rng: random.Random, *, start: datetime, end: datetime, events: int, steps: list[int], version: str
) -> None:
    """Ordinary use between ``start`` and ``end``: logins, exports, step updates, new steps.

    Every data change is recorded in change_history under the version deployed then.
    """
    span = (end - start).total_seconds()
    moments = sorted(start + timedelta(seconds=rng.uniform(0, span)) for _ in range(events))
    w.deployment = version
    for moment in moments:
        at = _stamp(moment)
        user = rng.choice(_PEOPLE)
        w.user = user
        kind = rng.random()
        if kind < 0.25:
            w.log(at, "user_login", user, "user", ("session", user), "login", {"method": "sso"}, phase=version)
        elif kind < 0.32:
            w.log(
                at,
                "json_export",
                user,
                "user",
                ("database", "production"),
                "export",
                {"tables": "all"},
                phase=version,
                success=rng.random() > 0.1,
            )
        elif kind < 0.9:
            step_id = rng.choice(steps)
            step = w.row("step_progress", step_id)
            nxt = {"pending": "in_progress", "blocked": "in_progress", "in_progress": "completed"}
            if step["status"] not in nxt:
                continue
            w.log_id = w.log(
                at,
                "data_update",
                user,
                "user",
                ("step_progress", str(step_id)),
                "update_status",
                {"status": nxt[step["status"]]},
                phase=version,
            )
            note = f"{nxt[step['status']]} by {user}"
            w.update("step_progress", step_id, {"status": nxt[step["status"]], "notes": note, "updated_at": at}, at)
        else:
            open_phases = w.ids("SELECT id FROM phases WHERE status = 'in_progress' ORDER BY id")
            if not open_phases:
                continue
            phase_id = rng.choice(open_phases)
            w.log_id = w.log(
                at,
                "data_create",
                user,
                "user",
                ("phases", str(phase_id)),
                "add_step",
                {"phase_id": phase_id},
                phase=version,
            )
            values = {
                "phase_id": phase_id,
                "step_key": w.step_key(phase_id, rng.choice(_STEP_NAMES)),
                "status": "pending",
                "assignee": user,
                "notes": "added during delivery",
                "updated_at": at,
            }
            steps.append(w.insert("step_progress", values, at))
    w.deployment = w.log_id = w.user = None


def _bad_deployment(
    w: _Writer, rng: random.Random, t: _Timeline, rows: int, *, must_reset: int, escalate: list[int]
) -> tuple[list[int], int]:
    """The Phase 3 deployment: migrations that damage data and escalate two users' access.
    Returns its governance log ids and the step it changed twice."""
    w.deployment, w.user = DEPLOYMENT_VERSION, DEPLOY_USER
    ticks = (t.deploy + timedelta(seconds=2 * i) for i in range(1_000_000))

    def at() -> str:
        return _stamp(next(ticks))

    logs: list[int] = []

    def log(event: str, action: str, details: dict[str, Any]) -> int:
        details = {"version": DEPLOYMENT_VERSION, "previous_version": PREVIOUS_VERSION, **details}
        resource = ("production_deployment", "of-bev-phase-3")
        logs.append(w.log(at(), event, DEPLOY_USER, "ci_pipeline", resource, action, details, phase="OF-BEV-Phase-3"))
        return logs[-1]

    features = ["live_database_integration", "inline_editing_system", "json_import_export"]
    log("deployment_started", "deploy", {"features": features})

    # 0301: a status sync archives live projects and rewrites their descriptions.
    w.log_id = log("data_migration", "migrate", {"migration": "0301_project_status_sync"})
    live = w.ids("SELECT id FROM projects WHERE status = 'active' ORDER BY id")
    for project_id in rng.sample(live, min(len(live), max(2, len(live) // 3))):
        stamp = at()
        w.update(
            "projects", project_id, {"status": "archived", "description": "synced by 0301", "updated_at": stamp}, stamp
        )
    stamp = at()
    project_id = w.insert(
        "projects",
        {
            "name": "Live Database Integration",
            "description": "Phase 3: live database operations (created by 0302)",
            "status": "active",
            "created_at": stamp,
            "updated_at": stamp,
        },
        stamp,
    )
    for position in (1, 2):
        stamp = at()
        phase = {
            "project_id": project_id,
            "name": f"Phase {position} - {_PHASE_NAMES[position - 1]}",
            "position": position,
            "status": "in_progress" if position == 1 else "pending",
            "created_at": stamp,
            "updated_at": stamp,
        }
        phase_id = w.insert("phases", phase, stamp)
        for name in _STEP_NAMES[:3]:
            stamp = at()
            step = {
                "phase_id": phase_id,
                "step_key": w.step_key(phase_id, name),
                "status": "pending",
                "assignee": DEPLOY_USER,
                "notes": "seeded by 0302",
                "updated_at": stamp,
            }
            w.insert("step_progress", step, stamp)

    # 0302b: a permission sync grants admin to two read-only users (the trigger logs it,
    # with no deployment marker, inside the deployment's span).
    w.log_id = log("data_migration", "migrate", {"migration": "0302_permission_sync"})
    for user in escalate:
        stamp = at()
        w.update("user_permissions", user, {"access_level": "admin", "updated_at": stamp}, stamp)

    # 0303: the inline-editing normalisation resets finished work and drops its notes.
    w.log_id = log("data_migration", "migrate", {"migration": "0303_inline_editing_normalisation"})
    done = w.ids("SELECT id FROM step_progress WHERE status = 'completed' ORDER BY id")
    reset = rng.sample([d for d in done if d != must_reset], min(len(done) - 1, max(6, rows // 10) - 1))
    reset.append(must_reset)  # the step someone had just annotated (never the one changed twice)
    for step_id in reset:
        stamp = at()
        w.update("step_progress", step_id, {"status": "pending", "notes": None, "updated_at": stamp}, stamp)
    if reset:  # one row changed twice: an undo must run newest first
        stamp = at()
        w.update("step_progress", reset[0], {"assignee": DEPLOY_USER, "updated_at": stamp}, stamp)
    finished = w.ids("SELECT id FROM phases WHERE status = 'completed' ORDER BY id")
    for phase_id in rng.sample(finished, min(len(finished), max(2, len(finished) // 6))):
        stamp = at()
        w.update("phases", phase_id, {"status": "in_progress", "updated_at": stamp}, stamp)
    open_phases = w.ids("SELECT id FROM phases WHERE status = 'in_progress' AND project_id != ?", (project_id,))
    for phase_id in rng.sample(open_phases, min(len(open_phases), 4)):
        stamp = at()
        step = {
            "phase_id": phase_id,
            "step_key": w.step_key(phase_id, "inline-edit-audit"),
            "status": "pending",
            "assignee": DEPLOY_USER,
            "notes": "added by 0303",
            "updated_at": stamp,
        }
        w.insert("step_progress", step, stamp)

    # 0304: a "duplicate" cleanup deletes live rows, and a whole phase with its steps.
    w.log_id = log("data_migration", "migrate", {"migration": "0304_cleanup_duplicate_steps"})
    touched = w.touched.get("step_progress", set())
    untouched = [s for s in w.ids("SELECT id FROM step_progress ORDER BY id") if str(s) not in touched]
    for step_id in rng.sample(untouched, min(len(untouched), 3)):
        w.delete("step_progress", step_id, at())
    pending = w.ids("SELECT id FROM phases WHERE status = 'pending' AND project_id != ? ORDER BY id", (project_id,))
    if pending:
        victim = rng.choice(pending)
        for step_id in w.ids("SELECT id FROM step_progress WHERE phase_id = ? ORDER BY id", (victim,)):
            w.delete("step_progress", step_id, at())
        w.delete("phases", victim, at())
    w.log_id = None
    log("deployment_completed", "deploy", {"changes": len(w.changes), "status": "completed"})
    w.deployment = w.user = None
    return logs, reset[0]


def _backup(conn: sqlite3.Connection, dest: Path, taken_at: datetime) -> None:
    """Consistent copy through the backup API; file time set to when it was taken."""
    partial = dest.with_name(dest.name + ".partial")
    out = sqlite3.connect(partial)
    try:
        conn.backup(out, pages=-1)
        out.execute("PRAGMA journal_mode = DELETE")
    finally:
        out.close()
    partial.replace(dest)
    stamp = taken_at.timestamp()
    os.utime(dest, (stamp, stamp))


def _write_export(db: Path, dest: Path, exported_at: datetime) -> None:
    """The database's content in the app's export format (what /export would answer)."""
    tables = target_app.Database(db).export()
    doc = {
        "format": target_app.EXPORT_FORMAT,
        "exported_at": exported_at.isoformat(timespec="seconds"),
        "exported_by": EXPORT_USER,
        "app_version": PREVIOUS_VERSION,
        "counts": {name: len(r) for name, r in tables.items()},
        "tables": tables,
        "sha256": target_app.canonical_tables_hash(tables),
    }
    dest.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")


@dataclass(frozen=True)
class _Built:
    """What the database build produced (before the deployment)."""

    db_path: Path
    backup_path: Path
    decoy_backup_path: Path
    export_path: Path
    original_access_levels: dict[str, str]


def build_database(workdir: Path, *, rows: int, seed: int, now: datetime) -> _Built:
    """Create the live database up to its pre-deployment state, with both backups."""
    rng = random.Random(seed)
    t = _Timeline(now)
    databases = workdir / DATABASES_DIR
    databases.mkdir(parents=True, exist_ok=True)
    db_path = workdir / DB_RELATIVE
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        sqlite_schema.apply_schema(conn)
        for trigger in TRIGGERS:
            conn.execute(trigger)
        w = _Writer(conn)
        conn.execute("BEGIN")
        levels = _users(w, t)
        steps = _initial_load(w, rng, t, rows)
        _activity(
            w,
            rng,
            start=t.created + timedelta(days=1),
            end=t.previous_deploy,
            events=max(10, rows // 4),
            steps=steps,
            version=OLDER_VERSION,
        )
        details = {"version": PREVIOUS_VERSION, "previous_version": OLDER_VERSION}
        resource = ("production_deployment", "of-bev-phase-2")
        w.log(
            _stamp(t.previous_deploy),
            "deployment_completed",
            DEPLOY_USER,
            "ci_pipeline",
            resource,
            "deploy",
            details,
            phase="OF-BEV-Phase-2",
        )
        _activity(
            w,
            rng,
            start=t.previous_deploy,
            end=t.decoy_backup,
            events=max(10, rows // 5),
            steps=steps,
            version=PREVIOUS_VERSION,
        )
        conn.execute("COMMIT")
        decoy = databases / f"production_backup_{t.decoy_backup.strftime('%Y%m%d_%H%M%S')}.db"
        _backup(conn, decoy, t.decoy_backup)
        conn.execute("BEGIN")
        _activity(
            w,
            rng,
            start=t.decoy_backup,
            end=t.quiet_from,
            events=max(10, rows // 5),
            steps=steps,
            version=PREVIOUS_VERSION,
        )
        conn.execute("COMMIT")
        backup = databases / f"production_backup_{t.backup.strftime('%Y%m%d_%H%M%S')}.db"
        _backup(conn, backup, t.backup)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    export_path = workdir / PRE_DEPLOYMENT_EXPORT
    _write_export(backup, export_path, t.backup)
    return _Built(db_path, backup, decoy, export_path, levels)


def _max_id(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f'SELECT coalesce(max(id), 0) FROM "{table}"').fetchone()[0])


def _legit(conn: sqlite3.Connection, writes: list[Write], at: datetime, version: str) -> int:
    """People's writes, logged by the app under the running version; returns history rows added."""
    people = _Writer(conn)
    people.deployment, people.user = version, _PEOPLE[0]
    before = _max_id(conn, "change_history")
    for i, write in enumerate(writes):
        stamp = _stamp(at + timedelta(seconds=20 * i))
        values = {**write.values, "updated_at": stamp} if "updated_at" in write.values else write.values
        write.values.update(values)
        if write.insert:
            people.insert(write.table, {"id": write.key, **write.values}, stamp)
        else:
            people.update(write.table, write.key, write.values, stamp)
    people.log(_stamp(at + timedelta(seconds=20 * len(writes))), "user_login", _PEOPLE[1], "user",
               ("session", _PEOPLE[1]), "login", {"method": "sso"}, phase=version)
    return _max_id(conn, "change_history") - before


def _first(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> int:
    got = conn.execute(sql, params).fetchone()
    if got is None:
        raise SandboxError(f"the sandbox data has no row for: {sql}")
    return int(got[0])


def apply_bad_deployment(
    db_path: Path, *, rows: int, seed: int, now: datetime, backup: Path, expected_dir: Path
) -> tuple[int, dict[str, set[str]], Story]:
    """People's writes after the backup, the Phase 3 deployment, people's writes after it.

    Returns (change_history rows the deployment wrote, ids as text of the rows it touched per
    table, including its own change_history and governance_logs rows, the story). Writes
    ``expected_dir/intended.db`` (the backup plus only the people's writes) and
    ``expected_dir/incident.db`` (the live database when the incident begins). Run while the
    app holds the database open, the commits stay in the -wal file, as on a busy server.
    """
    rng = random.Random(seed * 7919 + 3)
    t = _Timeline(now)
    story = Story()
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        annotated = _first(conn, "SELECT id FROM step_progress WHERE status = 'completed' ORDER BY id")
        phase = _first(conn, "SELECT id FROM phases WHERE status = 'in_progress' ORDER BY id")
        writers = [r[0] for r in conn.execute("SELECT id FROM user_permissions WHERE access_level = 'read_write' "
                                              "AND role NOT IN ('service') ORDER BY id")]
        readers = [r[0] for r in conn.execute("SELECT id FROM user_permissions WHERE access_level = 'read_only' "
                                              "ORDER BY id")]
        if len(writers) < 2 or len(readers) < 2:
            raise SandboxError("the sandbox needs two read_write and two read_only users")
        story.pre = [
            Write("step_progress", annotated, {"notes": "verified in UAT by alice.nguyen", "updated_at": ""}),
            Write("step_progress", 980001, {"phase_id": phase, "step_key": "90-hotfix-review", "status": "pending",
                                            "assignee": "ben.okafor", "notes": "added after the backup",
                                            "updated_at": ""}, insert=True),
            Write("user_permissions", writers[0], {"access_level": "admin", "updated_at": ""}),
        ]
        story.overlap = ("step_progress", str(annotated))
        conn.execute("BEGIN IMMEDIATE")
        story.legit_history += _legit(conn, story.pre, t.backup + timedelta(minutes=1), PREVIOUS_VERSION)
        conn.execute("COMMIT")

        w = _Writer(conn)
        before = _max_id(conn, "change_history")
        conn.execute("BEGIN IMMEDIATE")
        logs, changed_twice = _bad_deployment(w, rng, t, rows, must_reset=annotated, escalate=readers[:2])
        conn.execute("COMMIT")
        story.deployment_history = _max_id(conn, "change_history") - before
        story.deployment_governance = len(logs)
        story.touched = {table: set(ids) for table, ids in w.touched.items()}

        untouched = _first(conn, "SELECT id FROM step_progress WHERE id NOT IN (SELECT value FROM json_each(?)) "
                                 "ORDER BY id", (json.dumps(sorted(int(k) for k in w.touched["step_progress"])),))
        story.post = [
            Write("step_progress", changed_twice, {"status": "in_progress", "notes": "picked up again",
                                                   "updated_at": ""}),
            Write("step_progress", untouched, {"status": "completed", "notes": "closed after the release",
                                               "updated_at": ""}),
            Write("step_progress", 990001, {"phase_id": phase, "step_key": "91-customer-followup",
                                            "status": "in_progress", "assignee": "carla.reyes", "notes": None,
                                            "updated_at": ""}, insert=True),
            Write("user_permissions", writers[1], {"access_level": "read_only", "updated_at": ""}),
        ]
        story.conflict = ("step_progress", str(changed_twice))
        conn.execute("BEGIN IMMEDIATE")
        story.legit_history += _legit(conn, story.post, t.deploy + timedelta(minutes=5), DEPLOYMENT_VERSION)
        conn.execute("COMMIT")
        story.legit_governance = 2
        expected_dir.mkdir(parents=True, exist_ok=True)
        _backup(conn, expected_dir / "incident.db", now)
    finally:
        conn.close()
    _intended(backup, expected_dir / "intended.db", story)
    keys = {table: set(ids) for table, ids in w.touched.items()}
    keys["change_history"] = {str(c) for c in range(before + 1, before + story.deployment_history + 1)}
    keys["governance_logs"] = {str(g) for g in logs}
    return len(w.changes), keys, story


def _intended(backup: Path, dest: Path, story: Story) -> None:
    """The backup plus only the people's writes: the database as if the deployment never ran."""
    shutil.copyfile(backup, dest)
    conn = sqlite3.connect(dest, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for write in [*story.pre, *story.post]:
            sql, args = write.sql()
            conn.execute(sql, args)
        conn.execute("COMMIT")
    finally:
        conn.close()


def write_env_file(workdir: Path, *, port: int) -> Path:
    """The app's .env.production as the deployment left it (no MAINTENANCE lines)."""
    path = workdir / ENV_FILE
    path.write_text(
        "# orbis-forge-admin production environment\n"
        "NODE_ENV=production\n"
        f"APP_NAME={APP_NAME}\n"
        f"APP_VERSION={DEPLOYMENT_VERSION}\n"
        "HOST=127.0.0.1\n"
        f"PORT={port}\n"
        f"DATABASE_PATH={DB_RELATIVE}\n"
        "FEATURE_INLINE_EDITING=true\n"
        "FEATURE_JSON_OPERATIONS=true\n"
        "LOG_LEVEL=info\n",
        encoding="utf-8",
    )
    return path


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _Manager:
    """The process manager the app runs under: which one, its home, how to call it."""

    kind: Literal["pm2", "procman"]
    home: Path
    python: str
    bin_dir: Path
    pm2_path: str | None = None

    def base_argv(self) -> list[str]:
        """The manager's command line up to the action."""
        if self.kind == "pm2":
            assert self.pm2_path is not None
            return [self.pm2_path]
        return [self.python, str(self.bin_dir / "procman.py"), "--home", str(self.home)]

    def env(self) -> dict[str, str] | None:
        """pm2's daemon and the app inherit this environment and ``pm2 jlist`` prints it:
        keep it small (no tokens of the bot). procman needs nothing special."""
        if self.kind != "pm2":
            return None
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["PM2_HOME"] = str(self.home)
        return env

    def commands(self, health_url: str) -> dict[str, str]:
        """pm_start / pm_stop / pm_restart / pm_status as shell command strings."""
        q = shlex.quote
        if self.kind == "pm2":
            assert self.pm2_path is not None
            base = f"PM2_HOME={q(str(self.home))} {q(self.pm2_path)}"
            # pm2 returns before a non-Node app listens: wait for it, as a deploy script does.
            wait = f"{q(self.python)} {q(str(self.bin_dir / 'target_app.py'))} --wait-http {q(health_url)}"
            return {
                "pm_start": f"{base} start {APP_NAME} && {wait}",
                "pm_stop": f"{base} stop {APP_NAME}",
                "pm_restart": f"{base} restart {APP_NAME} && {wait}",
                "pm_status": f"{base} jlist",
            }
        base = shlex.join(self.base_argv())
        return {
            "pm_start": f"{base} start {APP_NAME}",
            "pm_stop": f"{base} stop {APP_NAME}",
            "pm_restart": f"{base} restart {APP_NAME}",
            "pm_status": f"{base} status {APP_NAME}",
        }

    def start(self, *, workdir: Path, port: int, pid_file: Path) -> None:
        """Register and start the app; wait until it writes its pid file and answers HTTP."""
        script = str(self.bin_dir / "target_app.py")
        app_args = ["--workdir", str(workdir), "--port", str(port), "--pid-file", str(pid_file)]
        if self.kind == "pm2":
            argv = ["start", script, "--name", APP_NAME, "--interpreter", self.python, "--cwd", str(workdir)]
            argv += ["--", *app_args]
        else:
            argv = ["start", APP_NAME, "--cwd", str(workdir), "--ready-file", str(pid_file)]
            argv += ["--", self.python, script, *app_args]
        _run([*self.base_argv(), *argv], timeout=90, env=self.env())
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            if time.monotonic() > deadline:
                raise SandboxError(f"{APP_NAME} did not write {pid_file} within 30 s")
            time.sleep(0.05)
        _wait_http(f"http://127.0.0.1:{port}/health", timeout=30)

    def kill(self) -> None:
        """Stop every app and, for pm2, its daemon."""
        _run([*self.base_argv(), "kill"], timeout=60, check=False, env=self.env())


def _choose_manager(choice: ProcessManager) -> tuple[Literal["pm2", "procman"], str | None]:
    if choice not in ("auto", "pm2", "procman"):
        raise SandboxError(f"process_manager must be auto, pm2 or procman, not {choice!r}")
    pm2 = None if choice == "procman" else find_pm2()
    if pm2 is not None:
        return "pm2", pm2
    if choice == "pm2":
        raise SandboxError("process_manager='pm2' but pm2 is not installed (PATH or $ROLLBACK_BOT_PM2)")
    return "procman", None


def _pm2_home(root: Path) -> tuple[Path, Path | None]:
    """PM2_HOME inside the sandbox, or a short temp dir when that path is too long for
    pm2's unix sockets (then also returned second, to remove at stop)."""
    home = root / "pm2"
    if len(str(home)) <= _MAX_PM2_HOME:
        home.mkdir(parents=True, exist_ok=True)
        return home, None
    short = Path(tempfile.mkdtemp(prefix="rb-pm2-"))
    (root / "pm2.home").write_text(f"{short}\n", encoding="utf-8")
    return short, short


# ----------------------------------------------------------------------------- build


def build_sandbox(
    root: Path,
    *,
    port: int | None = None,
    process_manager: ProcessManager = "auto",
    rows: int = 200,
    seed: int = 7,
    now: datetime | None = None,
) -> Sandbox:
    """Build the sandbox under ``root`` (created; must be empty or absent) and start the app.

    ``rows`` is roughly the number of step_progress rows; ``seed`` and ``now`` fix the data.
    Blocking (a second or two); from async code use ``build_sandbox_async``.
    """
    if rows < 20:
        raise SandboxError("rows must be at least 20")
    root = root.resolve()
    if root.exists() and any(root.iterdir()):
        raise SandboxError(f"{root} is not empty")
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    kind, pm2_path = _choose_manager(process_manager)
    workdir, bin_dir, run_dir = root / "app", root / "bin", root / "run"
    for d in (workdir, bin_dir, run_dir):
        d.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    for script in ("target_app.py", "procman.py"):
        shutil.copy2(here / script, bin_dir / script)
        (bin_dir / script).chmod(0o755)
    port = port or free_port()
    python = _python3()
    built = build_database(workdir, rows=rows, seed=seed, now=now)
    env_path = write_env_file(workdir, port=port)

    cleanup: list[Path] = []
    if kind == "pm2":
        home, temp = _pm2_home(root)
        cleanup += [temp] if temp is not None else []
    else:
        home = root / "procman"
    manager = _Manager(kind, home, python, bin_dir, pm2_path)
    base_url = f"http://127.0.0.1:{port}"
    commands = manager.commands(f"{base_url}/health")
    q = shlex.quote
    sandbox = Sandbox(
        root=root,
        workdir=workdir,
        bin_dir=bin_dir,
        env_path=env_path,
        db_path=built.db_path,
        backup_path=built.backup_path,
        decoy_backup_path=built.decoy_backup_path,
        pre_deployment_export_path=built.export_path,
        port=port,
        health_url=f"{base_url}/health",
        export_url=f"{base_url}/api/json-operations/export",
        import_url=f"{base_url}/api/json-operations/import",
        app_name=APP_NAME,
        process_manager=kind,
        pm_home=home,
        pm_start=commands["pm_start"],
        pm_stop=commands["pm_stop"],
        pm_restart=commands["pm_restart"],
        pm_status=commands["pm_status"],
        app_pid_file=run_dir / f"{APP_NAME}.pid",
        python=python,
        # Stands in for the plan's GitHub workflow: the previous version, restarted.
        app_rollback_command=(
            f"sed -i 's/^APP_VERSION=.*/APP_VERSION={PREVIOUS_VERSION}/' {q(str(env_path))} && {commands['pm_restart']}"
        ),
        smoke_test_command=(
            f"{q(python)} {q(str(bin_dir / 'target_app.py'))} --smoke-test {q(base_url)} --user {EXPORT_USER}"
        ),
        deployment_version=DEPLOYMENT_VERSION,
        previous_version=PREVIOUS_VERSION,
        built_at=now,
        deployment_change_count=0,
        deployment_keys={},
        backup_content_hash=content_hash(str(built.backup_path)),
        live_content_hash={},
        original_access_levels=built.original_access_levels,
        _manager=manager,
        _cleanup_dirs=cleanup,
    )
    try:
        manager.start(workdir=workdir, port=port, pid_file=sandbox.app_pid_file)
        count, keys, story = apply_bad_deployment(built.db_path, rows=rows, seed=seed, now=now,
                                                  backup=built.backup_path, expected_dir=root / "expected")
        sandbox.deployment_change_count = count
        sandbox.deployment_keys = keys
        sandbox.story = story
        sandbox.intended_path = root / "expected" / "intended.db"
        sandbox.incident_path = root / "expected" / "incident.db"
        conn = sqlite3.connect(f"file:{sandbox.incident_path}?mode=ro", uri=True)
        try:
            sandbox.original_access_levels = {
                str(u): str(lvl) for u, lvl in conn.execute("SELECT user_id, access_level FROM user_permissions")}
        finally:
            conn.close()
        sandbox.live_content_hash = content_hash(str(built.db_path))
    except BaseException:
        sandbox.stop()
        raise
    return sandbox


async def build_sandbox_async(
    root: Path,
    *,
    port: int | None = None,
    process_manager: ProcessManager = "auto",
    rows: int = 200,
    seed: int = 7,
    now: datetime | None = None,
) -> Sandbox:
    """``build_sandbox`` in a worker thread, so the event loop stays free."""
    return await asyncio.to_thread(
        build_sandbox, root, port=port, process_manager=process_manager, rows=rows, seed=seed, now=now
    )
