"""The drill's production sandbox: a real target to run the rollback plan against.

``build_sandbox(root)`` lays out, under ``root``::

    app/                         the app's working directory (the plan's cwd)
      .env.production            APP_VERSION=phase-3.0.0, DATABASE_PATH, PORT, ...
      databases/production.db    live database, WAL mode, the bad deployment applied
      databases/production_backup_<ts>.db   pre-deployment backup (the right one)
      databases/production_backup_<ts>.db   an older backup (a decoy: choosing it loses data)
      pre_deployment_export.json the backup's content in the app's export format
    bin/app.py, bin/procman.py, ...      stdlib-only scripts run on the target (bot/drill/target)
    run/orbis-forge-admin.pid    written by the app once it listens
    procman/ (or pm2/)           the process manager's home; the app runs under it

The tables are exactly ``actions.sqlite_schema``'s. Everything is deterministic for a given
``seed`` and ``now``. The bad "Phase 3 deployment" changes, inserts and deletes rows of
projects, phases and step_progress, and grants admin to two read-only users; the app records
every change in change_history (full old and new rows as JSON, deployment 'phase-3.0.0')
under governance_logs rows of its own, while user_permissions is logged by triggers (no
deployment marker). Ordinary activity before it is recorded too (deployments 'phase-2.3.0',
'phase-2.4.1'). People keep working between the backup and the deployment and after it,
one of them on a row the deployment changed (``bot/drill/sandbox/story.py``): no strategy
gets "nothing lost" or "access levels equal" by construction, and the drill's verdict checks
each strategy's exact result and data-loss figures.

The deployment is applied after the app starts and holds the database open, so its commit
sits in ``production.db-wal`` (copying the main file alone would lose it, as on a busy
server).

Its parts: ``names`` (what things are called), ``writer`` (rows, their history, the
timeline), ``database`` (the database up to the backup), ``deployment`` (the bad deployment
and people's work around it), ``story`` (what each strategy must leave), ``app`` (the app
under its process manager). The build is synchronous and blocking; from async code run it
with ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from actions.sqlite_agent import content_hash
from bot.drill.sandbox.app import (
    Manager,
    choose_manager,
    find_pm2,
    free_port,
    install_scripts,
    pid_alive,
    pm2_home,
    target_python,
    wait_port_closed,
    write_env_file,
)
from bot.drill.sandbox.database import build_database
from bot.drill.sandbox.deployment import apply_bad_deployment
from bot.drill.sandbox.names import (
    APP_NAME,
    BACKUP_PATTERN,
    DATABASES_DIR,
    DB_RELATIVE,
    DEPLOYMENT_TABLES,
    DEPLOYMENT_VERSION,
    ENV_FILE,
    EXPORT_USER,
    MAINTENANCE_MESSAGE,
    PREVIOUS_VERSION,
    ProcessManager,
    SandboxError,
)
from bot.drill.sandbox.story import Story

__all__ = [
    "APP_NAME",
    "DEPLOYMENT_TABLES",
    "DEPLOYMENT_VERSION",
    "MAINTENANCE_MESSAGE",
    "PREVIOUS_VERSION",
    "ProcessManager",
    "Sandbox",
    "SandboxError",
    "build_sandbox",
    "find_pm2",
    "free_port",
]


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
    _manager: Manager | None = field(default=None, repr=False)
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
        return pid if pid_alive(pid) else None

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
            if pid is not None and pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_port_closed(self.port, timeout=10)
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
    Blocking (a second or two); from async code run it with ``asyncio.to_thread``.
    """
    if rows < 20:
        raise SandboxError("rows must be at least 20")
    root = root.resolve()
    if root.exists() and any(root.iterdir()):
        raise SandboxError(f"{root} is not empty")
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    kind, pm2_path = choose_manager(process_manager)
    workdir, bin_dir, run_dir = root / "app", root / "bin", root / "run"
    for d in (workdir, bin_dir, run_dir):
        d.mkdir(parents=True, exist_ok=True)
    install_scripts(bin_dir)
    port = port or free_port()
    python = target_python()
    built = build_database(workdir, rows=rows, seed=seed, now=now)
    env_path = write_env_file(workdir, port=port)

    cleanup: list[Path] = []
    if kind == "pm2":
        home, temp = pm2_home(root)
        cleanup += [temp] if temp is not None else []
    else:
        home = root / "procman"
    manager = Manager(kind, home, python, bin_dir, pm2_path)
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
            f"{q(python)} {q(str(bin_dir / 'app.py'))} --smoke-test {q(base_url)} --user {EXPORT_USER}"
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
