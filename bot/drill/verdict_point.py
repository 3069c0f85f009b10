"""The verdict of a rehearsal: a staging target checked against the point the person chose
(content hash, access levels, maintenance, health, emergency backup, measured data loss)."""

from __future__ import annotations

from actions.errors import ActionError
from actions.sqlite_agent import LEDGER
from actions.transport import Transport
from bot.core.runbook import default_runbook
from bot.core.targets import TargetSettings
from bot.drill.verdict import (
    RESTORED_TABLES,
    Check,
    ChosenPoint,
    Op,
    Verdict,
    access_levels,
    app_checks,
    begin_verdict,
    emergency_backup_check,
    governance_equal_but_ours,
    target_op,
)
from bot.record.metrics import data_loss_detail, gather
from bot.state.store import Incident, Store


async def check_point_verdict(
    *, store: Store, incident: Incident, transport: Transport, settings: TargetSettings,
    sandbox: ChosenPoint, strategy: str,
) -> Verdict:
    """Check a rehearsal on a staging target against the chosen point (content hash, access levels, health)."""
    v, runs = await begin_verdict(store, incident)
    op = target_op(transport, settings)

    tables = RESTORED_TABLES[strategy]
    live = await op("content_hash", db=settings.db_path, tables=tables)
    want = sandbox.backup_content_hash["tables"]
    names = tables or sorted(want)
    differing = [t for t in names if live["tables"].get(t) != want.get(t)]
    if "governance_logs" in differing:
        # The rollback's own governance entry (Phase 5) is the one row the backup cannot have.
        if await governance_equal_but_ours(op, settings, sandbox, incident):
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

    v.checks.append(await emergency_backup_check(op, runs))
    levels = await access_levels(op, settings)
    wrong = {k: (levels.get(k), lvl) for k, lvl in sandbox.original_access_levels.items() if levels.get(k) != lvl}
    v.checks.append(Check("access levels equal the originals", not wrong,
                          f"{len(sandbox.original_access_levels)} users" + (f"; wrong: {wrong}" if wrong else "")))

    v.checks += await app_checks(transport, settings)

    measured = data_loss_detail(await gather(store, default_runbook(), incident.id))
    if measured is not None and measured.known:
        v.data_loss_records = measured.total("lost") or 0
        v.data_loss_detail = ", ".join(f"{t} {d.undone}/{d.lost}/{d.kept}" for t, d in measured.tables.items()
                                       if d.undone or d.lost or d.kept) or "none"
    else:
        v.data_loss_detail = "not assessed" if measured is None else "unknown (no boundary)"
    return v


async def _history_equal_but_ours(op: Op, settings: TargetSettings, sandbox: ChosenPoint) -> bool:
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
