"""The verdict of a rehearsal: a staging target checked against the point the person chose
(content hash, access levels, maintenance, health, emergency backup, measured data loss)."""

from __future__ import annotations

import shlex
from typing import Any

import httpx

from actions.errors import ActionError
from actions.sqlite import sqlite_op
from actions.sqlite_agent import LEDGER
from actions.transport import Transport
from bot.core.lifecycle import Status
from bot.core.runbook import default_runbook
from bot.core.targets import TargetSettings
from bot.drill.verdict import RESTORED_TABLES, Check, ChosenPoint, Verdict, _governance_equal_but_ours
from bot.record.metrics import data_loss_detail, gather
from bot.state.store import Incident, Store


async def check_point_verdict(
    *, store: Store, incident: Incident, transport: Transport, settings: TargetSettings,
    sandbox: ChosenPoint, strategy: str,
) -> Verdict:
    """Check a rehearsal on a staging target against the chosen point (content hash, access levels, health)."""
    v = Verdict()
    runs = await store.latest_runs(incident.id)
    v.checks.append(Check("incident completed", incident.status is Status.COMPLETED,
                          incident.status.value))

    async def op(name: str, **params: Any) -> dict[str, Any]:
        return await sqlite_op(transport, name, params, timeout=600, cwd=settings.workdir,
                               python=settings.python)

    tables = RESTORED_TABLES[strategy]
    live = await op("content_hash", db=settings.db_path, tables=tables)
    want = sandbox.backup_content_hash["tables"]
    names = tables or sorted(want)
    differing = [t for t in names if live["tables"].get(t) != want.get(t)]
    if "governance_logs" in differing:
        # The rollback's own governance entry (Phase 5) is the one row the backup cannot have.
        if await _governance_equal_but_ours(op, settings, sandbox, incident):
            differing.remove("governance_logs")
    if "change_history" in differing and await _history_equal_but_ours(op, settings, sandbox):
        differing.remove("change_history")  # rows triggers logged for the rollback's own writes
    if LEDGER in differing:
        differing.remove(LEDGER)
    v.checks.append(Check(
        "database content equals the chosen backup's",
        not differing,
        f"{len(names)} tables compared by content hash" + (f"; differ: {differing}" if differing else ""),
    ))

    vb = runs.get("verify_backup")
    eb = runs.get("emergency_backup")
    ok = bool(vb and vb.captures.get("ok") and eb)
    detail = "not taken"
    if ok and eb is not None and vb is not None:
        again = await op("content_hash", db=eb.captures["path"], tables=None)
        ok = again["total"] == vb.captures["content_hash"]
        detail = f"{eb.captures['path']} sha256 {str(vb.captures.get('file_sha256'))[:12]}…, content hash re-checked"
    v.checks.append(Check("emergency backup verified", ok, detail))

    rows = await op("query", db=settings.db_path,
                    sql="SELECT user_id, access_level FROM user_permissions ORDER BY user_id", params=[],
                    max_rows=100000)
    levels = {str(r[0]): r[1] for r in rows["rows"]}
    wrong = {k: (levels.get(k), lvl) for k, lvl in sandbox.original_access_levels.items() if levels.get(k) != lvl}
    v.checks.append(Check("access levels equal the originals", not wrong,
                          f"{len(sandbox.original_access_levels)} users" + (f"; wrong: {wrong}" if wrong else "")))

    env = await transport.run(f"cat -- {shlex.quote(settings.env_file)}", timeout=10, cwd=settings.workdir)
    maint_lines = [ln for ln in env.stdout.splitlines() if ln.startswith("MAINTENANCE_")]
    health: dict[str, Any] = {}
    status = 0
    try:
        async with httpx.AsyncClient() as client:
            resp = await client.get(settings.health_url, timeout=10)
        status = resp.status_code
        health = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        health = {"error": str(exc)}
    v.checks.append(Check("maintenance mode off", not maint_lines and not health.get("maintenance"),
                          f"{settings.env_file}: {len(maint_lines)} maintenance lines"))
    v.checks.append(Check("app healthy", status == 200 and health.get("status") == "ok",
                          f"GET {settings.health_url} -> {status} {health.get('status')}"))

    measured = data_loss_detail(await gather(store, default_runbook(), incident.id))
    if measured is not None and measured.known:
        v.data_loss_records = measured.total("lost") or 0
        v.data_loss_detail = ", ".join(f"{t} {d.undone}/{d.lost}/{d.kept}" for t, d in measured.tables.items()
                                       if d.undone or d.lost or d.kept) or "none"
    else:
        v.data_loss_detail = "not assessed" if measured is None else "unknown (no boundary)"
    return v


async def _history_equal_but_ours(op: Any, settings: TargetSettings, sandbox: ChosenPoint) -> bool:
    """change_history equals the backup's once the rows that triggers logged for the rollback's
    own writes (the ledger's "own") are left out."""
    sql = "SELECT * FROM change_history ORDER BY id"
    try:
        ours = await op("query", db=settings.db_path, sql="SELECT * FROM change_history WHERE ('change_history:' "
                        f"|| id) NOT IN (SELECT item FROM {LEDGER} WHERE kind = 'own') ORDER BY id",
                        params=[], max_rows=1_000_000)
    except ActionError:
        return False
    backup = await op("query", db=str(sandbox.backup_path), sql=sql, params=[], max_rows=1_000_000)
    return bool(ours["rows"] == backup["rows"] and len(ours["rows"]) < 1_000_000)
