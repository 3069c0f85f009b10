"""Preflight: every check passes on a ready target, every failure of an unready one is named,
and a failed preflight stops the incident before anything changes, with Retry / Abort only."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from actions.local import LocalTransport
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status, StepStatus
from bot.core.preflight import CHECKS, run_preflight
from bot.core.runbook import parse_runbook
from bot.core.targets import TargetSettings, open_transport
from bot.state.store import Store
from tests.health_server import HealthServer
from tests.sshd import SshdTarget


def make_ready(root: Path, health_url: str) -> dict[str, Any]:
    """A ready target's files under ``root`` and its settings (a local transport)."""
    app = root / "app"
    (app / "databases").mkdir(parents=True)
    (app / ".env.production").write_text("PORT=3000\n")
    db = sqlite3.connect(app / "databases" / "production.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT)")
    db.executemany("INSERT INTO projects (name) VALUES (?)", [(f"p{i}",) for i in range(20)])
    db.commit()
    backup = sqlite3.connect(app / "databases" / "production_backup_20261125_100000.db")
    db.backup(backup)
    backup.close()
    db.close()
    return {"name": "t1", "transport": "local", "workdir": str(app), "health_url": health_url,
            "pm_status": "printf '%s' '[{\"name\": \"orbis-forge-admin\", \"pm2_env\": {}}]'",
            "python": sys.executable}


def _by_check(findings: list[Any]) -> dict[str, Any]:
    return {f.check: f for f in findings}


async def test_a_ready_target_passes_every_check(tmp_path: Path) -> None:
    async with HealthServer() as hs:
        settings = TargetSettings.model_validate(make_ready(tmp_path, hs.url))
        transport = open_transport(settings)
        try:
            findings = await run_preflight(settings, transport)
        finally:
            await transport.close()
    assert [f.check for f in findings] == list(CHECKS)
    assert all(f.ok for f in findings), [f.line() for f in findings]
    by = _by_check(findings)
    assert "journal mode wal" in by["database"].detail
    assert "production_backup_20261125_100000.db" in by["backups"].detail and "verified" in by["backups"].detail


async def test_an_empty_workdir_is_refused_naming_every_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    settings = TargetSettings(name="t1", transport="local", workdir=str(empty), python=sys.executable,
                              health_url="http://127.0.0.1:9/health", pm_status="printf '[]'")
    transport = open_transport(settings)
    try:
        findings = await run_preflight(settings, transport)
    finally:
        await transport.close()
    failed = {f.check: f.detail for f in findings if f.ok is False}
    print("unready target:", *(f.line() for f in findings), sep="\n  ")
    assert set(failed) == {"env_file", "disk", "database", "backups", "app", "health"}
    assert failed["env_file"] == ".env.production does not exist"
    assert failed["database"].startswith("databases/production.db does not open")
    assert failed["app"] == "orbis-forge-admin is not listed by `printf '[]'`"
    assert "no such directory" in failed["backups"]


async def test_a_missing_workdir_and_a_small_disk(tmp_path: Path) -> None:
    settings = TargetSettings(name="t1", transport="local", workdir=str(tmp_path / "nope"),
                              health_url="http://127.0.0.1:9/health")
    transport = open_transport(settings)
    try:
        by = _by_check(await run_preflight(settings, transport))
    finally:
        await transport.close()
    assert by["workdir"].ok is False and by["workdir"].detail.endswith("nope is not a folder on the target")
    assert by["database"].ok is None and by["app"].ok is None  # not checked, not failed


@pytest.mark.sshd
async def test_preflight_through_sshd_and_a_changed_host_key(tmp_path: Path, sshd_target: SshdTarget) -> None:
    async with HealthServer() as hs:
        values = make_ready(tmp_path, hs.url)
        ssh = {"transport": "ssh", "host": sshd_target.host, "port": sshd_target.port,
               "user": sshd_target.username, "key_file": str(sshd_target.client_key_path),
               "known_hosts": str(sshd_target.known_hosts_path)}
        settings = TargetSettings.model_validate({**values, **ssh})
        transport = open_transport(settings)
        try:
            findings = await run_preflight(settings, transport)
        finally:
            await transport.close()
        assert all(f.ok for f in findings), [f.line() for f in findings]
        assert _by_check(findings)["ssh"].detail == "connected, host key pinned"

        other = tmp_path / "known_hosts"
        other.write_text(f"[{sshd_target.host}]:{sshd_target.port} ssh-ed25519 "
                         "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
        settings = TargetSettings.model_validate({**values, **ssh, "known_hosts": str(other)})
        transport = open_transport(settings)
        try:
            by = _by_check(await run_preflight(settings, transport))
        finally:
            await transport.close()
    assert by["ssh"].ok is False and "differs from the one pinned" in by["ssh"].detail
    assert [c for c, f in by.items() if f.ok is None] == ["workdir", "env_file", "python", "disk", "database",
                                                          "backups", "app"]


RUNBOOK = textwrap.dedent("""\
    name: pf
    phases:
      - id: preflight
        title: Preflight
        steps:
          - {id: preflight, title: "Is the target ready?", kind: preflight}
      - id: work
        title: Work
        steps:
          - {id: change, title: "Change something", kind: command, idempotent: true, run: "touch changed"}
    """)


async def test_a_failed_preflight_stops_before_anything_changes(tmp_path: Path) -> None:
    async with HealthServer() as hs:
        values = make_ready(tmp_path, hs.url)
        (Path(values["workdir"]) / ".env.production").unlink()
        hs.mode = "failing"  # a 503 is an answer: the health URL answers
        settings = TargetSettings.model_validate(values)
        store = await Store.open(str(tmp_path / "state.db"))
        transport = LocalTransport(name="t1")
        engine = Engine(store, parse_runbook(RUNBOOK), {"t1": Target(settings, transport)},
                        artifacts_dir=tmp_path / "art")
        try:
            inc = await store.create_incident(target="t1", runbook="pf", reason="test")
            inc = await engine.run(inc.id)
            assert inc.status is Status.WAITING
            waiting = await engine.waiting_for(inc.id)
            assert waiting is not None and waiting.kind == "failure"
            assert [o["value"] for o in waiting.options] == ["retry", "abort"]
            assert waiting.error is not None and "1 of 9 preflight checks failed: env_file: " in waiting.error
            run = (await store.latest_runs(inc.id))["preflight"]
            assert run.status is StepStatus.FAILED and "✗ env_file" in run.output_tail
            assert not (Path(values["workdir"]) / "changed").exists()

            (Path(values["workdir"]) / ".env.production").write_text("")
            await engine.answer(inc.id, "preflight", "retry", user="U0LEAD")
            inc = await engine.run(inc.id)
            assert inc.status is Status.COMPLETED
            assert (Path(values["workdir"]) / "changed").exists()
        finally:
            await engine.aclose()
            await transport.close()
            await store.close()
