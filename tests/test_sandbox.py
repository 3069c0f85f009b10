"""The drill's sandbox target: real SQLite, a real app over HTTP, a real process manager."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from actions import sqlite_agent
from actions.sqlite_agent import content_hash
from bot.core.targets import TargetSettings
from bot.drill.sandbox import (
    APP_NAME,
    DEPLOYMENT_TABLES,
    DEPLOYMENT_VERSION,
    MAINTENANCE_MESSAGE,
    PREVIOUS_VERSION,
    Sandbox,
    SandboxError,
    build_sandbox,
    find_pm2,
    free_port,
)

TABLES = ("projects", "phases", "step_progress", "governance_logs", "change_history", "user_permissions")
NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)


def bash(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a target command as the runbook does: a bash command line in the app's workdir."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=120)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live (non-zombie) processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if text in cmdline and stat[stat.rindex(")") + 2] != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def rows_by_id(db: Path, table: str) -> dict[int, tuple[Any, ...]]:
    """Every row of ``table`` keyed by id."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {int(r[0]): tuple(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY id')}
    finally:
        conn.close()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox under procman (the default-free, always-available manager)."""
    sb = build_sandbox(tmp_path / "target", process_manager="procman", now=NOW)
    try:
        yield sb
    finally:
        sb.stop()


def test_health_answers_ok_with_version_and_record_counts(sandbox: Sandbox) -> None:
    resp = httpx.get(sandbox.health_url, timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert body["db"] == "ok"
    assert body["version"] == DEPLOYMENT_VERSION
    assert body["maintenance"] is False
    assert set(body["records"]) == set(TABLES)
    assert body["records"] == sandbox.live_content_hash["counts"]


def test_layout_env_file_and_settings(sandbox: Sandbox) -> None:
    env = sandbox.env_path.read_text()
    assert f"APP_VERSION={DEPLOYMENT_VERSION}\n" in env
    assert "DATABASE_PATH=databases/production.db\n" in env
    assert "MAINTENANCE" not in env
    assert env.endswith("\n")  # the plan's `echo >>` must start a new line
    assert sandbox.db_path == sandbox.workdir / "databases" / "production.db"
    assert sandbox.backup_path.name.startswith("production_backup_")
    assert sandbox.previous_version == PREVIOUS_VERSION
    conn = sqlite3.connect(sandbox.db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    # While the app holds the database, the deployment's commit is still in the -wal file.
    assert Path(f"{sandbox.db_path}-wal").stat().st_size > 0

    settings = sandbox.settings()
    assert settings["db_path"] == "databases/production.db"
    assert settings["env_file"] == ".env.production"
    # the target's python3, named by the interpreter a version-manager shim would start
    assert settings["python"] == "python3" or os.access(settings["python"], os.X_OK)
    assert settings["app_name"] == APP_NAME
    for key in ("pm_start", "pm_stop", "pm_restart", "pm_status"):
        assert APP_NAME in settings[key]
    target = TargetSettings.model_validate({"name": "sandbox", "transport": "local", **settings})
    assert target.health_url == sandbox.health_url


def test_maintenance_mode_applies_on_restart(sandbox: Sandbox) -> None:
    with sandbox.env_path.open("a") as f:
        f.write(f"MAINTENANCE_MODE=true\nMAINTENANCE_MESSAGE={MAINTENANCE_MESSAGE}\n")
    # Like a real app, it read the env file at start: nothing changes until a restart.
    assert httpx.get(sandbox.health_url, timeout=10).status_code == 200
    old_pid = sandbox.app_pid()

    done = bash(sandbox.pm_restart, sandbox.workdir)
    assert done.returncode == 0, done.stderr
    assert sandbox.app_pid() not in (None, old_pid)
    resp = httpx.get(sandbox.health_url, timeout=10)
    assert resp.status_code == 503
    assert resp.json() == {"status": "maintenance", "message": MAINTENANCE_MESSAGE}
    # The people the plan keeps working (superusers, emergency admins) get through.
    admin = httpx.get(sandbox.health_url, headers={"X-User-ID": "emergency_admin"}, timeout=10)
    assert admin.status_code == 200 and admin.json()["maintenance"] is True
    viewer = httpx.get(sandbox.export_url, headers={"X-User-ID": "elena.novak"}, timeout=10)
    assert viewer.status_code == 503

    lines = [ln for ln in sandbox.env_path.read_text().splitlines() if not ln.startswith("MAINTENANCE_")]
    sandbox.env_path.write_text("\n".join(lines) + "\n")
    assert bash(sandbox.pm_restart, sandbox.workdir).returncode == 0
    assert httpx.get(sandbox.health_url, timeout=10).json()["status"] == "ok"


def test_process_manager_commands_are_idempotent(sandbox: Sandbox) -> None:
    assert bash(sandbox.pm_stop, sandbox.workdir).returncode == 0
    assert sandbox.app_pid() is None
    assert bash(sandbox.pm_stop, sandbox.workdir).returncode == 0  # stopping a stopped app
    status = bash(sandbox.pm_status, sandbox.workdir)
    assert status.returncode == 0
    [entry] = json.loads(status.stdout)
    assert entry["name"] == APP_NAME and entry["pm2_env"]["status"] == "stopped" and entry["pid"] == 0

    assert bash(sandbox.pm_start, sandbox.workdir).returncode == 0
    pid = sandbox.app_pid()
    assert pid is not None
    assert bash(sandbox.pm_start, sandbox.workdir).returncode == 0  # starting a running app
    assert sandbox.app_pid() == pid
    [entry] = json.loads(bash(sandbox.pm_status, sandbox.workdir).stdout)
    assert entry["pm2_env"]["status"] == "online" and entry["pid"] == pid
    assert httpx.get(sandbox.health_url, timeout=10).status_code == 200

    unknown = bash(sandbox.pm_restart.replace(APP_NAME, "no-such-app"), sandbox.workdir)
    assert unknown.returncode == 1
    assert "no-such-app not found" in unknown.stderr


def test_export_requires_user_and_carries_a_verifiable_hash(sandbox: Sandbox) -> None:
    assert httpx.get(sandbox.export_url, timeout=10).status_code == 401
    resp = httpx.get(sandbox.export_url, headers={"X-User-ID": "emergency_admin"}, timeout=30)
    assert resp.status_code == 200
    doc = resp.json()
    assert set(doc["tables"]) == set(TABLES)
    assert doc["counts"] == sandbox.live_content_hash["counts"]
    canonical = json.dumps(doc["tables"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert doc["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_json_import_restores_the_pre_deployment_export(sandbox: Sandbox) -> None:
    export = sandbox.pre_deployment_export_path.read_bytes()
    files = {"file": ("pre_deployment_export.json", export, "application/json")}
    form = {"skipHashCheck": "false"}
    assert httpx.post(sandbox.import_url, files=files, data=form, timeout=30).status_code == 401
    with sqlite3.connect(sandbox.db_path) as conn:
        (reader,) = conn.execute("SELECT user_id FROM user_permissions WHERE access_level = 'read_only' "
                                 "ORDER BY id").fetchone()
    viewer = httpx.post(sandbox.import_url, files=files, data=form, headers={"X-User-ID": reader}, timeout=30)
    assert viewer.status_code == 403

    tampered = json.loads(export)
    tampered["tables"]["projects"][0]["name"] = "tampered"
    bad = httpx.post(sandbox.import_url, json=tampered, headers={"X-User-ID": "emergency_admin"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] == "hash mismatch"
    assert content_hash(str(sandbox.db_path))["total"] == sandbox.live_content_hash["total"]

    ok = httpx.post(sandbox.import_url, files=files, data=form, headers={"X-User-ID": "emergency_admin"}, timeout=60)
    assert ok.status_code == 200, ok.text
    assert ok.json()["imported"] == sandbox.backup_content_hash["counts"]
    got = content_hash(str(sandbox.db_path))["tables"]
    want = sandbox.backup_content_hash["tables"]
    assert [t for t in want if got[t] != want[t]] == ["change_history"]
    # user_permissions' triggers logged the import's own writes: the backup's history plus those.
    backup, live = rows_by_id(sandbox.backup_path, "change_history"), rows_by_id(sandbox.db_path, "change_history")
    assert all(live[k] == row for k, row in backup.items())
    assert {r[1] for k, r in live.items() if k not in backup} == {"user_permissions"}


def test_live_differs_from_the_backup_by_the_deployment_and_peoples_writes(sandbox: Sandbox) -> None:
    story = sandbox.story
    legit = story.legit_keys()
    assert set(legit) == {"step_progress", "user_permissions"} and len(legit["step_progress"]) == 5
    assert set(story.touched) == {*DEPLOYMENT_TABLES, "user_permissions"}
    assert len(story.touched["user_permissions"]) == 2  # the deployment's escalation
    assert story.overlap[1] in story.touched["step_progress"] & legit["step_progress"]
    assert story.conflict[1] in story.touched["step_progress"] & legit["step_progress"]
    assert story.overlap != story.conflict

    assert sandbox.intended_path is not None and sandbox.incident_path is not None
    for table in ("projects", "phases", "step_progress", "user_permissions"):
        backup, live = rows_by_id(sandbox.backup_path, table), rows_by_id(sandbox.db_path, table)
        intended = rows_by_id(sandbox.intended_path, table)
        differing = {str(k) for k in backup.keys() | live.keys() if backup.get(k) != live.get(k)}
        assert differing == story.touched.get(table, set()) | legit.get(table, set()), table
        people = {str(k) for k in backup.keys() | intended.keys() if backup.get(k) != intended.get(k)}
        assert people == legit.get(table, set()), table
        assert rows_by_id(sandbox.incident_path, table) == live
    for table in ("governance_logs", "change_history"):
        before, after = rows_by_id(sandbox.backup_path, table), rows_by_id(sandbox.db_path, table)
        assert all(after[k] == row for k, row in before.items()), table  # only appended
    added = len(rows_by_id(sandbox.db_path, "change_history")) - len(rows_by_id(sandbox.backup_path, "change_history"))
    assert added == story.deployment_history + story.legit_history

    # user_permissions is logged by triggers: no marker, inside the deployment's span
    conn = sqlite3.connect(sandbox.db_path)
    try:
        marks = conn.execute("SELECT DISTINCT deployment FROM change_history WHERE table_name = 'user_permissions'"
                             ).fetchall()
    finally:
        conn.close()
    assert marks == [(None,)]
    # the configured boundary selects exactly the deployment's change rows
    support = sqlite_agent.run("strategy_support", {"db": str(sandbox.db_path),
                                                    "boundary": sandbox.settings()["boundary"]})
    assert all(s["ok"] for s in support["strategies"].values()), support["strategies"]
    assert support["boundary"]["changes"] == story.deployment_history
    assert support["boundary"]["counts"]["user_permissions"] == {"UPDATE": 2}
    # the marker alone would also take people's writes after it (logged under the running version)
    marker = sqlite_agent.run("strategy_support", {"db": str(sandbox.db_path),
                                                   "boundary": {"marker": DEPLOYMENT_VERSION}})
    assert marker["boundary"]["changes"] > story.deployment_history

    backup_hash = content_hash(str(sandbox.backup_path))
    assert backup_hash == sandbox.backup_content_hash
    assert sandbox.live_content_hash["total"] != backup_hash["total"]
    assert story.expected_loss("B") == {t: (len(k) - (t == "step_progress"), 0, int(t == "step_progress"))
                                         for t, k in story.touched.items()}


def test_undoing_the_deployment_leaves_peoples_writes(sandbox: Sandbox, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    src = sqlite3.connect(sandbox.db_path)
    dst = sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    undone = sqlite_agent.run("transaction_rollback", {"db": str(copy), "boundary": sandbox.settings()["boundary"]})
    # The conflicting row's two changes (reset, then reassigned) are kept; the escalation's undo
    # is logged by the triggers and marked as the rollback's own.
    assert undone["undone"] == sandbox.story.deployment_history - 2 and undone["recorded_by_triggers"] == 2
    assert {(c["table"], str(c["key"][0])) for c in undone["conflicts"]} == {sandbox.story.conflict}
    assert sandbox.intended_path is not None
    for table in ("projects", "phases", "step_progress", "user_permissions"):
        got, want = rows_by_id(copy, table), rows_by_id(sandbox.intended_path, table)
        wrong = {k for k in got.keys() | want.keys() if got.get(k) != want.get(k)}
        assert {str(k) for k in wrong} <= {sandbox.story.conflict[1]}, table


def test_access_levels_and_the_decoy_backup(sandbox: Sandbox) -> None:
    levels = sandbox.original_access_levels
    assert set(levels.values()) == {"admin", "read_write", "read_only"}
    roles = {r[0]: r[1] for r in sqlite3.connect(sandbox.db_path).execute("SELECT user_id, role FROM user_permissions")}
    assert set(roles) == set(levels)
    assert {"superuser", "emergency_admin"} <= set(roles.values())
    assert roles["emergency_admin"] == "emergency_admin"

    decoy, good = sandbox.decoy_backup_path, sandbox.backup_path
    assert decoy.parent == good.parent and decoy.name < good.name
    assert decoy.stat().st_mtime < good.stat().st_mtime <= NOW.timestamp()
    older = content_hash(str(decoy))
    assert older["total"] != sandbox.backup_content_hash["total"]
    assert older["counts"]["change_history"] < sandbox.backup_content_hash["counts"]["change_history"]
    for path in (decoy, good):
        assert sqlite_agent.run("verify", {"db": str(path)})["ok"] is True


def test_same_seed_and_time_build_the_same_data(sandbox: Sandbox, tmp_path: Path) -> None:
    again = build_sandbox(tmp_path / "again", process_manager="procman", now=NOW)
    try:
        assert again.backup_content_hash == sandbox.backup_content_hash
        assert again.live_content_hash == sandbox.live_content_hash
        assert again.deployment_keys == sandbox.deployment_keys
        assert again.port != sandbox.port
    finally:
        again.stop()


def test_smoke_test_and_app_rollback_commands(sandbox: Sandbox) -> None:
    smoke = bash(sandbox.smoke_test_command, sandbox.workdir)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "0 failed" in smoke.stdout
    rollback = bash(sandbox.app_rollback_command, sandbox.workdir)
    assert rollback.returncode == 0, rollback.stderr
    assert httpx.get(sandbox.health_url, timeout=10).json()["version"] == PREVIOUS_VERSION


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    sb = build_sandbox(tmp_path / "target", process_manager="procman", now=NOW)
    pid = sb.app_pid()
    assert pid is not None and processes_mentioning(str(sb.root))
    sb.stop()
    sb.stop()  # idempotent
    assert sb.app_pid() is None
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert processes_mentioning(str(sb.root)) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(sb.health_url, timeout=2)


def test_root_must_be_empty_and_manager_known(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(SandboxError, match="not empty"):
        build_sandbox(tmp_path / "busy", process_manager="procman")
    with pytest.raises(SandboxError, match="process_manager"):
        build_sandbox(tmp_path / "other", process_manager="systemd")  # type: ignore[arg-type]


def test_health_is_500_when_the_database_is_missing_or_corrupt(tmp_path: Path) -> None:
    app = Path(__file__).resolve().parents[1] / "bot" / "drill" / "target" / "app.py"
    workdir = tmp_path / "app"
    (workdir / "databases").mkdir(parents=True)
    (workdir / ".env.production").write_text("APP_VERSION=test-1\n")
    port = free_port()
    pid_file = tmp_path / "app.pid"
    proc = subprocess.Popen(
        [sys.executable, str(app), "--workdir", str(workdir), "--port", str(port), "--pid-file", str(pid_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/health"
        assert subprocess.run([sys.executable, str(app), "--wait-http", url], capture_output=True).returncode == 0
        missing = httpx.get(url, timeout=10)
        assert missing.status_code == 500 and missing.json()["status"] == "error"
        assert not (workdir / "databases" / "production.db").exists()  # never created empty

        db = workdir / "databases" / "production.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("CREATE INDEX t_v ON t (v)")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"value-{i:05d}" * 4,) for i in range(3000)])
        conn.commit()
        conn.close()
        assert httpx.get(url, timeout=10).json()["status"] == "ok"
        data = bytearray(db.read_bytes())
        page = 4096
        for offset in range(3 * page + 8, 3 * page + 400):  # scribble inside a b-tree page
            data[offset] = 0xFF
        db.write_bytes(bytes(data))
        corrupt = httpx.get(url, timeout=10)
        assert corrupt.status_code == 500 and corrupt.json()["status"] == "error"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not pid_file.exists()  # removed on a clean shutdown


@pytest.mark.skipif(find_pm2() is None, reason="pm2 is not installed (PATH or $ROLLBACK_BOT_PM2)")
def test_real_pm2_isolated_in_the_sandbox(tmp_path: Path) -> None:
    sb = build_sandbox(tmp_path / "target", process_manager="pm2", now=NOW)
    try:
        assert sb.process_manager == "pm2"
        assert "PM2_HOME=" in sb.pm_restart
        assert httpx.get(sb.health_url, timeout=10).status_code == 200
        with sb.env_path.open("a") as f:
            f.write("MAINTENANCE_MODE=true\n")
        done = bash(sb.pm_restart, sb.workdir)
        assert done.returncode == 0, done.stderr
        assert httpx.get(sb.health_url, timeout=10).status_code == 503
        [entry] = json.loads(bash(sb.pm_status, sb.workdir).stdout)
        assert entry["name"] == APP_NAME and entry["pm2_env"]["status"] == "online"
        assert "SLACK_BOT_TOKEN" not in entry["pm2_env"].get("env", {})
        assert bash(sb.pm_stop, sb.workdir).returncode == 0
        assert bash(sb.pm_stop, sb.workdir).returncode == 0
        assert bash(sb.pm_start, sb.workdir).returncode == 0
        assert bash(sb.pm_start, sb.workdir).returncode == 0
        assert httpx.get(sb.health_url, timeout=10).status_code == 503
        unknown = bash(sb.pm_stop.replace(APP_NAME, "no-such-app"), sb.workdir)
        assert unknown.returncode == 1
    finally:
        sb.stop()
    assert processes_mentioning(str(sb.pm_home)) == []
    assert processes_mentioning(str(sb.root)) == []
